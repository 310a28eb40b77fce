"""A real PostgreSQL server for tests: initdb in a temp folder, a free port on 127.0.0.1.

The server refuses to run as root, so when the tests run as root (CI does) every
PostgreSQL command runs as the ``postgres`` system user (``runuser``), in a
folder owned by it. Password authentication (SCRAM) is on, so a URL without
the right password is refused, as in production. ``stop``/``start`` let a test
take the server away and bring it back on the same port and data.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

__all__ = ["PG_BIN", "PostgresServer", "postgres_available"]

PG_BIN = Path(os.environ.get("BASTION_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
_USER = "bastion"


def postgres_available() -> bool:
    return (PG_BIN / "initdb").exists() and (os.geteuid() != 0 or _has_postgres_user())


def _has_postgres_user() -> bool:
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return False
    return shutil.which("runuser") is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


_PREFIX = "bastion-pg-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class PostgresServer:
    @classmethod
    def reap_orphans(cls) -> None:
        """Stop and remove servers whose test process died without stopping them (a killed run)."""
        for root in Path(tempfile.gettempdir()).glob(_PREFIX + "*"):
            try:
                owner = int((root / "owner.pid").read_text())
            except (OSError, ValueError):
                continue
            if _alive(owner):
                continue
            orphan = cls.__new__(cls)
            orphan.root, orphan.data, orphan._as_root = root, root / "data", os.geteuid() == 0
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                orphan.close()
            shutil.rmtree(root, ignore_errors=True)

    def __init__(self) -> None:
        self.reap_orphans()
        self.root = Path(tempfile.mkdtemp(prefix=_PREFIX))
        (self.root / "owner.pid").write_text(str(os.getpid()))
        self.data = self.root / "data"
        self.password = secrets.token_urlsafe(18)
        self.port = _free_port()
        self._as_root = os.geteuid() == 0
        if self._as_root:
            entry = pwd.getpwnam("postgres")
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        pwfile = self.root / "pw"
        pwfile.write_text(self.password)
        if self._as_root:
            os.chown(pwfile, pwd.getpwnam("postgres").pw_uid, -1)
        pwfile.chmod(0o600)
        self._run(
            "initdb", "-D", str(self.data), "-U", _USER, f"--pwfile={pwfile}",
            "--auth-local=scram-sha-256", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        pwfile.unlink()

    @property
    def url(self) -> str:
        return f"postgresql://{_USER}:{self.password}@127.0.0.1:{self.port}/postgres"

    def start(self, *, timeout_s: float = 30.0) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-o", options,
            "-w", "-t", str(int(timeout_s)), "start",
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while True:  # pg_ctl -w waited already; make sure a client gets through
            try:
                with psycopg.connect(self.url, connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def close(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, tool: str, *args: str) -> None:
        command = [str(PG_BIN / tool), *args]
        if self._as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed ({result.returncode}): {result.stderr.strip()}")
