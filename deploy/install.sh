#!/usr/bin/env bash
# Step 2 of an install, on the target host, which needs no network: install a wheelhouse made by
# deploy/wheelhouse.sh into a new virtual environment.
#   deploy/install.sh WHEELHOUSE VENV        e.g. deploy/install.sh /media/wheelhouse /opt/bastion/venv
# Checks SHA256SUMS (the copy is what was built), installs every locked wheel with
# --require-hashes (each must match the lock's hash), then the bastion wheel, all with --no-index:
# pip reads nothing but WHEELHOUSE, whatever pip.conf or PIP_* variables the host has.
# Ends with `bastion --help` from the new environment. The Dockerfile and CI run this script.
set -euo pipefail
[[ $# -eq 2 ]] || { echo "usage: $0 WHEELHOUSE VENV" >&2; exit 2; }
wh="$(cd "$1" && pwd)" venv=$2
py=${PYTHON:-python3.11}
(cd "$wh" && sha256sum --check --quiet --strict SHA256SUMS)
# this host's pip settings (index URLs, find-links, constraints) must not reach the install
unset PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS PIP_CONSTRAINT PIP_REQUIRE_VIRTUALENV
export PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
"$py" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --no-index --find-links "$wh" --only-binary=:all: --no-deps)
"${pip[@]}" --require-hashes -r "$wh/requirements.lock"
shopt -s nullglob
wheels=("$wh"/bastion-*.whl)
[[ ${#wheels[@]} -eq 1 ]] || { echo "install: expected one bastion wheel in $wh, found ${#wheels[@]}" >&2; exit 1; }
"${pip[@]}" "${wheels[0]}"
"$venv/bin/bastion" --help > /dev/null
echo "install: $("$venv/bin/python" -m pip list --format=freeze 2>/dev/null | wc -l) packages in $venv"
