#!/usr/bin/env bash
# CI's test of the air-gapped install, for the CPU lock: build a wheelhouse (network), then in a
# network namespace with nothing but loopback (`unshare -n`, as root) install it with
# deploy/install.sh and start the installed node in dev mode until GET /readyz answers 200 (the
# tiny model passed a real forward pass), then stop it with SIGTERM and expect exit 0.
# Without unshare (not root) the install still runs with --no-index, and says so.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work=$(mktemp -d "${TMPDIR:-/tmp}/bastion-airgap.XXXXXX")
trap 'rm -rf "$work"' EXIT
start=$SECONDS
bash "$repo/deploy/wheelhouse.sh" "$repo/deploy/requirements-cpu.lock" "$work/wheelhouse" \
  2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
echo "airgap-check: wheelhouse in $((SECONDS - start)) s"

offline() {
  set -euo pipefail
  ip link set lo up 2>/dev/null || true
  bash "$repo/deploy/install.sh" "$work/wheelhouse" "$work/venv"
  mkdir -p "$work/run" && cd "$work/run"
  # the tiny model with the same pins, started eagerly: torch.compile would add minutes here
  sed 's/^enforce_eager = false$/enforce_eager = true/' "$repo/models.toml" > "$work/models.toml"
  port=18731 log="$work/run/node.log" t0=$SECONDS
  BASTION_MODELS_FILE="$work/models.toml" "$work/venv/bin/bastion" serve --port "$port" > "$log" 2>&1 &
  pid=$!
  deadline=$((SECONDS + 600))
  until "$work/venv/bin/python" -c "import sys, urllib.request as u; u.urlopen(sys.argv[1], timeout=2)" \
      "http://127.0.0.1:$port/readyz" 2>/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null; then echo "airgap-check: node exited before ready" >&2; tail -n 40 "$log" >&2; return 1; fi
    if (( SECONDS > deadline )); then echo "airgap-check: not ready in 600 s" >&2; kill -KILL "$pid"; tail -n 40 "$log" >&2; return 1; fi
    sleep 1  # poll interval; the condition is /readyz answering 200
  done
  t1=$SECONDS
  kill -TERM "$pid"
  rc=0; wait "$pid" || rc=$?
  if (( rc != 0 )); then echo "airgap-check: node exited $rc on SIGTERM" >&2; tail -n 40 "$log" >&2; return 1; fi
  echo "airgap-check: node ready in $((t1 - t0)) s, stopped $((SECONDS - t1)) s after SIGTERM"
}
export -f offline
export repo work
if [[ $EUID -eq 0 ]] && unshare -n true 2>/dev/null; then
  unshare -n bash -c offline
  mode="in a network namespace without network"
else
  bash -c offline
  mode="with --no-index only (no network namespace: not root or no unshare)"
fi
echo "airgap-check: ok: installed $mode, node ready and stopped cleanly; $((SECONDS - start)) s in all"
