#!/bin/sh
# Entrypoint of Dockerfile.gpu. `serve` (the default command) must have a config: --config PATH, or
# $BASTION_CONFIG (the image sets /etc/bastion/node.toml). Without a readable one it exits 2 and says
# so, instead of falling back to dev mode. Every other command (keys, audit, models, ...) is passed
# to `bastion` unchanged.
set -eu
if [ "${1:-serve}" = serve ]; then
  config=${BASTION_CONFIG:-}
  prev=
  for arg in "$@"; do
    case $arg in
      -h | --help) exec bastion "$@" ;;
      --config=*) config=${arg#--config=} ;;
    esac
    [ "$prev" = --config ] && config=$arg
    prev=$arg
  done
  if [ -z "$config" ]; then
    echo "bastion: no config: set BASTION_CONFIG or pass --config PATH (this image never starts dev mode)" >&2
    exit 2
  fi
  if [ ! -f "$config" ] || [ ! -r "$config" ]; then
    echo "bastion: config $config is missing or unreadable: mount node.toml read-only at /etc/bastion" \
      "(or set BASTION_CONFIG); this image never starts dev mode" >&2
    exit 2
  fi
  if [ $# -eq 0 ]; then set -- serve; fi
  export BASTION_CONFIG="$config"
fi
exec bastion "$@"
