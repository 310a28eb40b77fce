"""The keys database: data keys (DEKs) wrapped under the KEK, use counts, destruction.

Kept in its own mutable SQLite file beside the append-only log, because erasure
must really delete: destroying a DEK deletes its row with ``secure_delete`` on
and truncates the WAL, leaving only a tombstone (kid, scope, when, why) so that
verification reports those payloads as SHREDDED rather than TAMPERED.

DEKs are scoped per (tenant, month) for metadata and per (tenant, subject,
month) for content when a data subject is given. Uses are counted per DEK and
reserved in durable blocks, so a crash can only over-count; a DEK retires
(decrypt-only) after ``max_uses`` encryptions, far below the 2^32 random-nonce
limit of AES-GCM.
"""

from __future__ import annotations

import enum
import sqlite3
import struct
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .crypto import KeyedIds, new_key, new_kid
from .errors import AuditKeyError
from .kek import KeyEncryptionKey
from .private import private_sqlite
from .schema import KEYS_MIGRATIONS, migrate_sync

__all__ = ["KeyState", "Keyring", "month_of"]

_RESERVE_BLOCK = 65536


def month_of(ts_ns: int) -> str:
    tm = time.gmtime(ts_ns // 1_000_000_000)
    return f"{tm.tm_year:04d}-{tm.tm_mon:02d}"


class KeyState(enum.Enum):
    OK = "ok"
    SHREDDED = "shredded"
    MISSING = "missing"


def _lp(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


def _dek_context(log_id: bytes, kid: bytes, tenant_h: bytes, subject_h: bytes | None, month: str) -> bytes:
    subject = b"\x00" if subject_h is None else b"\x01" + _lp(subject_h)
    return b"bastion-dek\x00" + _lp(log_id) + _lp(kid) + _lp(tenant_h) + subject + month.encode()


@dataclass(slots=True)
class _Active:
    kid: bytes
    aead: AESGCM
    uses: int
    reserved: int


Scope = tuple[bytes, bytes | None, str]


class Keyring:
    """Owns keys.db; used by one task at a time (the writer, or a CLI command)."""

    def __init__(
        self, conn: sqlite3.Connection, kek: KeyEncryptionKey, log_id: bytes, index_key: bytes, max_uses: int
    ) -> None:
        self._conn = conn
        self._kek = kek
        self._log_id = log_id
        self._index_key = index_key
        self._keyed_id = KeyedIds(index_key)
        self._max_uses = max_uses
        self._active: dict[Scope, _Active] = {}
        self._by_kid: dict[bytes, AESGCM] = {}
        self._ids: dict[tuple[bytes, ...] | tuple[object, ...], bytes] = {}
        self._request_ids: dict[tuple[str, str], bytes] = {}
        #: data keys created since the writer last took them, for its ``key.created`` records
        self._created: list[dict[str, Any]] = []
        #: keys a reader must treat as destroyed (the log says so; see ``treat_as_destroyed``)
        self._refused: set[bytes] = set()

    @classmethod
    def open(
        cls, path: str, kek: KeyEncryptionKey, log_id: bytes, *, allow_create: bool, max_uses: int = 2**30
    ) -> Keyring:
        private_sqlite(path)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA secure_delete=ON")
            conn.execute("PRAGMA busy_timeout=5000")
            migrate_sync(conn, KEYS_MIGRATIONS, f"keys database {path}")
            index_key = cls._bind(conn, kek, log_id, allow_create=allow_create, path=path)
        except BaseException:
            conn.close()
            raise
        return cls(conn, kek, log_id, index_key, max_uses)

    @staticmethod
    def _bind(
        conn: sqlite3.Connection, kek: KeyEncryptionKey, log_id: bytes, *, allow_create: bool, path: str
    ) -> bytes:
        meta = dict(conn.execute("SELECT key, value FROM keystore_meta").fetchall())
        context = b"bastion-index-key\x00" + log_id
        if not meta:
            if not allow_create:
                raise AuditKeyError(f"keys database {path} is empty, but the log already has records")
            index_key = new_key()
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO keystore_meta VALUES (?, ?)",
                [
                    ("log_id", log_id),
                    ("kek_id", kek.kek_id.encode()),
                    ("index_key", kek.wrap(index_key, context)),
                ],
            )
            conn.execute("COMMIT")
            return index_key
        if meta.get("log_id") != log_id:
            raise AuditKeyError(f"keys database {path} belongs to another log")
        stored = bytes(meta["kek_id"]).decode()
        if stored != kek.kek_id:
            raise AuditKeyError(
                f"keys database is wrapped under KEK {stored}; the configured KEK is {kek.kek_id}"
            )
        return kek.unwrap(bytes(meta["index_key"]), context)

    @property
    def kek_id(self) -> str:
        return self._kek.kek_id

    def close(self) -> None:
        self._conn.close()

    # -- searchable ids -------------------------------------------------------------------------

    def tenant_id(self, tenant: str) -> bytes:
        return self._cached(b"tenant", tenant)

    def subject_id(self, tenant: str, subject: str) -> bytes:
        return self._cached(b"subject", tenant, subject)

    def _cached(self, purpose: bytes, *parts: str) -> bytes:
        key = (purpose, *parts)
        found = self._ids.get(key)
        if found is None:
            if len(self._ids) >= 65536:
                self._ids.clear()
            found = self._ids[key] = self._keyed_id(purpose, *parts)
        return found

    def request_id(self, tenant: str, request_id: str) -> bytes:
        # A request's start and end records carry the same id, usually within seconds: a small
        # cache spares the end record its HMAC without holding ids of long-finished requests.
        key = (tenant, request_id)
        found = self._request_ids.get(key)
        if found is None:
            if len(self._request_ids) >= 4096:
                self._request_ids.clear()
            found = self._request_ids[key] = self._keyed_id(b"request", tenant, request_id)
        return found

    # -- encryption and decryption keys ----------------------------------------------------------

    def encrypting_key(self, tenant_h: bytes, subject_h: bytes | None, month: str) -> tuple[bytes, AESGCM]:
        """The scope's primary DEK, counting one use (creating or rotating it as needed)."""
        scope = (tenant_h, subject_h, month)
        active = self._active.get(scope) or self._load_active(scope)
        if active is None or active.uses >= self._max_uses:
            retired = None
            if active is not None:
                self._conn.execute("UPDATE deks SET retired = 1 WHERE kid = ?", (active.kid,))
                retired = active.kid
            active = self._create(scope)
            self._created.append(
                {
                    "kid": active.kid.hex(),
                    "tenant_h": tenant_h.hex(),
                    "subject_h": None if subject_h is None else subject_h.hex(),
                    "month": month,
                    "kek_id": self._kek.kek_id,
                    # a scope's first key, or the successor of one that reached its use limit
                    "reason": "new-scope" if retired is None else "use-limit",
                    "replaces": None if retired is None else retired.hex(),
                }
            )
        if active.uses >= active.reserved:
            active.reserved = min(active.uses + _RESERVE_BLOCK, self._max_uses)
            self._conn.execute("UPDATE deks SET reserved = ? WHERE kid = ?", (active.reserved, active.kid))
        active.uses += 1
        return active.kid, active.aead

    def take_created(self) -> list[dict[str, Any]]:
        """What ``key.created`` records must say: the data keys created since the last call."""
        created = self._created
        if created:  # called once per record sealed: no new list when there is nothing to take
            self._created = []
        return created

    def _load_active(self, scope: Scope) -> _Active | None:
        tenant_h, subject_h, month = scope
        row = self._conn.execute(
            "SELECT kid, wrapped, reserved FROM deks WHERE tenant_h = ? AND subject_h IS ? AND month = ?"
            " AND retired = 0 ORDER BY created_ns DESC LIMIT 1",
            (tenant_h, subject_h, month),
        ).fetchone()
        if row is None:
            return None
        kid, wrapped, reserved = bytes(row[0]), bytes(row[1]), int(row[2])
        aead = AESGCM(self._kek.unwrap(wrapped, _dek_context(self._log_id, kid, *scope)))
        # Uses since the last reservation were not recorded: count the whole block as spent.
        active = _Active(kid, aead, reserved, reserved)
        self._active[scope] = active
        self._by_kid[kid] = aead
        return active

    def _create(self, scope: Scope) -> _Active:
        tenant_h, subject_h, month = scope
        kid, key = new_kid(), new_key()
        reserved = min(_RESERVE_BLOCK, self._max_uses)
        wrapped = self._kek.wrap(key, _dek_context(self._log_id, kid, *scope))
        self._conn.execute(
            "INSERT INTO deks (kid, tenant_h, subject_h, month, wrapped, kek_id, reserved, created_ns)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (kid, tenant_h, subject_h, month, wrapped, self._kek.kek_id, reserved, time.time_ns()),
        )
        active = _Active(kid, AESGCM(key), 0, reserved)
        self._active[scope] = active
        self._by_kid[kid] = active.aead
        return active

    def decrypting_key(self, kid: bytes) -> tuple[KeyState, AESGCM | None]:
        if kid in self._refused:
            return KeyState.SHREDDED, None
        aead = self._by_kid.get(kid)
        if aead is not None:
            return KeyState.OK, aead
        row = self._conn.execute(
            "SELECT wrapped, tenant_h, subject_h, month FROM deks WHERE kid = ?", (kid,)
        ).fetchone()
        if row is None:
            gone = self._conn.execute("SELECT 1 FROM destroyed WHERE kid = ?", (kid,)).fetchone()
            return (KeyState.SHREDDED if gone else KeyState.MISSING), None
        subject = None if row[2] is None else bytes(row[2])
        context = _dek_context(self._log_id, kid, bytes(row[1]), subject, str(row[3]))
        aead = AESGCM(self._kek.unwrap(bytes(row[0]), context))
        self._by_kid[kid] = aead
        return KeyState.OK, aead

    # -- erasure, retention, rotation ------------------------------------------------------------

    def destroy(self, tenant_h: bytes, subject_h: bytes | None, reason: str) -> list[tuple[bytes, str]]:
        """Crypto-shred a tenant's (or one subject's) DEKs; returns (kid, month) destroyed."""
        if subject_h is None:
            return self._destroy_where("tenant_h = ?", (tenant_h,), reason)
        return self._destroy_where("tenant_h = ? AND subject_h = ?", (tenant_h, subject_h), reason)

    def expire_before(self, month: str, reason: str) -> list[tuple[bytes, str]]:
        return self._destroy_where("month < ?", (month,), reason)

    def refuse(self, kids: Collection[bytes], reason: str) -> list[tuple[bytes, str]]:
        """Destroy these data keys if this database holds them (a restored copy that predates their
        destruction); returns those it held, as ``destroy`` does."""
        out: list[tuple[bytes, str]] = []
        ordered = sorted(kids)
        for i in range(0, len(ordered), 500):  # within SQLite's bound-parameter limit
            chunk = tuple(ordered[i : i + 500])
            out += self._destroy_where(f"kid IN ({','.join('?' * len(chunk))})", chunk, reason)
        return out

    def treat_as_destroyed(self, kids: Collection[bytes]) -> None:
        """For a read-only reader: these keys answer SHREDDED, whatever the database holds."""
        self._refused.update(kids)
        for kid in kids:
            self._by_kid.pop(kid, None)

    def held(self, kids: Collection[bytes]) -> set[bytes]:
        """Which of ``kids`` this database holds as usable data keys."""
        found: set[bytes] = set()
        ordered = sorted(kids)
        for i in range(0, len(ordered), 500):
            chunk = tuple(ordered[i : i + 500])
            rows = self._conn.execute(
                f"SELECT kid FROM deks WHERE kid IN ({','.join('?' * len(chunk))})",  # noqa: S608
                chunk,
            ).fetchall()
            found.update(bytes(r[0]) for r in rows)
        return found - self._refused

    def known(self) -> set[bytes]:
        """Every key id this database knows: usable, retired or destroyed."""
        rows = self._conn.execute("SELECT kid FROM deks UNION SELECT kid FROM destroyed").fetchall()
        return {bytes(r[0]) for r in rows}

    def _destroy_where(self, where: str, args: tuple[object, ...], reason: str) -> list[tuple[bytes, str]]:
        now = time.time_ns()
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            rows = self._conn.execute(
                f"SELECT kid, tenant_h, subject_h, month FROM deks WHERE {where}",  # noqa: S608
                args,
            ).fetchall()
            self._conn.executemany(
                "INSERT OR IGNORE INTO destroyed VALUES (?, ?, ?, ?, ?, ?)",
                [(r[0], r[1], r[2], r[3], reason, now) for r in rows],
            )
            self._conn.executemany("DELETE FROM deks WHERE kid = ?", [(r[0],) for r in rows])
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        # secure_delete zeroed the freed cells; truncating the WAL removes its copies too.
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        destroyed = [(bytes(r[0]), str(r[3])) for r in rows]
        gone = {kid for kid, _ in destroyed}
        self._active = {s: a for s, a in self._active.items() if a.kid not in gone}
        for kid in gone:
            self._by_kid.pop(kid, None)
        return destroyed

    def rewrap(self, new_kek: KeyEncryptionKey) -> int:
        """Rewrap every DEK and the index key under a new KEK; the data keys themselves are unchanged."""
        context = b"bastion-index-key\x00" + self._log_id
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            rows = self._conn.execute("SELECT kid, tenant_h, subject_h, month, wrapped FROM deks").fetchall()
            for kid, tenant_h, subject_h, month, wrapped in rows:
                ctx = _dek_context(
                    self._log_id,
                    bytes(kid),
                    bytes(tenant_h),
                    None if subject_h is None else bytes(subject_h),
                    str(month),
                )
                key = self._kek.unwrap(bytes(wrapped), ctx)
                self._conn.execute(
                    "UPDATE deks SET wrapped = ?, kek_id = ? WHERE kid = ?",
                    (new_kek.wrap(key, ctx), new_kek.kek_id, kid),
                )
            self._conn.execute(
                "UPDATE keystore_meta SET value = ? WHERE key = 'index_key'",
                (new_kek.wrap(self._index_key, context),),
            )
            self._conn.execute(
                "UPDATE keystore_meta SET value = ? WHERE key = 'kek_id'", (new_kek.kek_id.encode(),)
            )
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._kek = new_kek
        return len(rows)
