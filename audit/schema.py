"""Forward-only numbered migrations for the log database and the keys database.

``PRAGMA user_version`` records the last migration applied. A database newer
than this code is refused rather than guessed at. The log tables refuse UPDATE
and DELETE through triggers: that stops application bugs, not an attacker who
can ``DROP TRIGGER`` (the Merkle tree and external checkpoints catch those).
"""

from __future__ import annotations

import sqlite3

from .errors import AuditConfigError

__all__ = ["KEYS_MIGRATIONS", "LOG_MIGRATIONS", "migrate_sync", "pending"]

_IMMUTABLE = """
CREATE TRIGGER {t}_no_update BEFORE UPDATE ON {t} BEGIN SELECT RAISE(ABORT, '{t} is append-only'); END;
CREATE TRIGGER {t}_no_delete BEFORE DELETE ON {t} BEGIN SELECT RAISE(ABORT, '{t} is append-only'); END;
"""

LOG_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE log_meta (key TEXT PRIMARY KEY, value BLOB NOT NULL) STRICT;
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY,
        ts_ns INTEGER NOT NULL,
        event_type TEXT NOT NULL,
        tenant_h BLOB NOT NULL,
        subject_h BLOB,
        request_h BLOB,
        kid BLOB NOT NULL,
        nonce BLOB NOT NULL,
        ct BLOB NOT NULL,
        ckid BLOB,
        cnonce BLOB,
        cct BLOB,
        prev_head BLOB NOT NULL,
        leaf BLOB NOT NULL
    ) STRICT;
    CREATE INDEX audit_request ON audit (request_h) WHERE request_h IS NOT NULL;
    CREATE INDEX audit_tenant ON audit (tenant_h, ts_ns);
    CREATE TABLE checkpoints (size INTEGER PRIMARY KEY, ts_ns INTEGER NOT NULL, note TEXT NOT NULL) STRICT;
    """
    + "".join(_IMMUTABLE.format(t=t) for t in ("log_meta", "audit", "checkpoints")),
)

KEYS_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE keystore_meta (key TEXT PRIMARY KEY, value BLOB NOT NULL) STRICT;
    CREATE TABLE deks (
        kid BLOB PRIMARY KEY,
        tenant_h BLOB NOT NULL,
        subject_h BLOB,
        month TEXT NOT NULL,
        wrapped BLOB NOT NULL,
        kek_id TEXT NOT NULL,
        reserved INTEGER NOT NULL,
        retired INTEGER NOT NULL DEFAULT 0,
        created_ns INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX deks_scope ON deks (tenant_h, subject_h, month);
    CREATE TABLE destroyed (
        kid BLOB PRIMARY KEY,
        tenant_h BLOB NOT NULL,
        subject_h BLOB,
        month TEXT NOT NULL,
        reason TEXT NOT NULL,
        destroyed_ns INTEGER NOT NULL
    ) STRICT;
    """,
)


def pending(current: int, migrations: tuple[str, ...], what: str) -> tuple[str, ...]:
    if current > len(migrations):
        raise AuditConfigError(f"{what} is at schema {current}, newer than this code ({len(migrations)})")
    return migrations[current:]


def migrate_sync(conn: sqlite3.Connection, migrations: tuple[str, ...], what: str) -> None:
    """Apply pending migrations, each in its own IMMEDIATE transaction (autocommit connection)."""
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            (current,) = conn.execute("PRAGMA user_version").fetchone()
            todo = pending(int(current), migrations, what)
            if not todo:
                conn.execute("COMMIT")
                return
            for statement in _statements(todo[0]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {int(current) + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def _statements(script: str) -> list[str]:
    """Split a migration into statements (trigger bodies contain ';', so use sqlite3.complete_statement)."""
    out: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                out.append(buf.strip())
            buf = ""
    if buf.strip():
        raise AuditConfigError(f"incomplete migration statement: {buf.strip()[:60]}")
    return out
