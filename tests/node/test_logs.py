"""``[logging]``: JSON lines on stdout at the configured level, and a 0600 file rotated by size."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from node.config import ConfigError, LoggingConfig, decode_config
from node.logs import configure_node_logging, log_request
from node.metrics import RequestTimings
from node.tenancy import create_key
from serving.models import ModelSpec

ROOT = Path(__file__).resolve().parents[2]
BASTION = [sys.executable, "-m", "node.cli"]
_PROMPT = "Zebulon Quartermaine"  # must never reach a log line


_NO_AUDIT = "[audit]\nenabled = false\n"


def _settings(toml: str) -> LoggingConfig:
    return decode_config(toml + _NO_AUDIT).logging


@pytest.fixture
def logger_name(request: pytest.FixtureRequest) -> Iterator[str]:
    """A logger of this test's own, its handlers closed and removed afterwards."""
    name = f"bastion.test_logs.{request.node.name}"
    yield name
    target = logging.getLogger(name)
    for handler in list(target.handlers):
        target.removeHandler(handler)
        handler.close()


_TIMINGS = RequestTimings(e2e_s=0.5, queue_wait_s=0.0, ttft_s=0.1, itl_mean_s=0.01, gpu_seconds=0.2, cost=0.0)


def _request_line(logger: logging.Logger, n: int) -> None:
    log_request(
        logger,
        request_id=f"req-{n:05d}",
        tenant="cardiology",
        alias="bastion-tiny",
        route="local",
        status=200,
        timings=_TIMINGS,
    )


def test_the_file_is_0600_and_rotates_at_max_bytes(tmp_path: Path, logger_name: str) -> None:
    settings = _settings('[logging]\nfile = "logs/node.log"\nmax_bytes = 2048\nbackup_count = 2\n')
    (tmp_path / "logs").mkdir()
    old_umask = os.umask(0o022)  # the usual umask would make a plain open() 0644
    try:
        configure_node_logging(settings, tmp_path, logger=logger_name, stream=io.StringIO())
        logger = logging.getLogger(logger_name)
        for n in range(60):  # about 400 bytes a line: several rotations
            _request_line(logger, n)
    finally:
        os.umask(old_umask)
    files = sorted((tmp_path / "logs").iterdir())
    assert [f.name for f in files] == ["node.log", "node.log.1", "node.log.2"]  # backup_count bounds them
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
        assert f.stat().st_size <= 2048
    ids = [json.loads(x)["request_id"] for x in (tmp_path / "logs/node.log").read_text().splitlines()]
    assert ids[-1] == "req-00059"  # the newest line is in the live file
    older = [json.loads(x)["request_id"] for x in (tmp_path / "logs/node.log.1").read_text().splitlines()]
    assert older[-1] < ids[0]


def test_an_existing_wider_file_is_narrowed_to_0600(tmp_path: Path, logger_name: str) -> None:
    log = tmp_path / "node.log"
    log.write_text("")
    log.chmod(0o644)
    configure_node_logging(_settings('[logging]\nfile = "node.log"\n'), tmp_path, logger=logger_name)
    assert stat.S_IMODE(log.stat().st_mode) == 0o600


def test_level_filters_stdout_and_file_alike(tmp_path: Path, logger_name: str) -> None:
    out = io.StringIO()
    settings = _settings(f'[logging]\nlevel = "WARNING"\nfile = "{tmp_path / "n.log"}"\n')
    configure_node_logging(settings, Path("/nonexistent"), logger=logger_name, stream=out)  # absolute path
    logger = logging.getLogger(logger_name)
    logger.info("quiet")
    logger.warning("loud", extra={"fields": {"prompt": "secret text", "tenant": "t1"}})
    for text in (out.getvalue(), (tmp_path / "n.log").read_text()):
        lines = [json.loads(x) for x in text.splitlines()]
        assert [(x["level"], x["msg"], x.get("tenant")) for x in lines] == [("WARNING", "loud", "t1")]
        assert "secret text" not in text


def test_a_log_file_that_cannot_be_opened_is_a_config_error(tmp_path: Path, logger_name: str) -> None:
    settings = _settings('[logging]\nfile = "missing-dir/node.log"\n')
    with pytest.raises(ConfigError, match=r"\[logging\] file .*missing-dir/node.log"):
        configure_node_logging(settings, tmp_path, logger=logger_name)
    assert logging.getLogger(logger_name).handlers == []  # nothing half-configured stays behind


@pytest.mark.parametrize(
    ("toml", "where"),
    [
        ('[logging]\nlevel = "LOUD"\n', "$.logging.level"),
        ("[logging]\nmax_bytes = 10\n", "$.logging.max_bytes"),
        ("[logging]\nbackup_count = 0\n", "$.logging.backup_count"),
        ("[logging]\nrotate = true\n", "rotate"),
    ],
)
def test_bad_logging_settings_are_config_errors(toml: str, where: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(where)):
        decode_config(toml + _NO_AUDIT)


def test_serve_exits_2_when_its_log_file_cannot_be_opened(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('[logging]\nfile = "no-such-dir/node.log"\n' + _NO_AUDIT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("BASTION_CONFIG", None)
    run = subprocess.run(
        [*BASTION, "serve", "--config", str(config)], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 2, run.stderr[-2000:]
    assert "[logging] file" in run.stderr and "no-such-dir" in run.stderr


@pytest.mark.engine
def test_a_served_request_is_one_line_on_stdout_and_in_the_file(
    tmp_path: Path, tiny_spec: ModelSpec, tiny_model_dir: Path
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    key = create_key()
    files = "\n".join(f'"{name}" = "{digest}"' for name, digest in tiny_spec.files.items())
    (tmp_path / "models.toml").write_text(
        f"""
[[models]]
name = "bastion-tiny"
path = "{tiny_model_dir}"
dtype = "float32"
max_model_len = 2048
gpu_memory_utilization = 0.5
max_num_seqs = 8
enforce_eager = true
kv_cache_memory_bytes = 33554432
[models.files]
{files}
"""
    )
    config = tmp_path / "node.toml"
    config.write_text(
        f"""
models_file = "models.toml"
data_dir = "data"
[server]
port = {port}
[logging]
file = "node.log"
[audit]
enabled = false
[[tenants]]
name = "cardiology"
models = ["bastion-tiny"]
keys = [{key.config_line()}]
"""
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("BASTION_CONFIG", None)
    stdout = tmp_path / "stdout.txt"
    with stdout.open("w") as out:
        proc = subprocess.Popen(
            [*BASTION, "serve", "--config", str(config)],
            env=env,
            stdout=out,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, "the node exited before it was ready"
            assert time.monotonic() < deadline, "the node did not become ready"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        reply = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            headers={"Authorization": f"Bearer {key.key}"},
            json={
                "model": "bastion-tiny",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": _PROMPT}],
            },
            timeout=60,
        )
        assert reply.status_code == 200, reply.text
        completion = reply.json()["choices"][0]["message"]["content"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    log = tmp_path / "node.log"
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    for text in (log.read_text(), stdout.read_text()):
        records = [json.loads(x) for x in text.splitlines() if x.startswith("{")]
        requests = [r for r in records if r.get("msg") == "request"]
        assert len(requests) == 1, records
        line = requests[0]
        assert (line["tenant"], line["model"], line["route"], line["status"]) == (
            "cardiology",
            "bastion-tiny",
            "local",
            200,
        )
        assert line["e2e_ms"] > 0 and line["request_id"]
        assert _PROMPT not in text and (not completion.strip() or completion not in text)
