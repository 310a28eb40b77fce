"""``AuditLog``: the public, async face of the audit log the node calls.

``open()`` takes an exclusive lock (one writer per log), checks the keys, reads
the tree back and refuses to start when the database is behind or diverges from
a checkpoint it already exported. ``append()`` returns a sequence number only
once the record is committed and fsynced; when it cannot be, it raises
AuditUnavailableError (the node answers 503 and forwards nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hmac
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

import aiosqlite
import msgspec

from .checkpoint import CheckpointStore, load_signing_key, open_checkpoint, vkey
from .config import AuditConfig
from .crypto import GENESIS_HEAD, next_head
from .dbproc import WriteProcess
from .destroyed import DestroyedKeys, destroyed_keys, retention_cutoff
from .errors import (
    AuditError,
    AuditKeyError,
    AuditRollbackError,
    AuditTamperedError,
    AuditUnavailableError,
)
from .events import AuditEvent, AuditHit, AuditStats
from .kek import KeyEncryptionKey, kek_from_env, kek_from_file
from .keystore import Keyring
from .merkle import CompactRange
from .private import SQLITE_SIDECARS, check_private, private_dir
from .record import encode_parts
from .store import connect_ro, connect_rw, ensure_log_id, read_checkpoints
from .wal import WalCheckpointer
from .writer import ChainState, CheckpointPolicy, Command, PendingAppend, QueueLimits, Writer

__all__ = ["AuditLog", "check_files", "check_keys", "load_kek"]

_log = logging.getLogger("bastion.audit")


def load_kek(config: AuditConfig) -> KeyEncryptionKey:
    if config.kek_file is not None:
        return kek_from_file(config.kek_file)
    assert config.kek_env is not None  # __post_init__ guarantees exactly one
    return kek_from_env(config.kek_env)


def check_keys(config: AuditConfig) -> None:
    """The KEK and the signing key load (files present, private, well-formed): before a slow start-up."""
    load_kek(config)
    load_signing_key(config.signing_key_file)


def check_files(config: AuditConfig) -> None:
    """Refuse an existing file or folder of the log open to group or others (AuditPermissionError)."""
    paths = [os.path.dirname(os.path.abspath(config.path)), config.path + ".lock"]
    for db in (config.path, config.resolved_keys_path):
        paths += [os.path.dirname(os.path.abspath(db)), db, *(db + s for s in SQLITE_SIDECARS)]
    for path in paths:
        check_private(path)
    CheckpointStore(config.checkpoint_path).check()


class _Lock:
    """An exclusive flock beside the log: a second writer would fork the chain.

    The write process inherits it (audit.dbproc). A node that was killed leaves that
    process to finish the transaction in hand and exit, so a restart waits for the
    lock up to ``wait_s`` before it says another process is writing the log.
    """

    def __init__(self, path: str, wait_s: float = 5.0) -> None:
        private_dir(os.path.dirname(os.path.abspath(path)))
        check_private(path + ".lock")
        self.fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(self.fd)
                    msg = f"{path}: another process is writing this audit log"
                    raise AuditUnavailableError(msg) from None
                time.sleep(0.05)

    def release(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:  # once: a second close could hit a descriptor reused since
            with contextlib.suppress(OSError):
                os.close(fd)


def _startup_read(
    path: str, store: CheckpointStore
) -> tuple[bytes, list[tuple[int, str]], ChainState, dict[int, bytes]]:
    """Create/migrate the database and read the chain back, with roots at every checkpointed size."""
    conn = connect_rw(path)
    try:
        log_id = ensure_log_id(conn)
        stored = read_checkpoints(conn)
        wanted = {s for s, _ in stored}
        for note in store.read_all():
            lines = note.split("\n")
            if len(lines) > 1 and lines[1].isdigit():
                wanted.add(int(lines[1]))
        state, roots = _read_chain(conn, wanted)
    finally:
        conn.close()
    return log_id, stored, state, roots


def _read_chain(conn: Any, wanted: set[int]) -> tuple[ChainState, dict[int, bytes]]:
    tree, head, roots = CompactRange(), GENESIS_HEAD, {}
    if 0 in wanted:
        roots[0] = tree.root()
    expected = 0
    cur = conn.execute("SELECT seq, prev_head, leaf FROM audit ORDER BY seq")
    while batch := cur.fetchmany(8192):
        for seq, prev_head, leaf in batch:
            if seq != expected or bytes(prev_head) != head:
                raise AuditTamperedError(f"the chain breaks at seq {seq}; run `bastion audit verify`")
            head = next_head(head, bytes(leaf))
            tree.append(bytes(leaf))
            expected += 1
            if tree.size in wanted:
                roots[tree.size] = tree.root()
    return ChainState(tree.size, head, tree), roots


def _destroyed_in_log(config: AuditConfig, keyring: Keyring, log_id: bytes, now_ns: int) -> DestroyedKeys:
    months = config.retention_months
    conn = connect_ro(config.path)
    try:
        cutoff = None if months is None else retention_cutoff(now_ns, months)
        return destroyed_keys(conn, keyring, log_id, expired_before=cutoff)
    finally:
        conn.close()


class AuditLog:
    def __init__(
        self,
        *,
        config: AuditConfig,
        lock: _Lock,
        reader: aiosqlite.Connection,
        keyring: Keyring,
        writer: Writer,
        clock: Callable[[], int],
    ) -> None:
        self.config = config
        self._lock = lock
        self._reader = reader
        self._keyring = keyring
        self._writer = writer
        self._clock = clock
        self._task = asyncio.get_running_loop().create_task(writer.run(), name="audit-writer")
        self._closed = False
        #: data keys this open refused: the log says they were destroyed, the keys database held them
        self.refused_keys: list[str] = []

    @classmethod
    async def open(cls, config: AuditConfig, *, clock: Callable[[], int] = time.time_ns) -> AuditLog:
        """Open (creating if new) the log; raises AuditKeyError, AuditRollbackError, AuditTamperedError,
        AuditPermissionError (a file or folder of the log open to group or others)."""
        check_files(config)
        lock = await asyncio.to_thread(_Lock, config.path)  # may wait for a dying node's write process
        try:
            return await cls._open_locked(config, lock, clock)
        except sqlite3.Error as exc:
            lock.release()
            raise AuditUnavailableError(f"cannot open the audit log {config.path}: {exc}") from exc
        except BaseException:
            lock.release()
            raise

    @classmethod
    async def _open_locked(cls, config: AuditConfig, lock: _Lock, clock: Callable[[], int]) -> AuditLog:
        kek = load_kek(config)
        signer = load_signing_key(config.signing_key_file)
        store = CheckpointStore(config.checkpoint_path)
        public = signer.public_key()
        log_id, stored, state, roots = await asyncio.to_thread(_startup_read, config.path, store)
        checkpoints = [open_checkpoint(n, config.origin, public) for _, n in stored]
        external = [open_checkpoint(n, config.origin, public) for n in store.read_all()]
        for cp in checkpoints + external:
            if cp.size > state.size:
                raise AuditRollbackError(
                    f"the log has {state.size} records but a checkpoint it signed has {cp.size}: "
                    "the database was truncated or rolled back; refusing to start"
                )
            if not hmac.compare_digest(roots[cp.size], cp.root):
                raise AuditTamperedError(
                    f"the log's root at size {cp.size} differs from its signed checkpoint"
                )
        keyring = await asyncio.to_thread(
            Keyring.open,
            config.resolved_keys_path,
            kek,
            log_id,
            allow_create=state.size == 0,
            max_uses=config.dek_max_uses,
        )
        proc: WriteProcess | None = None
        reader: aiosqlite.Connection | None = None
        try:
            destroyed = await asyncio.to_thread(_destroyed_in_log, config, keyring, log_id, clock())
            destroyed.check()
            proc = await WriteProcess.start(config.path, lock.fd)
            reader = await aiosqlite.connect(config.path, isolation_level=None)
            await reader.execute("PRAGMA query_only=ON")
        except BaseException:
            if proc is not None:
                await proc.kill()
            if reader is not None:
                await reader.close()
            keyring.close()
            raise
        last = None
        if checkpoints:
            note = stored[-1][1]
            last = (checkpoints[-1].size, time.time(), len(note.encode()))
        writer = Writer(
            proc=proc,
            keyring=keyring,
            log_id=log_id,
            state=state,
            checkpoints=CheckpointPolicy(
                signer=signer,
                origin=config.origin,
                store=store,
                every_records=config.checkpoint_every_records,
                every_s=config.checkpoint_every_s,
            ),
            limits=QueueLimits(queue_max=config.queue_max, max_batch=config.max_batch),
            last_checkpoint=last,
            wal=WalCheckpointer(config.path),
        )
        log = cls(config=config, lock=lock, reader=reader, keyring=keyring, writer=writer, clock=clock)
        try:
            if destroyed.kids:
                await log._refuse_resurrected(destroyed)
            if config.retention_months is not None:
                await log.apply_retention()
        except BaseException:
            await log.aclose()
            raise
        return log

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    @property
    def verifier_key(self) -> str:
        """The signed-note verifier key for this log's checkpoints (give it to auditors)."""
        return vkey(self.config.origin, load_signing_key(self.config.signing_key_file).public_key())

    async def append(self, event: AuditEvent) -> int:
        """Record ``event``; returns its sequence number once committed and fsynced."""
        if self._task.done():
            raise AuditUnavailableError("audit writer is not running")
        request_id = event.meta.get("request_id")
        try:
            plaintext = encode_parts(event.tenant, event.meta, event.subject, event.content)
        except (TypeError, OverflowError, msgspec.EncodeError) as exc:  # e.g. an int beyond 64 bits
            raise AuditError(f"audit event cannot be encoded: {exc}") from exc
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._writer.submit(
            PendingAppend(
                self._clock(),
                event.type,
                event.tenant,
                event.subject,
                request_id if isinstance(request_id, str) else None,
                plaintext,
                future,
            )
        )
        return await future

    async def find(self, *, request_id: str, tenant: str) -> list[AuditHit]:
        """Records of ``tenant`` carrying ``meta["request_id"] == request_id`` (durable ones only)."""
        request_h = self._keyring.request_id(tenant, request_id)
        cur = await self._reader.execute(
            "SELECT seq, event_type, ts_ns FROM audit WHERE request_h = ? ORDER BY seq", (request_h,)
        )
        return [AuditHit(seq=int(s), type=str(t), ts_ns=int(ts)) for s, t, ts in await cur.fetchall()]

    async def _command(self, action: Callable[[Keyring], list[tuple[str, dict[str, Any]]]]) -> list[int]:
        future: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._writer.submit(Command(action, future))
        return await future

    async def shred(self, tenant: str, subject: str | None = None) -> list[int]:
        """Crypto-shred a tenant's (or one subject's) data keys; returns the destruction records' seqs."""
        if not tenant:
            raise AuditError("the log's own records (tenant '') cannot be shredded")

        def action(kr: Keyring) -> list[tuple[str, dict[str, Any]]]:
            tenant_h = kr.tenant_id(tenant)
            subject_h = None if subject is None else kr.subject_id(tenant, subject)
            gone = kr.destroy(tenant_h, subject_h, "shred")
            return [
                (
                    "key.destroyed",
                    {
                        "reason": "shred",
                        "scope": "tenant" if subject is None else "subject",
                        "tenant_h": tenant_h.hex(),
                        "subject_h": None if subject_h is None else subject_h.hex(),
                        "kids": [k.hex() for k, _ in gone],
                        "months": sorted({m for _, m in gone}),
                    },
                )
            ]

        return await self._command(action)

    async def _refuse_resurrected(self, destroyed: DestroyedKeys) -> None:
        """Delete data keys the log says were destroyed (a restored keys database); record it."""

        def action(kr: Keyring) -> list[tuple[str, dict[str, Any]]]:
            gone = kr.refuse(destroyed.kids.keys(), "refused")
            if not gone:
                return []
            self.refused_keys = [k.hex() for k, _ in gone]
            _log.warning(
                "audit: the keys database held %d data key(s) that the log records as destroyed "
                "(a restored backup?); refused and deleted: %s",
                len(gone),
                ", ".join(self.refused_keys),
            )
            return [
                (
                    "key.refused",
                    {
                        "reason": "destroyed-in-log",
                        "kids": self.refused_keys,
                        "destroyed_at": sorted({destroyed.kids[k] for k, _ in gone}),
                        "months": sorted({m for _, m in gone}),
                    },
                )
            ]

        await self._command(action)

    async def apply_retention(self) -> list[int]:
        """Destroy the keys of whole months older than ``retention_months``; logs what expired."""
        months = self.config.retention_months
        if months is None:
            return []
        cutoff = retention_cutoff(self._clock(), months)

        def action(kr: Keyring) -> list[tuple[str, dict[str, Any]]]:
            gone = kr.expire_before(cutoff, "retention")
            if not gone:
                return []
            return [
                (
                    "retention.expired",
                    {
                        "before": cutoff,
                        "months": sorted({m for _, m in gone}),
                        "kids": [k.hex() for k, _ in gone],
                    },
                )
            ]

        return await self._command(action)

    async def rotate_kek(self, new_kek: KeyEncryptionKey) -> list[int]:
        """Rewrap every data key under ``new_kek`` (point the config at it before the next start)."""

        def action(kr: Keyring) -> list[tuple[str, dict[str, Any]]]:
            old = kr.kek_id
            count = kr.rewrap(new_kek)
            return [
                (
                    "key.rotated",
                    {"kind": "kek", "old_kek_id": old, "new_kek_id": new_kek.kek_id, "rewrapped": count},
                )
            ]

        if not isinstance(new_kek, KeyEncryptionKey):
            raise AuditKeyError("not a KeyEncryptionKey")
        return await self._command(action)

    @property
    def accepting(self) -> bool:
        """Whether appends can succeed now: the writer runs, has not failed closed, is not closed."""
        w = self._writer
        return not self._task.done() and w.failed is None and not w.closed

    def stats(self) -> AuditStats:
        w = self._writer
        last = w.last_checkpoint
        return AuditStats(
            queue_depth=w.queue_depth,
            queue_max=w.queue_max,
            records=w.state.size,
            last_checkpoint_size=None if last is None else last[0],
            last_checkpoint_at=None if last is None else last[1],
            last_checkpoint_bytes=None if last is None else last[2],
            checkpoint_errors=w.checkpoint_errors,
            failed=w.failed is not None,
            commits=w.commits,
            wal_checkpoints=w.wal.runs,
            wal_checkpoint_errors=w.wal.errors,
        )

    async def aclose(self) -> None:
        """Flush queued records, write a final checkpoint, close everything (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            if not self._task.done():
                await self._writer.stop()
            await self._task
        finally:
            try:
                await self._writer.close()
            finally:
                await self._reader.close()
            self._keyring.close()
            self._lock.release()
