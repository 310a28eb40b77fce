"""``bastion config check``: every problem ``serve`` would refuse to start for, one line each,
in seconds; relative paths in ``node.toml`` resolve against the file's folder."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from audit import generate_kek_file, generate_signing_key
from node.config import load_config
from node.startup import ExitCode
from serving.models import ModelSpec
from tests.node.test_serve_cli import BASTION, _env, _path_model

NO_ENGINE_S = 10.0


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def _write_node(
    folder: Path, models: Path, *, port: int, tenant_model: str = "bastion-tiny", extra: str = ""
) -> Path:
    """A node.toml whose audit paths are relative to its own folder (keys made beside it)."""
    generate_kek_file(folder / "kek.key")
    generate_signing_key(folder / "signing.key")
    config = folder / "node.toml"
    config.write_text(
        f"""
models_file = "{models}"
data_dir = "data"
[server]
host = "127.0.0.1"
port = {port}
[[tenants]]
name = "acme"
models = ["{tenant_model}"]
residency = "local-only"
[audit]
path = "audit/audit.db"
kek_file = "kek.key"
signing_key_file = "signing.key"
checkpoint_path = "checkpoints"
{extra}
"""
    )
    return config


def _check(tmp_path: Path, config: Path, cwd: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    run = subprocess.run(
        [*BASTION, "config", "check", "--config", str(config)],
        env=_env(tmp_path),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return run, time.monotonic() - t0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_relative_paths_resolve_against_the_config_files_folder(tmp_path: Path) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    config = _write_node(folder, tmp_path / "models.toml", port=8000)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cwd = os.getcwd()
    os.chdir(elsewhere)
    try:
        audit = load_config(Path("../etc/node.toml")).audit
    finally:
        os.chdir(cwd)
    assert audit is not None
    assert audit.kek_file == str(folder / "kek.key")
    assert audit.signing_key_file == str(folder / "signing.key")
    assert audit.path == str(folder / "audit" / "audit.db")
    assert audit.checkpoint_path == str(folder / "checkpoints")
    assert load_config(config).data_dir == str(folder / "data")


def test_a_good_config_checks_ok_from_another_folder(
    tmp_path: Path, tiny_spec: ModelSpec, tiny_model_dir: Path
) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    config = _write_node(folder, _path_model(tmp_path, tiny_spec, tiny_model_dir), port=_free_port())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run, took = _check(tmp_path, config, elsewhere)  # kek.key is not in this folder: found beside node.toml
    assert run.returncode == 0, run.stdout + run.stderr
    assert "ok" in run.stdout
    assert took < NO_ENGINE_S
    assert not (folder / "data").exists()  # a check creates nothing


def test_every_problem_is_reported_one_line_each(
    tmp_path: Path, tiny_spec: ModelSpec, tiny_model_dir: Path, busy_port: int
) -> None:
    models = _path_model(tmp_path, tiny_spec, tiny_model_dir)
    provider = """
[[providers]]
name = "openai-eu"
kind = "openai"
base_url = "https://eu.api.openai.com/v1"
region = "eu-west"
api_key_env = "BASTION_TEST_UNSET_KEY"
[providers.models."gpt-4o-2024-08-06"]
input_per_mtok = 2.5
output_per_mtok = 10.0
"""
    config = _write_node(tmp_path, models, port=busy_port, tenant_model="bastion-tiyn", extra=provider)
    os.chmod(tmp_path / "kek.key", 0o644)
    (tmp_path / "data").mkdir(mode=0o755)
    os.chmod(tmp_path / "data", 0o755)
    run, took = _check(tmp_path, config, tmp_path)
    lines = run.stdout.splitlines()
    assert run.returncode == ExitCode.CONFIG, run.stdout + run.stderr
    assert took < NO_ENGINE_S
    problems = lines[:-1]
    assert any(
        line.startswith("config: tenant 'acme' names model 'bastion-tiyn'") and "bastion-tiny" in line
        for line in problems
    ), lines
    assert any(line.startswith("config: ") and "BASTION_TEST_UNSET_KEY" in line for line in problems), lines
    assert any(line.startswith("keys: ") and "kek.key" in line and "644" in line for line in problems), lines
    assert any(line.startswith("file-mode: ") and str(tmp_path / "data") in line for line in problems), lines
    assert any(line.startswith("port: ") and str(busy_port) in line for line in problems), lines
    assert lines[-1].endswith(f"{len(problems)} problems; `bastion serve` would refuse to start")


def test_a_schema_error_is_one_line_with_its_location(tmp_path: Path) -> None:
    config = _write_node(tmp_path, tmp_path / "models.toml", port=8000)
    config.write_text(config.read_text().replace("residency =", "residncy ="))
    run, _ = _check(tmp_path, config, tmp_path)
    assert run.returncode == ExitCode.CONFIG
    assert run.stdout.splitlines()[0].startswith("config: ")
    assert "residncy" in run.stdout and "$.tenants[0]" in run.stdout


def test_otlp_endpoint_fails_the_check_with_the_config_exit_code(tmp_path: Path) -> None:
    config = _write_node(
        tmp_path,
        tmp_path / "models.toml",
        port=8000,
        extra='[metrics]\notlp_endpoint = "http://127.0.0.1:4318"',
    )
    run, _ = _check(tmp_path, config, tmp_path)
    assert run.returncode == ExitCode.CONFIG, run.stdout + run.stderr
    assert "tracing (OpenTelemetry) is not supported" in run.stdout + run.stderr
