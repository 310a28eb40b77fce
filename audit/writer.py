"""The single writer task: it alone owns the write connection, seals records and group-commits.

Appends wait on a bounded queue. The writer takes whatever has queued up (up to
``max_batch``) while the previous commit was in flight, seals each record in
sequence order (each one's associated data names the previous chain head), and
commits them in one ``BEGIN IMMEDIATE`` transaction with ``synchronous=FULL``:
one fsync for the whole group. Only then are the appenders' futures resolved.
A failed commit fails every append in its group with AuditUnavailableError; the
writer then re-reads the log's size, so a commit that did reach the disk is
adopted and anything else stops the writer (fail closed).

Checkpoints are signed after a commit, so they only ever cover durable sizes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiosqlite
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .checkpoint import Checkpoint, CheckpointStore, sign_checkpoint
from .crypto import next_head
from .errors import AuditUnavailableError
from .keystore import Keyring, month_of
from .merkle import CompactRange
from .record import INSERT_SQL, Plaintext, Row, encode_parts, seal_row

__all__ = ["ChainState", "Command", "PendingAppend", "Writer"]

_log = logging.getLogger("bastion.audit")


@dataclass(slots=True)
class ChainState:
    size: int
    head: bytes
    tree: CompactRange


@dataclass(slots=True)
class PendingAppend:
    ts_ns: int
    event_type: str
    tenant: str
    subject: str | None
    request_id: str | None
    plaintext: Plaintext
    future: asyncio.Future[int]


@dataclass(slots=True)
class Command:
    """Key work run inside the writer (so it is serialized with appends); returns system events."""

    action: Callable[[Keyring], list[tuple[str, dict[str, Any]]]]
    future: asyncio.Future[list[int]]
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


_STOP = object()


class Writer:
    def __init__(
        self,
        *,
        conn: aiosqlite.Connection,
        keyring: Keyring,
        log_id: bytes,
        state: ChainState,
        signer: Ed25519PrivateKey,
        origin: str,
        store: CheckpointStore,
        every_records: int,
        every_s: float,
        queue_max: int,
        max_batch: int,
        last_checkpoint: tuple[int, float, int] | None,
    ) -> None:
        self._conn = conn
        self._keyring = keyring
        self._log_id = log_id
        self.state = state
        self._signer = signer
        self._origin = origin
        self._store = store
        self._every_records = every_records
        self._every_s = every_s
        self._max_batch = max_batch
        self.queue: asyncio.Queue[object] = asyncio.Queue(maxsize=queue_max)
        self.last_checkpoint = last_checkpoint  # (size, unix time, note bytes)
        self._last_checkpoint_mono = time.monotonic()
        self.checkpoint_errors = 0
        self.failed: AuditUnavailableError | None = None
        self.closed = False

    # -- producer side ----------------------------------------------------------------------------

    def submit(self, item: PendingAppend | Command) -> None:
        if self.failed is not None:
            raise AuditUnavailableError(f"audit log writer has stopped: {self.failed}")
        if self.closed:
            raise AuditUnavailableError("audit log is closed")
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            raise AuditUnavailableError(
                f"audit queue is full ({self.queue.maxsize} records waiting)"
            ) from None

    async def stop(self) -> None:
        self.closed = True
        await self.queue.put(_STOP)

    # -- the task ---------------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            while True:
                item = await self._next()
                if item is None:
                    await self._maybe_checkpoint(timer=True)
                    continue
                batch: list[object] = [item]
                while len(batch) < self._max_batch:
                    try:
                        batch.append(self.queue.get_nowait())
                    except asyncio.QueueEmpty:
                        break
                stop = await self._process(batch)
                await self._maybe_checkpoint(timer=False)
                if stop:
                    break
            if self.last_checkpoint is None or self.last_checkpoint[0] != self.state.size:
                await self._checkpoint()
        finally:
            self._fail_queued(AuditUnavailableError("audit log is closed"))

    async def _next(self) -> object | None:
        wait = self._every_s - (time.monotonic() - self._last_checkpoint_mono)
        if wait <= 0 and self._checkpoint_due_size() > 0:
            return None
        try:
            async with asyncio.timeout(max(wait, 0.001) if self._checkpoint_due_size() > 0 else None):
                return await self.queue.get()
        except TimeoutError:
            return None

    def _checkpoint_due_size(self) -> int:
        last = 0 if self.last_checkpoint is None else self.last_checkpoint[0]
        return self.state.size - last

    async def _process(self, batch: list[object]) -> bool:
        appends: list[PendingAppend] = []
        for item in batch:
            if isinstance(item, PendingAppend):
                appends.append(item)
                continue
            if appends:
                await self._commit(appends)
                appends = []
            if item is _STOP:
                self._fail_queued(AuditUnavailableError("audit log is closed"))
                return True
            if isinstance(item, Command):
                await self._run_command(item)
        if appends:
            await self._commit(appends)
        return False

    def _fail_queued(self, exc: AuditUnavailableError) -> None:
        while True:
            try:
                item = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            if isinstance(item, PendingAppend | Command) and not item.future.done():
                item.future.set_exception(exc)

    async def _run_command(self, cmd: Command) -> None:
        try:
            events = cmd.action(self._keyring)
        except Exception as exc:
            if not cmd.future.done():
                cmd.future.set_exception(exc)
            return
        if not events:
            if not cmd.future.done():
                cmd.future.set_result([])
            return
        loop = asyncio.get_running_loop()
        appends = []
        for event_type, meta in events:
            fut: asyncio.Future[int] = loop.create_future()
            appends.append(
                PendingAppend(
                    time.time_ns(), event_type, "", None, None, encode_parts("", meta, None, None), fut
                )
            )
        await self._commit(appends)
        try:
            seqs = [a.future.result() for a in appends]
        except Exception as exc:
            if not cmd.future.done():
                cmd.future.set_exception(exc)
            return
        if not cmd.future.done():
            cmd.future.set_result(seqs)

    # -- sealing and committing -------------------------------------------------------------------

    def _seal(self, appends: list[PendingAppend]) -> tuple[list[Row], bytes]:
        kr, log_id = self._keyring, self._log_id
        rows: list[Row] = []
        seq, head = self.state.size, self.state.head
        for a in appends:
            tenant_h = kr.tenant_id(a.tenant)
            subject_h = None if a.subject is None else kr.subject_id(a.tenant, a.subject)
            request_h = None if a.request_id is None else kr.request_id(a.tenant, a.request_id)
            month = month_of(a.ts_ns)
            meta_key = kr.encrypting_key(tenant_h, None, month)
            content_key = None
            if a.plaintext.content is not None:
                content_key = meta_key if subject_h is None else kr.encrypting_key(tenant_h, subject_h, month)
            row = seal_row(
                log_id,
                seq=seq,
                ts_ns=a.ts_ns,
                event_type=a.event_type,
                tenant_h=tenant_h,
                subject_h=subject_h,
                request_h=request_h,
                meta_key=meta_key,
                content_key=content_key,
                plaintext=a.plaintext,
                prev_head=head,
            )
            rows.append(row)
            head = next_head(head, row.leaf)
            seq += 1
        return rows, head

    async def _commit(self, appends: list[PendingAppend]) -> None:
        old_size = self.state.size
        try:
            rows, head = self._seal(appends)
            await self._conn.execute("BEGIN IMMEDIATE")
            await self._conn.executemany(INSERT_SQL, rows)
            await self._conn.execute("COMMIT")
        except Exception as exc:
            _log.error("audit commit of %d records failed: %s", len(appends), exc)
            await self._resync(old_size)
            err = AuditUnavailableError(f"audit write failed: {exc}")
            for a in appends:
                if not a.future.done():
                    a.future.set_exception(err)
            return
        self._adopt(rows, head, appends)

    def _adopt(self, rows: list[Row], head: bytes, appends: list[PendingAppend]) -> None:
        tree = self.state.tree
        for row in rows:
            tree.append(row.leaf)
        self.state.size += len(rows)
        self.state.head = head
        for a, row in zip(appends, rows, strict=True):
            if not a.future.done():
                a.future.set_result(row.seq)

    async def _resync(self, old_size: int) -> None:
        """After a failed commit: carry on only if the log is exactly as before it."""
        try:
            await self._conn.execute("ROLLBACK")
        except Exception:  # noqa: S110 - no transaction left open is the usual case
            pass
        try:
            cur = await self._conn.execute("SELECT max(seq) FROM audit")
            row = await cur.fetchone()
        except Exception as exc:
            self.failed = AuditUnavailableError(f"cannot read the log back after a failed write: {exc}")
            return
        size = 0 if row is None or row[0] is None else int(row[0]) + 1
        if size != old_size:
            # The commit reached the disk after all; its appenders were told it failed (a spurious
            # 503, never a loss). Stop rather than guess: a restart re-reads the chain.
            self.failed = AuditUnavailableError(
                f"log size {size} after a failed commit at {old_size}; reopen"
            )

    # -- checkpoints ------------------------------------------------------------------------------

    async def _maybe_checkpoint(self, *, timer: bool) -> None:
        due = self._checkpoint_due_size()
        if due <= 0:
            return
        elapsed = time.monotonic() - self._last_checkpoint_mono
        if due >= self._every_records or elapsed >= self._every_s:
            await self._checkpoint()

    async def _checkpoint(self) -> None:
        size, root = self.state.size, self.state.tree.root()
        note = sign_checkpoint(Checkpoint(self._origin, size, root), self._signer)
        self._last_checkpoint_mono = time.monotonic()
        try:
            await self._conn.execute("BEGIN IMMEDIATE")
            await self._conn.execute(
                "INSERT OR IGNORE INTO checkpoints (size, ts_ns, note) VALUES (?, ?, ?)",
                (size, time.time_ns(), note),
            )
            await self._conn.execute("COMMIT")
            await asyncio.to_thread(self._store.write, note)
        except Exception as exc:
            self.checkpoint_errors += 1
            _log.error("audit checkpoint at size %d failed: %s", size, exc)
            try:
                await self._conn.execute("ROLLBACK")
            except Exception:  # noqa: S110
                pass
            return
        self.last_checkpoint = (size, time.time(), len(note.encode()))
