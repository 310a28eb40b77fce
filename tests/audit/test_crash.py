"""Crash safety and fail-closed disk errors, in real subprocesses."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import msgspec

from .conftest import ConfigFactory
from .helpers import cli

WRITER = textwrap.dedent("""
    import asyncio, sys, msgspec
    from audit import AuditConfig, AuditEvent, AuditLog, AuditUnavailableError

    async def main():
        config = msgspec.json.decode(sys.argv[1].encode(), type=AuditConfig)
        log = await AuditLog.open(config)
        print("open", flush=True)

        async def worker(w):
            i = 0
            while True:
                try:
                    seq = await log.append(AuditEvent(type="load", tenant=f"t{w % 3}", meta={"w": w, "i": i},
                                                      content={"x": "y" * 200}))
                except AuditUnavailableError as exc:
                    print("refused", type(exc).__name__, flush=True)
                    await log.aclose()
                    sys.exit(0)
                sys.stdout.write(f"ack {seq}\\n")
                sys.stdout.flush()
                i += 1

        await asyncio.gather(*(worker(w) for w in range(int(sys.argv[2]))))

    asyncio.run(main())
""")


def _start(config_json: str, writers: int, preexec: object = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, config_json, str(writers)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        preexec_fn=preexec,
    )  # type: ignore[arg-type]


def test_sigkill_under_load_loses_no_acknowledged_record(make_config: ConfigFactory) -> None:
    config = make_config(checkpoint_every_records=50)
    config_json = msgspec.json.encode(config).decode()
    acked: set[int] = set()
    for _round in range(5):
        proc = _start(config_json, 32)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "open"
        target = len(acked) + 300
        seen = 0
        for line in proc.stdout:
            if line.startswith("ack "):
                acked.add(int(line.split()[1]))
                seen += 1
                if seen >= 300 or len(acked) >= target:
                    break
        os.kill(proc.pid, signal.SIGKILL)
        for line in proc.stdout:  # acks already printed before the kill still count
            if line.startswith("ack ") and line.endswith("\n"):
                acked.add(int(line.split()[1]))
        proc.wait()
        conn = sqlite3.connect(config.path)
        present = {s for (s,) in conn.execute("SELECT seq FROM audit")}
        conn.close()
        assert acked <= present, f"lost acknowledged records: {sorted(acked - present)[:10]}"
    code, out, err = cli(config, "verify", "--json")
    assert code == 0, out + err
    assert json.loads(out)["size"] >= len(acked)


def test_unwritable_disk_fails_closed(make_config: ConfigFactory) -> None:
    """RLIMIT_FSIZE makes every write past the limit fail with EFBIG, even for root."""
    config = make_config(checkpoint_every_records=1000)
    config_json = msgspec.json.encode(config).decode()
    limit = 256 * 1024

    def preexec() -> None:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = _start(config_json, 4, preexec)
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    acked: set[int] = set()
    refused = False
    for line in proc.stdout:
        assert time.monotonic() < deadline
        if line.startswith("ack "):
            acked.add(int(line.split()[1]))
        elif line.startswith("refused AuditUnavailableError"):
            refused = True
            break
    proc.kill()
    proc.wait()
    assert refused and acked
    conn = sqlite3.connect(config.path)
    present = {s for (s,) in conn.execute("SELECT seq FROM audit")}
    conn.close()
    assert acked <= present
    code, out, err = cli(config, "verify", "--json")
    assert code == 0, out + err
