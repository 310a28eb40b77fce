#!/usr/bin/env bash
# Step 1 of an install, on a host WITH network: collect everything a node needs into one folder.
#   deploy/wheelhouse.sh LOCK OUT        e.g. deploy/wheelhouse.sh deploy/requirements-gpu.lock wheelhouse/
# OUT then holds: every wheel LOCK names (pip checks each against the lock's sha256 hashes while
# downloading), the bastion wheel built from this checkout, the lock as requirements.lock, and
# SHA256SUMS over all of it. Copy OUT to the target host and run deploy/install.sh there.
set -euo pipefail
[[ $# -eq 2 ]] || { echo "usage: $0 LOCK OUT" >&2; exit 2; }
lock=$1 out=$2
src="$(cd "$(dirname "$0")/.." && pwd)"
py=${PYTHON:-python3.11}
mkdir -p "$out"
# wheels only: an sdist would have to be built on the target, and a built wheel's hash is not the lock's
"$py" -m pip download --quiet --require-hashes --no-deps --only-binary=:all: -r "$lock" -d "$out"
"$py" -m pip wheel --quiet --no-deps -w "$out" "$src"
cp "$lock" "$out/requirements.lock"
(cd "$out" && rm -f SHA256SUMS && sha256sum -- * > SHA256SUMS.tmp && mv SHA256SUMS.tmp SHA256SUMS)
echo "wheelhouse: $(find "$out" -maxdepth 1 -name "*.whl" | wc -l) wheels in $out"
