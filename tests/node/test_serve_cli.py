"""``bastion serve`` as a process: pins, floating references, dev mode, clean shutdown."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from serving.models import ModelSpec

ROOT = Path(__file__).resolve().parents[2]
BASTION = [sys.executable, "-m", "node.cli"]


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("BASTION_CONFIG", None)
    env["PYTHONPATH"] = str(ROOT)
    env["BASTION_DATA_DIR"] = str(tmp_path / "data")
    return env


def _path_model(tmp_path: Path, spec: ModelSpec, model_dir: Path, *, eager: bool = True) -> Path:
    """A models.toml serving a copy of the tiny model from a ``path``, with the same pins."""
    copy = tmp_path / "tiny"
    shutil.copytree(model_dir, copy)
    files = "\n".join(f'"{name}" = "{digest}"' for name, digest in spec.files.items())
    models = tmp_path / "models.toml"
    models.write_text(
        f"""
[[models]]
name = "bastion-tiny"
path = "{copy}"
dtype = "float32"
max_model_len = 2048
gpu_memory_utilization = 0.5
max_num_seqs = 8
enforce_eager = {"true" if eager else "false"}
kv_cache_memory_bytes = 33554432
[models.files]
{files}
"""
    )
    return models


def _node_toml(tmp_path: Path, models: Path, port: int = 0) -> Path:
    config = tmp_path / "node.toml"
    config.write_text(
        f"""
models_file = "{models}"
data_dir = "{tmp_path / "data"}"
serve = ["bastion-tiny"]
[server]
host = "127.0.0.1"
port = {port}
[audit]
enabled = false
"""
    )
    return config


def test_a_flipped_byte_makes_serve_refuse(
    tmp_path: Path, tiny_spec: ModelSpec, tiny_model_dir: Path
) -> None:
    models = _path_model(tmp_path, tiny_spec, tiny_model_dir)
    weights = tmp_path / "tiny" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    run = subprocess.run(
        [*BASTION, "serve", "--config", str(_node_toml(tmp_path, models))],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 3, run.stderr
    assert "model.safetensors" in run.stderr
    assert tiny_spec.files["model.safetensors"] in run.stderr  # the pinned hash...
    import hashlib

    assert hashlib.sha256(bytes(data)).hexdigest() in run.stderr  # ...and the one on disk


def test_an_unpinned_license_safetensors_makes_serve_refuse(
    tmp_path: Path, tiny_spec: ModelSpec, tiny_model_dir: Path
) -> None:
    models = _path_model(tmp_path, tiny_spec, tiny_model_dir)
    weights = (tmp_path / "tiny" / "model.safetensors").read_bytes()
    (tmp_path / "tiny" / "LICENSE.safetensors").write_bytes(weights)
    run = subprocess.run(
        [*BASTION, "serve", "--config", str(_node_toml(tmp_path, models))],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 3, run.stderr
    assert "no pin" in run.stderr and "LICENSE.safetensors" in run.stderr


def test_a_floating_reference_makes_serve_refuse(tmp_path: Path) -> None:
    models = tmp_path / "models.toml"
    models.write_text(
        '[[models]]\nname = "floaty"\nrepo = "org/model"\nrevision = "main"\nmax_model_len = 64\n'
        '[models.files]\n"config.json" = "' + "0" * 64 + '"\n'
    )
    config = _node_toml(tmp_path, models)
    config.write_text(config.read_text().replace('serve = ["bastion-tiny"]', 'serve = ["floaty"]'))
    run = subprocess.run(
        [*BASTION, "serve", "--config", str(config)],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert "floaty" in run.stderr and "floating" in run.stderr


def test_dev_mode_refuses_a_public_bind(tmp_path: Path) -> None:
    run = subprocess.run(
        [*BASTION, "serve", "--host", "0.0.0.0"],
        env=_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert "loopback" in run.stderr
    assert not (tmp_path / "data" / "models").exists()  # refused before building anything


def test_a_config_without_an_audit_log_refuses_to_serve(tmp_path: Path) -> None:
    config = _node_toml(tmp_path, tmp_path / "models.toml")
    config.write_text(config.read_text().replace("[audit]\nenabled = false\n", ""))
    run = subprocess.run(
        [*BASTION, "serve", "--config", str(config)],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert "no [audit] section" in run.stderr and "[audit] enabled = false" in run.stderr
    assert "serving on" not in run.stdout


def test_an_unknown_config_key_is_reported_with_its_location(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('[server]\nhots = "127.0.0.1"\n')
    run = subprocess.run(
        [*BASTION, "serve", "--config", str(config)],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert "hots" in run.stderr and "$.server" in run.stderr


@pytest.mark.engine
def test_sigterm_stops_the_node_and_its_engine_processes(
    tmp_path: Path, tiny_spec: ModelSpec, tiny_model_dir: Path
) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = _node_toml(tmp_path, _path_model(tmp_path, tiny_spec, tiny_model_dir), port)
    out = tmp_path / "stdout"
    with out.open("wb") as stdout:
        proc = subprocess.Popen(
            [*BASTION, "serve", "--config", str(config)],
            env=_env(tmp_path),
            stdout=stdout,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 240
        while f"serving on http://127.0.0.1:{port}" not in out.read_text(errors="replace"):
            assert proc.poll() is None, "the node exited before it was ready"
            assert time.monotonic() < deadline, "the node did not say it was serving"
            time.sleep(0.05)
        # it says so only once it listens: the first connection is answered
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10).status_code == 200
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children, "the engine runs in child processes"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        _, alive = psutil.wait_procs(children, timeout=30)
        assert alive == [], f"orphaned engine processes: {alive}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.engine
def test_a_clean_sigterm_logs_no_error(tmp_path: Path, tiny_spec: ModelSpec, tiny_model_dir: Path) -> None:
    """A deploy stops the node with SIGTERM: log alerting must not fire on it."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from node.tenancy import create_key

    config = _node_toml(tmp_path, _path_model(tmp_path, tiny_spec, tiny_model_dir), port)
    key = create_key()
    config.write_text(
        config.read_text()
        + f'[[tenants]]\nname = "acme"\nmodels = ["bastion-tiny"]\nresidency = "local-only"\n'
        f"keys = [{key.config_line()}]\n"
    )
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [*BASTION, "serve", "--config", str(config)],
            env=_env(tmp_path),
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 240
        while f"serving on http://127.0.0.1:{port}" not in out.read_text(errors="replace"):
            assert proc.poll() is None, err.read_text(errors="replace")
            assert time.monotonic() < deadline, "the node did not say it was serving"
            time.sleep(0.05)
        body = {"model": "bastion-tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
        headers = {"authorization": f"Bearer {key.key}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            assert http.post("/v1/chat/completions", json=body, headers=headers).status_code == 200
            with http.stream(
                "POST", "/v1/chat/completions", json={**body, "stream": True}, headers=headers
            ) as streamed:
                assert b"[DONE]" in streamed.read()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    logged = err.read_text(errors="replace")
    for bad in ("ERROR", "Traceback", "EngineDeadError", "leaked shared_memory"):
        assert bad not in logged, logged
