"""Dockerfile.gpu and its entrypoint. No Docker engine here: the file is parsed and linted, the
entrypoint runs for real against the installed ``bastion``, and its install steps are the scripts
that deploy/airgap-check.sh runs in CI."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import DEPLOY, ROOT, require_tool

DOCKERFILE = ROOT / "Dockerfile.gpu"
ENTRYPOINT = DEPLOY / "docker-entrypoint.sh"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            word, _, rest = pending.partition(" ")
            out.append((word.upper(), rest.strip()))
            pending = ""
    return out


def _all(kind: str) -> list[str]:
    return [args for word, args in _instructions() if word == kind]


def test_the_base_is_pinned_by_digest_and_the_image_runs_as_a_user() -> None:
    (base,) = _all("FROM")
    assert re.fullmatch(r"\S+@sha256:[0-9a-f]{64}", base), base
    (user,) = _all("USER")
    assert user.split(":")[0] not in {"root", "0"}
    assert re.search(r"useradd .*--uid 10001", " ".join(_all("RUN")))


def test_config_and_data_are_volumes_and_readyz_is_the_health_check() -> None:
    (volumes,) = _all("VOLUME")
    assert set(json.loads(volumes)) == {"/etc/bastion", "/var/lib/bastion", "/var/lib/bastion-checkpoints"}
    # a named volume starts as a copy of the image's folder: these must be the node user's, 0700
    private = "install -d -o bastion -g bastion -m 0700 /var/lib/bastion /var/lib/bastion-checkpoints"
    assert private in " ".join(_all("RUN"))
    (health,) = _all("HEALTHCHECK")
    assert "--start-period=" in health
    env = " ".join(_all("ENV"))
    assert "BASTION_HEALTH_URL=http://127.0.0.1:8000/readyz" in env
    assert "BASTION_CONFIG=/etc/bastion/node.toml" in env
    assert _all("STOPSIGNAL") == ["SIGTERM"]


def test_the_image_sets_the_no_egress_environment_of_serving_egress() -> None:
    from serving.egress import NO_EGRESS_ENV

    env = " ".join(_all("ENV")).split()
    for name, value in NO_EGRESS_ENV.items():
        assert f"{name}={value}" in env, name


def test_the_default_command_is_serve_behind_the_config_check() -> None:
    (entrypoint,) = _all("ENTRYPOINT")
    assert json.loads(entrypoint) == ["/usr/bin/tini", "--", "/usr/local/bin/bastion-entrypoint"]
    assert json.loads(_all("CMD")[0]) == ["serve"]
    assert "COPY deploy/docker-entrypoint.sh /usr/local/bin/bastion-entrypoint" in [
        f"COPY {a}" for a in _all("COPY")
    ]


def test_it_installs_the_gpu_lock_with_the_air_gapped_install_scripts() -> None:
    runs = " ".join(_all("RUN"))
    assert "deploy/wheelhouse.sh deploy/requirements-gpu.lock /tmp/wheelhouse" in runs
    assert "deploy/install.sh /tmp/wheelhouse /opt/venv" in runs
    assert re.search(r"apt-get install .*\bgcc\b.*\blibc6-dev\b", runs)  # Triton's C compiler
    assert "pip install" not in runs  # every package comes through the hash-checked lock


def test_every_copied_path_exists() -> None:
    for args in _all("COPY"):
        *sources, _dest = shlex.split(args)
        for source in sources:
            assert (ROOT / source).exists(), source


def test_hadolint_finds_nothing() -> None:
    hadolint = require_tool("hadolint")
    run = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def _entrypoint(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The entrypoint as the image runs it, with the ``bastion`` of this test's interpreter on PATH."""
    base = {k: v for k, v in os.environ.items() if k != "BASTION_CONFIG"}
    base["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{base['PATH']}"
    base["PYTHONPATH"] = str(ROOT)
    base["BASTION_DATA_DIR"] = str(tmp_path / "data")
    return subprocess.run(
        ["sh", str(ENTRYPOINT), *args],
        env={**base, **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("args", [[], ["serve"], ["serve", "--port", "9000"]])
def test_serve_without_a_config_exits_2_instead_of_dev_mode(tmp_path: Path, args: list[str]) -> None:
    run = _entrypoint(args, tmp_path)
    assert run.returncode == 2
    assert "no config" in run.stderr and "never starts dev mode" in run.stderr
    assert not (tmp_path / "data").exists()  # nothing was built


def test_a_missing_config_file_exits_2(tmp_path: Path) -> None:
    run = _entrypoint([], tmp_path, BASTION_CONFIG=str(tmp_path / "node.toml"))
    assert run.returncode == 2
    assert f"config {tmp_path / 'node.toml'} is missing" in run.stderr


@pytest.mark.parametrize("form", ["env", "flag", "flag="])
def test_a_config_reaches_bastion_serve(tmp_path: Path, form: str) -> None:
    config = tmp_path / "node.toml"
    config.write_text('[server]\nhots = "0.0.0.0"\n')  # bastion itself must read it and reject the typo
    args, env = {
        "env": ([], {"BASTION_CONFIG": str(config)}),
        "flag": (["serve", "--config", str(config)], {}),
        "flag=": (["serve", f"--config={config}"], {}),
    }[form]
    run = _entrypoint(args, tmp_path, **env)
    assert run.returncode == 2
    assert "hots" in run.stderr and "$.server" in run.stderr


def test_other_commands_pass_through_unchanged(tmp_path: Path) -> None:
    run = _entrypoint(["keys", "create", "--tenant", "cardiology"], tmp_path)
    assert run.returncode == 0, run.stderr
    assert "bst_" in run.stdout and 'keys = [{ id = "k_' in run.stdout
