"""The write process (audit.dbproc): it keeps the log a prefix of the chain and dies with its node."""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import msgspec
import pytest

from audit import AuditLog, AuditUnavailableError
from audit.dbproc import Refused, WriteGroup, WriteProcess
from audit.record import COLUMNS

from .conftest import ConfigFactory
from .helpers import cli, event, populate


def _row(seq: int, ts_ns: int | None) -> list[object]:
    values: dict[str, object] = dict.fromkeys(COLUMNS, b"\x00" * 16)
    values.update(seq=seq, ts_ns=ts_ns, event_type="request.start", subject_h=None, request_h=None)
    values.update(ckid=None, cnonce=None, cct=None)
    return [values[c] for c in COLUMNS]


async def test_a_group_sent_behind_a_failed_commit_is_refused(make_config: ConfigFactory) -> None:
    config = make_config()
    await populate(config, 3)
    conn = sqlite3.connect(config.path)
    (size,) = conn.execute("SELECT count(*) FROM audit").fetchone()
    conn.close()
    fd = os.open(config.path + ".lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    proc = await WriteProcess.start(config.path, fd)
    try:
        # Sent together, as the writer sends a group sealed ahead: the first fails (ts_ns is NOT
        # NULL), so the second would leave a hole in the chain and must not run.
        bad = proc.write(WriteGroup(size, 1, _row(size, None)))
        behind = proc.write(WriteGroup(size + 1, 1, _row(size + 1, 1)))
        with pytest.raises(sqlite3.Error, match="NOT NULL"):
            await bad
        with pytest.raises(Refused, match=f"log ends at {size}"):
            await behind
        with pytest.raises(Refused):  # nor one that skips ahead on its own
            await proc.write(WriteGroup(size + 5, 1, _row(size + 5, 1)))
        assert await proc.size() == size
    finally:
        await proc.close()
        os.close(fd)
    code, out, err = await asyncio.to_thread(cli, config, "verify", "--json")
    assert code == 0, out + err
    assert json.loads(out)["size"] == size


def _children(pid: int) -> list[int]:
    """The write processes among ``pid``'s children (the test session may have engine processes too)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"audit.dbproc" in cmdline:
                out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


NODE = textwrap.dedent("""
    import asyncio, sys, msgspec
    from audit import AuditConfig, AuditEvent, AuditLog

    async def main():
        config = msgspec.json.decode(sys.argv[1].encode(), type=AuditConfig)
        log = await AuditLog.open(config)
        seq = await log.append(AuditEvent(type="load", tenant="t", meta={}))
        print("open", seq, flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
""")


async def test_the_write_process_exits_with_its_node_and_frees_the_log(
    make_config: ConfigFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    kek = (Path(make_config().kek_file or "")).read_text().strip()
    monkeypatch.setenv("TEST_AUDIT_KEK", kek)
    config = make_config(kek_file=None, kek_env="TEST_AUDIT_KEK")
    node = subprocess.Popen(
        [sys.executable, "-c", NODE, msgspec.json.encode(config).decode()],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert node.stdout is not None
        word, seq = node.stdout.readline().split()
        assert word == "open"
        children = _children(node.pid)
        assert len(children) == 1, children  # the write process
        # it does not inherit the node's environment, where the KEK is
        environ = Path(f"/proc/{children[0]}/environ").read_bytes()
        assert b"TEST_AUDIT_KEK" not in environ and kek.encode() not in environ
    finally:
        node.kill()  # SIGKILL: the node gets no chance to close its log (and a failed check leaves nothing)
        node.wait()
    deadline = time.monotonic() + 30
    while _alive(children[0]):
        assert time.monotonic() < deadline, "the write process outlived its node"
        time.sleep(0.05)
    async with await AuditLog.open(config) as log:  # the lock went with it
        assert log.stats().records > int(seq)  # the acknowledged record (and the key records after it)


async def test_a_clean_close_ends_the_write_process_quietly(
    make_config: ConfigFactory, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="bastion.audit"):
        await populate(make_config(), 3)
    assert caplog.records == []
    assert _children(os.getpid()) == []


async def test_a_dead_write_process_fails_appends_closed_and_never_hangs(
    make_config: ConfigFactory, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config()
    log = await AuditLog.open(config)
    try:
        await log.append(event(0))
        (child,) = _children(os.getpid())
        os.kill(child, signal.SIGKILL)
        # The next appends get a clear error, not a wait: the writer stops (fail closed).
        for i in range(1, 4):
            with pytest.raises(AuditUnavailableError):
                await asyncio.wait_for(log.append(event(i)), 30)
        assert log.stats().failed
        assert "gone" in caplog.text  # said once, loudly
    finally:
        await asyncio.wait_for(log.aclose(), 30)
    code, out, err = await asyncio.to_thread(cli, config, "verify", "--json")
    assert code == 0, out + err
