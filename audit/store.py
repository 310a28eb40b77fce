"""Synchronous access to the log database for start-up, verification, export and proofs."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from typing import Literal

from .errors import AuditConfigError, AuditTamperedError
from .private import private_sqlite
from .record import COLUMNS, Row
from .schema import LOG_MIGRATIONS, migrate_sync

__all__ = ["connect_ro", "connect_rw", "ensure_log_id", "iter_rows", "read_checkpoints", "read_log_id"]

_SELECT = f"SELECT {', '.join(COLUMNS)} FROM audit"  # noqa: S608


def _pragmas(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA busy_timeout=5000")


def connect_rw(path: str) -> sqlite3.Connection:
    """Open (creating and migrating) the log database in WAL mode with synchronous=FULL."""
    private_sqlite(path)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        _pragmas(conn)
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise AuditConfigError(f"{path}: cannot enable WAL (journal_mode is {mode})")
        conn.execute("PRAGMA synchronous=FULL")
        migrate_sync(conn, LOG_MIGRATIONS, f"audit log {path}")
    except BaseException:
        conn.close()
        raise
    return conn


def connect_ro(path: str) -> sqlite3.Connection:
    if not os.path.exists(path):
        raise AuditConfigError(f"{path}: no audit log there")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    _pragmas(conn)
    return conn


def ensure_log_id(conn: sqlite3.Connection) -> bytes:
    """The log's random 16-byte id (bound into every record's associated data), created once."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute("SELECT value FROM log_meta WHERE key = 'log_id'").fetchone()
        if row is None:
            if conn.execute("SELECT 1 FROM audit LIMIT 1").fetchone() is not None:
                raise AuditTamperedError("the log has records but no log id")
            log_id = os.urandom(16)
            conn.execute("INSERT INTO log_meta VALUES ('log_id', ?)", (log_id,))
        else:
            log_id = bytes(row[0])
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return log_id


def read_log_id(conn: sqlite3.Connection) -> bytes:
    try:
        row = conn.execute("SELECT value FROM log_meta WHERE key = 'log_id'").fetchone()
    except sqlite3.DatabaseError as exc:
        raise AuditTamperedError(f"log metadata unreadable: {exc}") from exc
    if row is None:
        raise AuditTamperedError("the log has no log id")
    return bytes(row[0])


def iter_rows(
    conn: sqlite3.Connection,
    where: str = "",
    args: tuple[object, ...] = (),
    *,
    order: Literal["seq", "ts_ns, seq"] = "seq",
) -> Iterator[Row]:
    cur = conn.execute(f"{_SELECT} {where} ORDER BY {order}", args)
    while batch := cur.fetchmany(4096):
        for values in batch:
            yield Row.from_db(values)


def read_checkpoints(conn: sqlite3.Connection) -> list[tuple[int, str]]:
    return [(int(s), str(n)) for s, n in conn.execute("SELECT size, note FROM checkpoints ORDER BY size")]
