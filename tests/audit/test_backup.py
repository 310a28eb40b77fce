"""Backups of the log and its keys, and keys that a restored keys database would bring back.

The log records every destruction (``key.destroyed``, ``retention.expired``);
whoever opens it refuses a data key that those records name, however the keys
database came back (a restore, a hand-copied file). Everything runs on the real
log: real SQLite files, the real write process, the real CLI functions.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import shutil
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest

from audit import AuditConfig, AuditKeyError, AuditLog
from audit.backup import backup_log, exclusive, plan_restore

from .conftest import ConfigFactory
from .helpers import cli, event


def _records(config: AuditConfig) -> list[dict[str, Any]]:
    code, out, err = cli(config, "export", "--decrypt")
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines()]


def _content_of(records: list[dict[str, Any]], subject: str) -> list[str]:
    """The content status of each request record of ``subject`` (its content names the subject)."""
    return [
        r["status"]["content"]
        for r in records
        if r["type"] == "request.start" and r["subject_h"] is not None and r["meta"]["i"] in _IDS[subject]
    ]


_IDS = {"alice": range(0, 3), "bob": range(100, 102)}


async def _write(log: AuditLog) -> None:
    for i in _IDS["alice"]:
        await log.append(event(i, subject="alice"))
    for i in _IDS["bob"]:
        await log.append(event(i, subject="bob"))


def _restore_keys_by_hand(config: AuditConfig, backup: Path) -> None:
    """What an operator might do without ``bastion restore``: copy the old keys file over."""
    keys = Path(config.resolved_keys_path)
    for suffix in ("-wal", "-shm"):
        Path(f"{keys}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(backup / "keys.db", keys)


async def test_a_backup_taken_while_the_log_is_written_is_private_and_consistent(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    config = make_config()
    dest = tmp_path / "backup"
    dest.mkdir(mode=0o700)
    async with await AuditLog.open(config) as log:
        await _write(log)

        async def keep_writing() -> None:  # new subjects: new data keys made during the copy
            for i in range(400):
                await log.append(event(1000 + i, subject=f"s{i % 40}"))

        writing = asyncio.create_task(keep_writing())
        names = await asyncio.to_thread(backup_log, config, dest)
        await writing
    assert set(names) >= {"audit.db", "keys.db"}
    for name in names:
        assert stat.S_IMODE((dest / name).stat().st_mode) == 0o600, name
    assert not Path(f"{dest / 'audit.db'}-wal").exists()  # a self-contained file
    # The copy, opened as a log of its own: it verifies, and every record has its key.
    copy = tmp_path / "copy"
    copy.mkdir(mode=0o700)
    shutil.copy(dest / "audit.db", copy / "audit.db")  # modes too: 0600
    shutil.copy(dest / "keys.db", copy / "keys.db")
    (copy / "checkpoints").mkdir(mode=0o700)
    if (dest / "checkpoint").exists():
        shutil.copy(dest / "checkpoint", copy / "checkpoints" / "checkpoint")
    restored = make_config(
        path=str(copy / "audit.db"),
        keys_path=str(copy / "keys.db"),
        checkpoint_path=str(copy / "checkpoints"),
    )
    code, out, err = await asyncio.to_thread(cli, restored, "verify", "--decrypt", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["payloads"]["missing"] == 0 and report["payloads"]["ok"] == report["size"] + sum(
        1 for r in _records(restored) if r["ckid"] is not None
    )
    assert 0 < report["size"] < 5 + 400 + 4 * 10  # a snapshot taken while records went on


async def test_a_hand_restored_keys_database_cannot_bring_a_shredded_key_back(
    make_config: ConfigFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config()
    dest = tmp_path / "backup"
    dest.mkdir(mode=0o700)
    async with await AuditLog.open(config) as log:
        await _write(log)
        await asyncio.to_thread(backup_log, config, dest)
        await log.shred("acme", "alice")
    assert set(_content_of(_records(config), "alice")) == {"shredded"}

    _restore_keys_by_hand(config, dest)
    # A reader (export, verify) sees the old key back in the file, and still refuses it.
    code, out, err = await asyncio.to_thread(cli, config, "export", "--decrypt")
    assert code == 0
    assert "records as destroyed" in err
    records = [json.loads(line) for line in out.splitlines()]
    assert set(_content_of(records, "alice")) == {"shredded"}
    assert set(_content_of(records, "bob")) == {"ok"}

    # Opening the log (as the node does at start) deletes it for good, says so, and records it.
    with caplog.at_level("WARNING", logger="bastion.audit"):
        async with await AuditLog.open(config) as log:
            refused = list(log.refused_keys)
    assert len(refused) == 1
    assert any(refused[0] in r.getMessage() for r in caplog.records)
    records = _records(config)
    (mark,) = [r for r in records if r["type"] == "key.refused"]
    assert mark["meta"]["kids"] == refused
    (shred,) = [r for r in records if r["type"] == "key.destroyed"]
    assert refused[0] in shred["meta"]["kids"]
    assert mark["meta"]["destroyed_at"] == [shred["seq"]]
    assert set(_content_of(records, "alice")) == {"shredded"}
    code, _, _ = await asyncio.to_thread(cli, config, "verify")
    assert code == 0


async def test_a_keys_database_that_cannot_read_a_destruction_record_is_refused(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    """Backed up in January, shredded in February: the February record that names the destroyed
    keys is sealed under February's system key, which the January keys never had."""
    config = make_config()
    now = {"t": dt.datetime(2026, 1, 20, tzinfo=dt.UTC)}

    def clock() -> int:
        return int(now["t"].timestamp() * 1e9)

    dest = tmp_path / "backup"
    dest.mkdir(mode=0o700)
    async with await AuditLog.open(config, clock=clock) as log:
        await _write(log)
        await asyncio.to_thread(backup_log, config, dest)
    now["t"] = dt.datetime(2026, 2, 3, tzinfo=dt.UTC)
    async with await AuditLog.open(config, clock=clock) as log:
        await log.append(event(200, subject="carol"))
        await log.shred("acme", "alice")
    kept = Path(config.resolved_keys_path).read_bytes()
    with exclusive(config), pytest.raises(AuditKeyError, match="destruction records"):
        plan_restore(config, dest, log=False, keys=True)
    assert Path(config.resolved_keys_path).read_bytes() == kept  # nothing installed
    assert not any(p.name.endswith(".restoring") for p in Path(config.path).parent.iterdir())

    _restore_keys_by_hand(config, dest)
    with pytest.raises(AuditKeyError, match="destruction records"):
        await AuditLog.open(config, clock=clock)


async def test_restoring_keys_refuses_the_shredded_ones_before_installing(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    config = make_config()
    dest = tmp_path / "backup"
    dest.mkdir(mode=0o700)
    async with await AuditLog.open(config) as log:
        await _write(log)
        await asyncio.to_thread(backup_log, config, dest)
        await log.shred("acme", "alice")
        await log.append(event(300, subject="dave"))  # a key made after the backup
    with exclusive(config):
        plan = plan_restore(config, dest, log=False, keys=True)
        assert len(plan.refused) == 1 and plan.missing == 1
        plan.install()
    # the installed file itself no longer holds the key: no reader, however naive, finds it
    conn = sqlite3.connect(config.resolved_keys_path)
    try:
        held = {bytes(k).hex() for (k,) in conn.execute("SELECT kid FROM deks")}
    finally:
        conn.close()
    assert plan.refused[0] not in held
    records = _records(config)
    assert set(_content_of(records, "alice")) == {"shredded"}
    assert set(_content_of(records, "bob")) == {"ok"}
    assert os.path.exists(config.resolved_keys_path)
