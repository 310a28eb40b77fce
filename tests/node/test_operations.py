"""Operating the audit log of a node that serves: shred, rotate-kek, retention and backup, never a stop.

The node is the real app under uvicorn on 127.0.0.1 with its real audit log (its
admin socket is part of the node ``build_node`` assembles); the operator's commands are real ``bastion``
processes, given the node's node.toml. The provider is the fake upstream (real
HTTP on loopback), so no engine is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import io
import json
import os
import signal
import socket
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from audit import AuditLog, generate_kek_file
from audit.cli import run_audit_command
from node.admin import admin_socket_path
from node.cli import build_parser
from node.config import NodeConfig, decode_config
from tests.fakes.upstream import FakeUpstream
from tests.harness import TINY, NodeSetup, bearer, node_setup, running_node

ROOT = Path(__file__).resolve().parents[2]
FAKE_MODEL = "fake-model-2024-08-06"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeUpstream]:
    monkeypatch.setenv("FAKE_UPSTREAM_KEY", "sk-fake-secret-123")
    with FakeUpstream() as upstream:
        yield upstream


def _setup(tmp_path: Path, fake: FakeUpstream, audit_extra: str = "") -> tuple[NodeSetup, Path]:
    """One tenant on the fake upstream, and its node.toml on disk for the CLI."""
    setup = node_setup(
        tmp_path,
        tenants={"acme": 'models = ["chat"]\nresidency = ["eu-west"]'},
        extra=f"""
[[providers]]
name = "fake"
kind = "openai"
base_url = "{fake.openai_base}"
region = "eu-west"
api_key_env = "FAKE_UPSTREAM_KEY"
[providers.models."{FAKE_MODEL}"]
input_per_mtok = 1.0
output_per_mtok = 2.0

[[routes]]
alias = "chat"
fallbacks = [{{ provider = "fake", model = "{FAKE_MODEL}" }}]
""",
    )
    text = setup.toml.replace("checkpoint_every_s = 0.5\n", "checkpoint_every_s = 0.5\n" + audit_extra)
    path = tmp_path / "node.toml"
    path.write_text(text)
    return dataclasses.replace(setup, config=decode_config(text), toml=text), path


async def bastion(*argv: str | Path) -> tuple[int, str, str]:
    """The real command line, as a process of its own."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("BASTION_CONFIG", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "node.cli",
        *map(str, argv),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def _chat(http: httpx.AsyncClient, key: str, user: str) -> str:
    r = await http.post(
        "/v1/chat/completions",
        headers=bearer(key),
        json={"model": "chat", "messages": [{"role": "user", "content": f"hi from {user}"}], "user": user},
    )
    assert r.status_code == 200, r.text
    request_id = r.json()["id"]
    assert isinstance(request_id, str)
    return request_id


def _export(config: NodeConfig) -> list[dict[str, Any]]:
    """``bastion audit export --decrypt`` (read-only: works while the node runs)."""
    assert config.audit is not None
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = run_audit_command(build_parser().parse_args(["audit", "export", "--decrypt"]), config.audit)
    assert code == 0
    return [json.loads(line) for line in out.getvalue().splitlines()]


def _content(records: list[dict[str, Any]], request_id: str) -> str:
    (start,) = [
        r
        for r in records
        if r["type"] == "request.start" and (r.get("meta") or {}).get("request_id") == request_id
    ]
    status: str = start["status"]["content"]
    return status


async def test_shred_while_serving_and_an_older_keys_backup_cannot_bring_the_data_back(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    setup, config = _setup(tmp_path, fake)
    key = setup.keys["acme"]
    backup = tmp_path / "backup"
    async with running_node(setup, {}) as node, httpx.AsyncClient(base_url=node.url, timeout=30) as http:
        sock = admin_socket_path(setup.config, setup.config_dir)
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
        alice = [await _chat(http, key, "alice") for _ in range(2)]
        bob = await _chat(http, key, "bob")

        code, out, err = await bastion("backup", "--config", config, "--to", backup)  # while serving
        assert code == 0, err
        assert stat.S_IMODE(backup.stat().st_mode) == 0o700
        manifest = json.loads((backup / "manifest.json").read_text())
        assert {"audit.db", "keys.db", "budgets.db", "feedback.db"} <= set(manifest["files"])
        for name in [*manifest["files"], "manifest.json"]:
            assert stat.S_IMODE((backup / name).stat().st_mode) == 0o600, name

        code, out, err = await bastion(
            "audit", "--config", config, "shred", "--tenant", "acme", "--subject", "alice"
        )
        assert code == 0, err
        assert "by the running node" in out
        carol = await _chat(http, key, "carol")  # still serving, still recording, after the shred
        records = _export(setup.config)
        assert [_content(records, r) for r in alice] == ["shredded", "shredded"]
        assert _content(records, bob) == "ok"
        (shred,) = [r for r in records if r["type"] == "key.destroyed"]
        carol_start = next(r for r in records if (r.get("meta") or {}).get("request_id") == carol)
        assert shred["seq"] < carol_start["seq"]  # in the chain, in order, through the one writer

        code, _, err = await bastion("restore", "--config", config, "--from", backup, "--only", "keys")
        assert code == 5, err  # never under a running node
        assert "another process" in err

    assert not sock.exists()  # the node removed its socket on the way out
    code, out, err = await bastion("restore", "--config", config, "--from", backup, "--only", "keys")
    assert code == 0, err
    assert "REFUSED 1 data key(s)" in err
    refused = shred["meta"]["kids"]
    assert len(refused) == 1 and refused[0] in err
    assert "1 data key(s) used by the log are not in the restored keys database" in err  # carol's

    records = _export(setup.config)
    assert [_content(records, r) for r in alice] == ["shredded", "shredded"]
    assert _content(records, bob) == "ok"
    assert _content(records, carol) == "missing"  # her key was made after the backup
    (mark,) = [r for r in records if r["type"] == "key.refused"]
    assert mark["meta"]["kids"] == refused
    code, _, err = await bastion("audit", "--config", config, "verify")
    assert code == 0, err

    # and the node starts on the restored keys, serving
    async with running_node(setup, {}) as node, httpx.AsyncClient(base_url=node.url, timeout=30) as http:
        await _chat(http, key, "erin")
    assert [_content(_export(setup.config), r) for r in alice] == ["shredded", "shredded"]


async def test_restore_checks_the_backup_before_installing_anything(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    setup, config = _setup(tmp_path, fake)
    backup = tmp_path / "backup"
    async with running_node(setup, {}) as node, httpx.AsyncClient(base_url=node.url, timeout=30) as http:
        await _chat(http, setup.keys["acme"], "alice")
        code, _, err = await bastion("backup", "--config", config, "--to", backup)
        assert code == 0, err
        await _chat(http, setup.keys["acme"], "bob")
    code, _, err = await bastion("backup", "--config", config, "--to", backup)
    assert code == 1 and "not an empty folder" in err
    assert setup.config.audit is not None
    keys = Path(setup.config.audit.resolved_keys_path)
    before = keys.read_bytes()
    altered = bytearray((backup / "keys.db").read_bytes())
    altered[-1] ^= 1
    (backup / "keys.db").write_bytes(bytes(altered))
    code, _, err = await bastion("restore", "--config", config, "--from", backup)
    assert code == 2, err
    assert "keys.db: does not match its SHA-256" in err
    assert keys.read_bytes() == before
    # The whole backup is older than checkpoints this log has exported since: a rollback.
    (backup / "keys.db").write_bytes(bytes(altered[:-1]) + bytes([altered[-1] ^ 1]))
    code, _, err = await bastion("restore", "--config", config, "--from", backup)
    assert code == 3, err
    assert "roll the log back" in err
    assert keys.read_bytes() == before


async def test_rotate_kek_while_serving_and_shred_offline_when_no_node_runs(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    setup, config = _setup(tmp_path, fake)
    new_kek = tmp_path / "kek.new"
    generate_kek_file(new_kek)
    async with running_node(setup, {}) as node, httpx.AsyncClient(base_url=node.url, timeout=30) as http:
        before = await _chat(http, setup.keys["acme"], "alice")
        code, out, err = await bastion("audit", "--config", config, "rotate-kek", "--new-kek-file", new_kek)
        assert code == 0, err
        assert "by the running node" in out
        after = await _chat(http, setup.keys["acme"], "alice")  # a new subject key, under the new KEK
    rotated = config.read_text().replace(str(tmp_path / "kek.key"), str(new_kek))
    config.write_text(rotated)
    setup = dataclasses.replace(setup, config=decode_config(rotated))
    records = _export(setup.config)
    assert _content(records, before) == "ok" and _content(records, after) == "ok"
    assert [r["meta"]["kind"] for r in records if r["type"] == "key.rotated"] == ["kek"]

    code, out, err = await bastion(
        "audit", "--config", config, "shred", "--tenant", "acme", "--subject", "alice"
    )
    assert code == 0, err
    assert "offline" in out
    assert _content(_export(setup.config), before) == "shredded"


async def test_retention_runs_on_its_schedule_while_serving(tmp_path: Path, fake: FakeUpstream) -> None:
    setup, _ = _setup(tmp_path, fake, audit_extra="retention_months = 1\nretention_interval_s = 0.05\n")
    audit = setup.config.audit
    assert audit is not None
    now = {"t": dt.datetime(2026, 1, 10, tzinfo=dt.UTC)}

    def clock() -> int:
        return int(now["t"].timestamp() * 1e9)

    async with (
        await AuditLog.open(audit, clock=clock) as log,
        running_node(setup, {}, audit=log) as node,
        httpx.AsyncClient(base_url=node.url, timeout=30) as http,
    ):
        january = await _chat(http, setup.keys["acme"], "alice")
        assert _content(_export(setup.config), january) == "ok"
        now["t"] = dt.datetime(2026, 3, 2, tzinfo=dt.UTC)  # January is now past a month's retention
        deadline = time.monotonic() + 20
        while not [r for r in _export(setup.config) if r["type"] == "retention.expired"]:
            assert time.monotonic() < deadline, "retention did not run on its schedule"
            await asyncio.sleep(0.05)
        march = await _chat(http, setup.keys["acme"], "alice")
    records = _export(setup.config)
    (expired,) = [r for r in records if r["type"] == "retention.expired"]
    assert expired["meta"]["months"] == ["2026-01"]
    (gone,) = [r for r in records if r["type"] == "request.start" and r["ts"].startswith("2026-01")]
    assert gone["status"] == {"meta": "shredded", "content": "shredded"}  # its request id went too
    assert "meta" not in gone or not gone["meta"]
    assert _content(records, march) == "ok"


async def test_a_served_node_shreds_through_its_socket_and_removes_it_on_sigterm(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    """``bastion serve`` as the process an operator runs, with no local model to wait for."""
    setup, config = _setup(tmp_path, fake)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    text = config.read_text().replace(f'serve = ["{TINY}"]', "serve = []") + f"\n[server]\nport = {port}\n"
    config.write_text(text)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "node.cli", "serve", "--config", str(config), env=env, start_new_session=True
    )
    sock = admin_socket_path(setup.config, setup.config_dir)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            deadline = time.monotonic() + 60
            while True:
                assert proc.returncode is None, "the node exited before it served"
                assert time.monotonic() < deadline, "the node did not start serving"
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/readyz")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
            await _chat(http, setup.keys["acme"], "alice")
            code, out, err = await bastion("audit", "--config", config, "shred", "--tenant", "acme")
            assert code == 0, err
            assert "by the running node" in out
            assert (await http.get("/readyz")).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 60) == 0
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    assert not sock.exists()
    records = _export(decode_config(text))
    (start,) = [r for r in records if r["type"] == "request.start"]
    assert start["status"] == {"meta": "shredded", "content": "shredded"}  # the whole tenant
