"""``bastion audit --config a=... --config b=... verify|export``: two nodes' real logs as one fleet.

Each node has its own log, KEK, signing key and checkpoint folder; records are
appended to the two logs in turn, so a merged export must interleave them.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import sqlite3
from pathlib import Path

import pytest

from audit import AuditEvent, AuditLog, generate_kek_file, generate_signing_key
from node.cli import main
from node.config import load_config

TENANT = "acme"


def _node(tmp_path: Path, name: str) -> Path:
    root = tmp_path / name
    root.mkdir(mode=0o700)
    generate_kek_file(root / "kek.key")
    generate_signing_key(root / "signing.key")
    config = root / "node.toml"
    config.write_text(
        f"""
[audit]
path = "{root / "audit.db"}"
kek_file = "{root / "kek.key"}"
signing_key_file = "{root / "signing.key"}"
checkpoint_path = "{root / "checkpoints"}"
origin = "bastion.example/{name}"
checkpoint_every_records = 2
"""
    )
    return config


async def _populate(configs: list[Path], rounds: int) -> None:
    """Append to each node's log in turn: a0, b0, a1, b1, ..."""
    audits = [load_config(c).audit for c in configs]
    async with contextlib.AsyncExitStack() as stack:
        logs = [await stack.enter_async_context(await AuditLog.open(a)) for a in audits if a is not None]
        for i in range(rounds):
            for n, log in enumerate(logs):
                meta = {"request_id": f"req-{'ab'[n]}{i}", "i": i}
                await log.append(AuditEvent(type="request.start", tenant=TENANT, meta=meta))


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def fleet(tmp_path: Path) -> list[str]:
    configs = [_node(tmp_path, "node-a"), _node(tmp_path, "node-b")]
    asyncio.run(_populate(configs, rounds=4))
    return ["--config", f"node-a={configs[0]}", "--config", f"node-b={configs[1]}"]


def test_fleet_verify_reports_each_node_and_the_fleet(fleet: list[str]) -> None:
    code, out, err = _cli("audit", *fleet, "verify", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["outcome"] == "OK"
    assert set(report["nodes"]) == {"node-a", "node-b"}
    # 4 requests + each log's own config/verify events: each node's tree is its own
    assert all(n["outcome"] == "OK" and n["size"] >= 4 for n in report["nodes"].values())
    assert report["nodes"]["node-a"]["root"] != report["nodes"]["node-b"]["root"]
    assert report["records"] == sum(n["size"] for n in report["nodes"].values())

    code, out, _ = _cli("audit", *fleet, "verify")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("node-a: OK: ")
    assert any(line.startswith("node-b: OK: ") for line in lines)
    assert lines[-1].startswith("fleet: OK: 2 logs, ")


def test_one_tampered_node_makes_the_fleet_tampered(fleet: list[str], tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "node-b" / "audit.db", isolation_level=None)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f"DROP TRIGGER {name}")
    conn.execute("UPDATE audit SET ts_ns = ts_ns + 1 WHERE seq = 2")
    conn.close()
    code, out, _ = _cli("audit", *fleet, "verify", "--json")
    assert code == 2
    report = json.loads(out)
    assert report["outcome"] == "TAMPERED"
    assert report["nodes"]["node-a"]["outcome"] == "OK"
    assert report["nodes"]["node-b"]["outcome"] == "TAMPERED"


def test_a_missing_log_is_reported_for_its_node(fleet: list[str], tmp_path: Path) -> None:
    (tmp_path / "node-a" / "audit.db").rename(tmp_path / "node-a" / "moved.db")
    code, out, _ = _cli("audit", *fleet, "verify", "--json")
    assert code == 1
    report = json.loads(out)
    assert report["nodes"]["node-a"]["outcome"] == "ERROR"
    assert report["nodes"]["node-b"]["outcome"] == "OK"


def test_fleet_export_merges_the_logs_in_time_order(fleet: list[str]) -> None:
    code, out, err = _cli("audit", *fleet, "export", "--decrypt")
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    requests = [r for r in records if r["type"] == "request.start"]
    assert [r["meta"]["request_id"] for r in requests] == [f"req-{n}{i}" for i in range(4) for n in "ab"]
    assert [r["node"] for r in requests] == ["node-a", "node-b"] * 4
    stamps = [r["ts_ns"] for r in records]
    assert stamps == sorted(stamps)
    for node in ("node-a", "node-b"):  # each node's own sequence is intact within the merge
        seqs = [r["seq"] for r in records if r["node"] == node]
        assert seqs == sorted(seqs)

    code, out, _ = _cli("audit", *fleet, "export", "--tenant", TENANT, "--since", "2000-01-01")
    assert code == 0
    assert len([line for line in out.splitlines() if '"request.start"' in line]) == 8


def test_commands_of_one_log_refuse_a_fleet(fleet: list[str]) -> None:
    code, _, err = _cli("audit", *fleet, "prove", "--seq", "0")
    assert code == 1
    assert "one log" in err
