"""The node's API keys: ``<data_dir>/api-keys.db``, a 0600 SQLite file beside the node's other data.

``bastion keys create|revoke|list`` write and read it; the node reads it at
start-up and at every reload (``node.reload``), so operators never hand-edit
``node.toml`` for a key. It holds each key's SHA-256 only (the key itself is
printed once by ``keys create``), its tenant, when it was made, when it expires
and when it was revoked. A revoked key stays listed, and stops working at the
next reload. The node records when each key was last used, in memory on the
request path, written here every few seconds and at shutdown
(``record_uses``). Keys may still be listed in ``node.toml`` (``keys = [...]``);
the two sets are one set of ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path

import msgspec

from audit import private_sqlite

from .periodic import every
from .tenancy import KeyUses, NewKey

__all__ = ["KEYS_DB", "KeyStore", "KeyStoreError", "StoredKey", "flush_key_uses"]

_log = logging.getLogger("bastion.keys")

KEYS_DB = "api-keys.db"

# Forward-only: MIGRATIONS[n] takes user_version n to n + 1.
_MIGRATIONS = (
    """
    CREATE TABLE keys (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        created REAL NOT NULL,
        expires REAL,
        revoked REAL
    );
    CREATE TABLE last_used (id TEXT PRIMARY KEY, at REAL NOT NULL);
    """,
)


class KeyStoreError(Exception):
    """The API keys database cannot be read or written; the message names it."""


class StoredKey(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    tenant: str
    sha256: str
    created: float
    expires: float | None = None
    revoked: float | None = None
    last_used: float | None = None

    def expired(self, now: float) -> bool:
        return self.expires is not None and now >= self.expires


class KeyStore:
    """``api-keys.db``: short connections, one per operation (the CLI and a running node share it)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> KeyStore:
        return cls(data_dir / KEYS_DB)

    @contextlib.contextmanager
    def _connect(self, *, create: bool) -> Iterator[sqlite3.Connection]:
        try:
            if create:
                private_sqlite(self.path)  # 0600 in a 0700 folder, before SQLite opens it
            conn = sqlite3.connect(f"file:{self.path}?mode={'rwc' if create else 'ro'}", uri=True, timeout=10)
        except (sqlite3.Error, OSError) as exc:
            raise KeyStoreError(f"{self.path}: cannot open the API keys database: {exc}") from None
        try:
            with conn:
                if create:
                    _migrate(conn)
                yield conn
        except sqlite3.Error as exc:
            raise KeyStoreError(f"{self.path}: {exc}") from None
        finally:
            conn.close()

    def add(self, tenant: str, key: NewKey, *, expires: float | None, now: float | None = None) -> StoredKey:
        stored = StoredKey(
            id=key.key_id,
            tenant=tenant,
            sha256=key.sha256,
            created=time.time() if now is None else now,
            expires=expires,
        )
        with self._connect(create=True) as conn:
            conn.execute(
                "INSERT INTO keys (id, tenant, sha256, created, expires) VALUES (?, ?, ?, ?, ?)",
                (stored.id, stored.tenant, stored.sha256, stored.created, stored.expires),
            )
        return stored

    def revoke(self, key_id: str, *, now: float | None = None) -> StoredKey | None:
        """Mark ``key_id`` revoked (kept, for the record); None when no such key is stored."""
        with self._connect(create=True) as conn:
            conn.execute(
                "UPDATE keys SET revoked = ? WHERE id = ? AND revoked IS NULL",
                (time.time() if now is None else now, key_id),
            )
        return next((k for k in self.all() if k.id == key_id), None)

    def all(self) -> list[StoredKey]:
        """Every stored key, revoked ones included, oldest first; none when the file is absent."""
        if not self.path.exists():
            return []
        with self._connect(create=False) as conn:
            if _version(conn) < len(_MIGRATIONS):
                return []  # made by a node that was stopped before it wrote a key
            rows = conn.execute(
                "SELECT k.id, k.tenant, k.sha256, k.created, k.expires, k.revoked, u.at "
                "FROM keys k LEFT JOIN last_used u ON u.id = k.id ORDER BY k.created, k.id"
            ).fetchall()
        return [
            StoredKey(
                id=r[0], tenant=r[1], sha256=r[2], created=r[3], expires=r[4], revoked=r[5], last_used=r[6]
            )
            for r in rows
        ]

    def active(self) -> list[StoredKey]:
        """The keys a node loads: every one not revoked (expiry is checked per request)."""
        return [k for k in self.all() if k.revoked is None]

    def last_used(self) -> dict[str, float]:
        """When each key (stored or from ``node.toml``) was last used, as the node last wrote it."""
        if not self.path.exists():
            return {}
        with self._connect(create=False) as conn:
            if _version(conn) < len(_MIGRATIONS):
                return {}
            return {str(i): float(at) for i, at in conn.execute("SELECT id, at FROM last_used")}

    def record_uses(self, uses: Mapping[str, float]) -> None:
        if not uses:
            return
        with self._connect(create=True) as conn:
            conn.executemany(
                "INSERT INTO last_used (id, at) VALUES (?, ?) "
                "ON CONFLICT (id) DO UPDATE SET at = max(at, excluded.at)",
                list(uses.items()),
            )


def _version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _migrate(conn: sqlite3.Connection) -> None:
    version = _version(conn)
    for n, script in enumerate(_MIGRATIONS[version:], start=version):
        for statement in filter(str.strip, script.split(";")):
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {n + 1}")


@contextlib.asynccontextmanager
async def flush_key_uses(store: KeyStore, uses: KeyUses, *, interval_s: float = 5.0) -> AsyncIterator[None]:
    """Write the keys' last uses every ``interval_s`` while the node serves, and once at the end."""

    async def flush() -> None:
        taken = uses.take()
        try:
            await asyncio.to_thread(store.record_uses, taken)
        except KeyStoreError:
            _log.exception("could not record API key uses (kept for the next try)")
            uses.give_back(taken)

    async with every(interval_s, flush, name="bastion-key-uses", final=True):
        yield
