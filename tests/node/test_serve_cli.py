"""``bastion serve`` as a process: pins, floating references, dev mode, clean shutdown."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from serving.models import ModelSpec
from tests.fakes.upstream import FakeUpstream, Reply

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


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _Draining:
    """A real ``bastion serve`` with its audit log, one tenant and a route to the fake upstream
    (in this process), for SIGTERM's drain; ``hold`` keeps a stream in flight as long as a test needs."""

    def __init__(self, tmp_path: Path, fake: FakeUpstream, drain_timeout_s: float) -> None:
        from tests.harness import node_setup

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.setup = node_setup(
            tmp_path,
            tenants={"acme": 'models = ["chat"]\nresidency = ["eu-west"]'},
            extra=f"""
[server]
port = {self.port}
drain_timeout_s = {drain_timeout_s}

[[providers]]
name = "fake"
kind = "openai"
base_url = "{fake.openai_base}"
region = "eu-west"
api_key_env = "FAKE_UPSTREAM_KEY"
[providers.models."fake-model-2024-08-06"]
input_per_mtok = 1.0
output_per_mtok = 2.0

[[routes]]
alias = "chat"
fallbacks = [{{ provider = "fake", model = "fake-model-2024-08-06" }}]
""",
        )
        self.config = tmp_path / "node.toml"
        self.config.write_text(self.setup.toml.replace('serve = ["bastion-tiny"]', "serve = []"))
        self.env = _env(tmp_path) | {"FAKE_UPSTREAM_KEY": "sk-fake-secret-123"}
        self.hold = threading.Event()
        fake.script(Reply(text="one two three four five six", hold=self.hold, after_chunks=3))
        self.out = tmp_path / "stdout"
        with self.out.open("wb") as stdout, (tmp_path / "stderr").open("wb") as stderr:
            self.proc = subprocess.Popen(
                [*BASTION, "serve", "--config", str(self.config)],
                env=self.env,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
            )
        deadline = time.monotonic() + 120
        while f"serving on {self.url}" not in self.out.read_text(errors="replace"):
            assert self.proc.poll() is None, "the node exited before it was ready"
            assert time.monotonic() < deadline, "the node did not say it was serving"
            time.sleep(0.05)

    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.setup.keys['acme']}"}

    def held_stream(self, client: httpx.Client) -> contextlib.AbstractContextManager[httpx.Response]:
        """A stream the fake upstream holds (after its first words) until ``hold`` is set."""
        body = {"model": "chat", "messages": [{"role": "user", "content": "go on"}], "stream": True}
        return client.stream("POST", "/v1/chat/completions", headers=self.headers(), json=body)

    def records(self) -> dict[str, list[dict[str, Any]]]:
        """The log verifies; its decrypted records by request id."""
        cli = [*BASTION, "audit", "--config", str(self.config)]
        verify = subprocess.run([*cli, "verify"], env=self.env, capture_output=True, text=True, timeout=120)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        export = subprocess.run(
            [*cli, "export", "--decrypt"], env=self.env, capture_output=True, text=True, timeout=120
        )
        assert export.returncode == 0, export.stderr
        by_request: dict[str, list[dict[str, Any]]] = {}
        for line in export.stdout.splitlines():
            record = json.loads(line)
            if request_id := (record.get("meta") or {}).get("request_id"):
                by_request.setdefault(request_id, []).append(record)
        return by_request

    def until_draining(self) -> None:
        """/readyz answers 503 draining (polled on a deadline), /healthz still 200."""
        deadline = time.monotonic() + 10
        while (ready := httpx.get(f"{self.url}/readyz", timeout=10)).status_code != 503:
            assert time.monotonic() < deadline, "/readyz did not turn 503 after SIGTERM"
        assert ready.json() == {"status": "draining"}
        assert int(ready.headers["retry-after"]) >= 1
        assert httpx.get(f"{self.url}/healthz", timeout=10).status_code == 200

    def close(self) -> None:
        self.hold.set()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)


def _events(lines: list[str]) -> list[str]:
    return [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream() as upstream:
        yield upstream


def test_sigterm_drains_a_stream_in_flight_then_exits_0(tmp_path: Path, fake: FakeUpstream) -> None:
    node = _Draining(tmp_path, fake, drain_timeout_s=60)
    try:
        with httpx.Client(base_url=node.url, timeout=60) as client, node.held_stream(client) as stream:
            assert stream.status_code == 200
            lines = stream.iter_lines()
            seen = [next(lines) for _ in range(3)]  # the role and the first words: the rest is held
            node.proc.send_signal(signal.SIGTERM)
            node.until_draining()
            refused = httpx.post(
                f"{node.url}/v1/chat/completions",
                headers=node.headers(),
                json={"model": "chat", "messages": [{"role": "user", "content": "hi"}]},
                timeout=10,
            )
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "draining"
            assert int(refused.headers["retry-after"]) >= 1
            assert node.proc.poll() is None  # still serving the stream in flight
            node.hold.set()
            seen += list(lines)
        events = _events(seen)
        assert events[-1] == "[DONE]", events[-3:]
        assert not any('"error"' in e for e in events), events
        assert node.proc.wait(timeout=60) == 0
        records = node.records()
        stream_id = stream.headers["x-request-id"]
        assert [r["type"] for r in records[stream_id]] == ["request.start", "request.end"]
        assert records[stream_id][1]["meta"]["status"] == "ok"
        rejected = records[refused.headers["x-request-id"]]
        assert [r["type"] for r in rejected] == ["request.rejected"]
        assert rejected[0]["meta"]["error_code"] == "draining"
    finally:
        node.close()


def test_a_stream_past_the_drain_timeout_is_cut_with_an_error_event_and_recorded(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    node = _Draining(tmp_path, fake, drain_timeout_s=0.5)
    try:
        with httpx.Client(base_url=node.url, timeout=60) as client, node.held_stream(client) as stream:
            assert stream.status_code == 200
            lines = stream.iter_lines()
            seen = [next(lines) for _ in range(3)]
            node.proc.send_signal(signal.SIGTERM)
            seen += list(lines)  # held upstream: the drain timeout ends it
        events = _events(seen)
        assert "[DONE]" not in events
        assert json.loads(events[-1])["error"]["code"] == "draining", events[-3:]
        assert node.proc.wait(timeout=60) == 0
        records = node.records()
        stream_id = stream.headers["x-request-id"]
        assert [r["type"] for r in records[stream_id]] == ["request.start", "request.end"]
        assert records[stream_id][1]["meta"]["status"] == "draining"
    finally:
        node.close()


def test_a_second_signal_during_the_drain_cuts_the_stream_at_once(tmp_path: Path, fake: FakeUpstream) -> None:
    node = _Draining(tmp_path, fake, drain_timeout_s=600)
    try:
        with httpx.Client(base_url=node.url, timeout=60) as client, node.held_stream(client) as stream:
            assert stream.status_code == 200
            lines = stream.iter_lines()
            seen = [next(lines) for _ in range(3)]
            node.proc.send_signal(signal.SIGTERM)
            node.until_draining()
            node.proc.send_signal(signal.SIGINT)  # e.g. a second Ctrl-C: stop now, not in 600 s
            seen += list(lines)
        assert json.loads(_events(seen)[-1])["error"]["code"] == "draining"
        assert node.proc.wait(timeout=60) == 0
        stream_id = stream.headers["x-request-id"]
        assert [r["type"] for r in node.records()[stream_id]] == ["request.start", "request.end"]
    finally:
        node.close()
