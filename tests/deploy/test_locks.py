"""deploy/requirements-{cpu,gpu}.lock: every distribution pinned with sha256 hashes, in step with
pyproject.toml. deploy/airgap-check.sh (run by .ci/run) installs the CPU lock offline and starts a node."""

from __future__ import annotations

import re
import subprocess
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .conftest import DEPLOY, ROOT, require_tool

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)((?:\s+--hash=sha256:[0-9a-f]{64})+)$")


def _lock(name: str) -> dict[str, str]:
    """{canonical name: version}; fails on any line that is not ``name==version --hash=sha256:...``."""
    text = (DEPLOY / f"requirements-{name}.lock").read_text()
    pins: dict[str, str] = {}
    for entry in re.sub(r"\\\n", " ", text).splitlines():
        entry = entry.strip()
        if not entry or entry.startswith("#"):
            continue
        match = _PIN.match(entry)
        assert match, f"not pinned with hashes: {entry[:120]}"
        pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def _project() -> dict[str, list[Requirement]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    base = [Requirement(r) for r in project["dependencies"]]
    return {name: base + [Requirement(r) for r in extras[name]] for name in ("cpu", "gpu")}


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_the_lock_satisfies_pyproject(name: str) -> None:
    pins = _lock(name)
    for req in _project()[name]:
        if req.marker is not None and not req.marker.evaluate():
            continue
        version = pins.get(canonicalize_name(req.name))
        assert version is not None, f"{req.name} is missing from requirements-{name}.lock"
        assert req.specifier.contains(version, prereleases=True), f"{req.name}=={version} vs {req}"


def test_the_cpu_lock_holds_cpu_torch_and_none_of_the_cuda_extras() -> None:
    pins = _lock("cpu")
    assert pins["torch"] == "2.13.0+cpu"
    assert not {"torchvision", "torchaudio", "torchcodec", "triton"} & set(pins)
    assert not any(name.startswith("nvidia-cu") for name in pins)  # CUDA libraries (nvidia-ml-py is NVML)


def test_the_gpu_lock_holds_cuda_torch_and_vllm() -> None:
    pins = _lock("gpu")
    assert pins["torch"] == "2.13.0" and "vllm" in pins and "triton" in pins
    assert any(name.startswith("nvidia-cu") for name in pins)


def test_the_deploy_scripts_pass_shellcheck() -> None:
    shellcheck = require_tool("shellcheck")
    scripts = [*sorted(DEPLOY.glob("*.sh")), ROOT / ".ci" / "run"]
    run = subprocess.run([shellcheck, *map(str, scripts)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout
