"""The single writer task: it alone drives the write connection, seals records and group-commits.

Appends wait in a bounded queue. The writer takes whatever has queued up (up to
``max_batch``), seals each record in sequence order (each one's associated data
names the previous chain head), and commits the group in one ``BEGIN IMMEDIATE``
transaction with ``synchronous=FULL``: one fsync for the whole group. Only then
are the appenders' futures resolved.

The write connection lives in a process of its own (audit.dbproc), so binding,
inserting and the fsync run on the other core without sharing a GIL with the
loop. While a group commits, the event loop goes on: appenders queue the next
group and the writer seals it on top of the in-flight chain head (the head
depends only on the sealed leaves, not on the commit) and sends it at once; the
write process starts it the moment the commit before it is through, and refuses
it if that commit failed, so transactions never overlap and the database only
ever holds a prefix of the chain.

A failed commit fails every append in its group with AuditUnavailableError; the
writer then re-reads the log's size. If the log is exactly as before, the group
sealed ahead (refused by the write process) is sealed again from the durable
head and goes on; a commit that did reach the disk (a spurious failure) stops
the writer (fail closed), and so does a write process that died.

Checkpoints are signed after a commit, so they only ever cover durable sizes.
Their row rides in the next group's transaction (or goes alone when the log is
idle), and the external copy is written on a second thread once that row is
durable, so checkpointing never stalls appends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .checkpoint import Checkpoint, CheckpointStore, sign_checkpoint
from .crypto import NONCE_LEN, next_head
from .dbproc import WriteGroup, WriteProcess
from .errors import AuditUnavailableError
from .keystore import Keyring, month_of
from .merkle import CompactRange
from .record import Plaintext, Row, Sealer, encode_parts, row_params
from .wal import WalCheckpointer

__all__ = ["ChainState", "CheckpointPolicy", "Command", "PendingAppend", "QueueLimits", "Writer"]

_log = logging.getLogger("bastion.audit")

_DAY_NS = 86_400_000_000_000


@dataclass(slots=True)
class ChainState:
    size: int
    head: bytes
    tree: CompactRange


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointPolicy:
    """Who signs checkpoints, as what origin, where their external copies go, and how often."""

    signer: Ed25519PrivateKey
    origin: str
    store: CheckpointStore
    #: sign once this many records were committed since the last checkpoint ...
    every_records: int
    #: ... or once this many seconds passed with records unsigned
    every_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueLimits:
    """Appends that may wait (more are refused), and the most records one commit takes."""

    queue_max: int
    max_batch: int


@dataclass(slots=True)
class PendingAppend:
    ts_ns: int
    event_type: str
    tenant: str
    subject: str | None
    request_id: str | None
    plaintext: Plaintext
    future: asyncio.Future[int]


def _key_created(meta: dict[str, Any], ts_ns: int) -> PendingAppend:
    """A system ``key.created`` record; nobody awaits it, its group's appenders stand for it."""
    future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    future.add_done_callback(_consume)
    return PendingAppend(ts_ns, "key.created", "", None, None, encode_parts("", meta, None, None), future)


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: a failed group is reported through its appenders


@dataclass(slots=True)
class Command:
    """Key work run inside the writer (so it is serialized with appends); returns system events."""

    action: Callable[[Keyring], list[tuple[str, dict[str, Any]]]]
    future: asyncio.Future[list[int]]
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


@dataclass(slots=True)
class _Batch:
    """A sealed group: its rows continue the chain from ``first_seq``; ``head`` is the head after them."""

    appends: list[PendingAppend]
    rows: list[Row]
    first_seq: int
    head: bytes
    checkpoint: tuple[int, str] | None = None  # (size, note) inserted in the same transaction

    @property
    def tip(self) -> tuple[int, bytes]:
        """The sequence number and chain head the next record after this group continues from."""
        return self.first_seq + len(self.rows), self.head


@dataclass(slots=True)
class _Pipeline:
    """The writer's commits under way: at most one in flight, and one group sealed ahead of it."""

    inflight: tuple[_Batch, asyncio.Future[object]] | None = None
    #: sealed on top of the in-flight batch
    ahead: _Batch | None = None
    #: ahead's commit, once sent: the write process runs it right after the one in flight
    ahead_fut: asyncio.Future[object] | None = None


#: what the writer does after one step: go round again, sleep until woken, or stop
_Next = Literal["again", "wait", "stop"]

_STOP = object()
# A queue of at least twice this many appends, met by an idle writer, is committed as two groups.
_SPLIT_MIN = 32


class Writer:
    def __init__(
        self,
        *,
        proc: WriteProcess,
        keyring: Keyring,
        log_id: bytes,
        state: ChainState,
        checkpoints: CheckpointPolicy,
        limits: QueueLimits,
        last_checkpoint: tuple[int, float, int] | None,
        wal: WalCheckpointer,
    ) -> None:
        self._proc = proc
        self.wal = wal
        self.commits = 0
        self._keyring = keyring
        self._sealer = Sealer(log_id)
        self.state = state
        self._policy = checkpoints
        self._max_batch = limits.max_batch
        self.queue_max = limits.queue_max
        self._pending: deque[object] = deque()
        self._wake: asyncio.Future[None] | None = None
        self._export = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-checkpoint")
        self._last_export: asyncio.Future[None] | None = None
        self.last_checkpoint = last_checkpoint  # (size, unix time, note bytes) of the last exported one
        self._signed: int | None = None if last_checkpoint is None else last_checkpoint[0]
        self._unsent: tuple[int, str] | None = None  # signed, its row not yet committed
        self._last_checkpoint_mono = time.monotonic()
        self._months: dict[int, str] = {}
        self.checkpoint_errors = 0
        self.failed: AuditUnavailableError | None = None
        self.closed = False

    # -- producer side ----------------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    def submit(self, item: PendingAppend | Command) -> None:
        if self.failed is not None:
            raise AuditUnavailableError(f"audit log writer has stopped: {self.failed}")
        if self.closed:
            raise AuditUnavailableError("audit log is closed")
        if len(self._pending) >= self.queue_max:
            raise AuditUnavailableError(f"audit queue is full ({self.queue_max} records waiting)")
        self._pending.append(item)
        self._notify()

    async def stop(self) -> None:
        self.closed = True
        self._pending.append(_STOP)
        self._notify()

    async def close(self) -> None:
        """After run() has ended: stop the WAL checkpointer and the write process, end the export thread."""
        try:
            try:
                await self.wal.close()
            finally:
                await self._proc.close()
        finally:
            self._export.shutdown(wait=True)

    def _notify(self, _: object = None) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    # -- the task ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Seal, commit, acknowledge and checkpoint until ``stop()`` or a failure that stops the log."""
        loop = asyncio.get_running_loop()
        p = _Pipeline()
        try:
            while (step := await self._step(p)) != "stop":
                if step == "wait":
                    await self._wait(loop)
            await self._drain(p)
        finally:
            self._abandon(p)

    async def _step(self, p: _Pipeline) -> _Next:
        """One turn: settle a finished commit, sign if due, seal the next group, send what can go."""
        if p.inflight is not None and p.inflight[1].done():
            settled = await self._settle(p)
            if settled is not None:
                return settled
        self._maybe_sign()
        split = self._seal_ahead(p)
        if p.inflight is None and p.ahead is not None:
            self._send_ahead(p, join=not split)
            return "again"
        if p.inflight is None and p.ahead is None and self._pending:
            return await self._run_control()
        if p.inflight is None and self._unsent is not None:
            # a signed checkpoint and no records to carry it: its row goes alone
            batch = _Batch([], [], self.state.size, self.state.head)
            p.inflight = (batch, self._start(batch))
            return "again"
        if p.inflight is not None and p.ahead is not None:
            # The next group is sealed and sent: nothing to do until the commit ends.
            with contextlib.suppress(Exception):
                await p.inflight[1]
            return "again"
        return "wait"

    def _appends_next(self) -> bool:
        return bool(self._pending) and isinstance(self._pending[0], PendingAppend)

    async def _settle(self, p: _Pipeline) -> _Next | None:
        """Adopt the finished commit; the group sealed ahead becomes the one in flight (or, after a
        failed commit, is sealed again from the durable head). ``None``: go on with this turn."""
        assert p.inflight is not None
        ok = await self._finish(*p.inflight)
        p.inflight = None
        if self.failed is not None:
            return "stop"
        if ok and p.ahead is not None and p.ahead_fut is not None:
            p.inflight, p.ahead, p.ahead_fut = (p.ahead, p.ahead_fut), None, None
            return "again"
        if not ok and p.ahead is not None:
            if p.ahead_fut is not None:
                # Sent behind the commit that failed: the write process refuses it.
                with contextlib.suppress(Exception):
                    await p.ahead_fut
                p.ahead_fut = None
                if p.ahead.checkpoint is not None and self._unsent is None:
                    self._unsent = p.ahead.checkpoint
            p.ahead = self._seal(p.ahead.appends, self.state.size, self.state.head)
        return None

    def _seal_ahead(self, p: _Pipeline) -> bool:
        """Seal the queued appends as the next group (sent at once behind a commit in flight).
        Returns whether a burst was split in two."""
        if p.ahead is not None or not self._appends_next():
            return False
        seq, head = (self.state.size, self.state.head) if p.inflight is None else p.inflight[0].tip
        limit, split = self._max_batch, False
        if p.inflight is None and len(self._pending) >= 2 * _SPLIT_MIN:
            # A burst met an idle disk: commit half now and seal the rest while that
            # fsync runs, so sealing, acknowledging and the next fsync overlap from here on.
            limit = min(limit, (len(self._pending) + 1) // 2)
            split = True
        ahead = self._seal(self._take_appends(limit), seq, head)
        if not ahead.rows:
            return split
        p.ahead = ahead
        if p.inflight is not None:
            # Send it now: the write process starts it the moment the commit in flight
            # is through, instead of when the loop has heard of that and come back.
            p.ahead_fut = self._start(ahead)
        return split

    def _send_ahead(self, p: _Pipeline, *, join: bool) -> None:
        """Nothing in flight: commit the group sealed ahead, with whatever queued behind it (``join``)."""
        ahead = p.ahead
        assert ahead is not None
        if join and self._appends_next() and len(ahead.rows) < self._max_batch:
            # Appends that queued behind the group sealed ahead join it: one fsync for all.
            more = self._seal(self._take_appends(self._max_batch - len(ahead.rows)), *ahead.tip)
            ahead.appends += more.appends
            ahead.rows += more.rows
            ahead.head = more.head
        p.inflight, p.ahead = (ahead, self._start(ahead)), None

    async def _run_control(self) -> _Next:
        """Nothing under way and the queue's head is not an append: a key command, or the stop."""
        if self._appends_next():
            return "again"  # the group before failed to seal (and was failed); seal the next
        item = self._pending.popleft()
        if item is _STOP:
            return "stop"
        if isinstance(item, Command):
            await self._run_command(item)
        return "again"

    async def _drain(self, p: _Pipeline) -> None:
        """Stopping: let the last commit land, sign the final size, wait for the last export."""
        if self.failed is None:
            if p.inflight is not None:
                await self._finish(*p.inflight)
                p.inflight = None
            if self.failed is None and (self._signed is None or self._signed != self.state.size):
                self._sign()
            if self._unsent is not None:
                batch = _Batch([], [], self.state.size, self.state.head)
                await self._finish(batch, self._start(batch))
        if self._last_export is not None:
            with contextlib.suppress(Exception):
                await self._last_export

    def _abandon(self, p: _Pipeline) -> None:
        """The task ends: every append not acknowledged is failed, never left waiting."""
        err = AuditUnavailableError("audit log is closed") if self.failed is None else self.failed
        if p.inflight is not None:
            # Cancelled mid-commit: whether it landed is unknown, so nobody is told it did.
            p.inflight[1].add_done_callback(lambda _: None)
            self._fail(p.inflight[0].appends, err)
        if p.ahead is not None:
            if p.ahead_fut is not None:
                p.ahead_fut.add_done_callback(_consume)
            self._fail(p.ahead.appends, err)
        self._fail_queued(err)

    async def _wait(self, loop: asyncio.AbstractEventLoop) -> None:
        """Sleep until an append arrives, the commit in flight ends, or a timed checkpoint is due."""
        timer = None
        if self.state.size > (self._signed or 0) and self._unsent is None:
            due = self._policy.every_s - (time.monotonic() - self._last_checkpoint_mono)
            timer = loop.call_later(max(due, 0.001), self._notify)
        self._wake = loop.create_future()
        try:
            await self._wake
        finally:
            self._wake = None
            if timer is not None:
                timer.cancel()

    def _take_appends(self, limit: int) -> list[PendingAppend]:
        pending, out = self._pending, list[PendingAppend]()
        while pending and len(out) < limit:
            item = pending[0]
            if not isinstance(item, PendingAppend):
                break
            out.append(item)
            pending.popleft()
        return out

    def _fail_queued(self, exc: AuditUnavailableError) -> None:
        while self._pending:
            item = self._pending.popleft()
            if isinstance(item, PendingAppend | Command) and not item.future.done():
                item.future.set_exception(exc)

    @staticmethod
    def _fail(appends: list[PendingAppend], exc: BaseException) -> None:
        for a in appends:
            if not a.future.done():
                a.future.set_exception(exc)

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
        batch = self._seal(appends, self.state.size, self.state.head)
        if batch.rows:
            await self._finish(batch, self._start(batch))
        try:
            seqs = [a.future.result() for a in appends]
        except Exception as exc:
            if not cmd.future.done():
                cmd.future.set_exception(exc)
            return
        if not cmd.future.done():
            cmd.future.set_result(seqs)

    # -- sealing and committing -------------------------------------------------------------------

    def _month(self, ts_ns: int) -> str:
        day = ts_ns // _DAY_NS
        month = self._months.get(day)
        if month is None:
            if len(self._months) >= 64:
                self._months.clear()
            month = self._months[day] = month_of(ts_ns)
        return month

    def _seal(self, appends: list[PendingAppend], seq: int, head: bytes) -> _Batch:
        """Seal ``appends`` as records ``seq``, ``seq + 1``, ... after chain head ``head``.

        A failure here (the keys database) fails this group only; nothing was written to the log.
        """
        batch = _Batch(appends, [], seq, head)
        try:
            batch.rows, batch.head = self._seal_rows(appends, seq, head)
        except Exception as exc:
            _log.error("sealing %d audit records failed: %s", len(appends), exc)
            self._fail(appends, AuditUnavailableError(f"audit write failed: {exc}"))
            batch.appends, batch.rows, batch.head = [], [], head
        return batch

    def _seal_rows(self, appends: list[PendingAppend], seq: int, head: bytes) -> tuple[list[Row], bytes]:
        kr, seal = self._keyring, self._sealer.seal
        tenant_id, subject_id, request_id, encrypting_key = (
            kr.tenant_id,
            kr.subject_id,
            kr.request_id,
            kr.encrypting_key,
        )
        rows: list[Row] = []
        # Every nonce of the group from the OS CSPRNG in one call (still random, never a counter);
        # records added below for created keys draw their own.
        drawn = len(appends)
        step = 2 * NONCE_LEN
        rand = os.urandom(step * drawn)
        i = 0
        while i < len(appends):
            a = appends[i]
            tenant = a.tenant
            tenant_h = tenant_id(tenant)
            subject_h = None if a.subject is None else subject_id(tenant, a.subject)
            request_h = None if a.request_id is None else request_id(tenant, a.request_id)
            month = self._month(a.ts_ns)
            meta_key = encrypting_key(tenant_h, None, month)
            content_key = None
            if a.plaintext.content is not None:
                content_key = meta_key if subject_h is None else encrypting_key(tenant_h, subject_h, month)
            nonces = rand[step * i : step * (i + 1)] if i < drawn else os.urandom(step)
            row = seal(
                seq,
                a.ts_ns,
                a.event_type,
                tenant_h,
                subject_h,
                request_h,
                meta_key,
                content_key,
                a.plaintext,
                head,
                nonces,
            )
            rows.append(row)
            head = next_head(head, row.leaf)
            seq += 1
            i += 1
            # A data key made for this record is logged in the same group (sealed under the system
            # tenant's key, which may itself be new: that adds one more record, once a month).
            created = kr.take_created()
            if created:
                appends.extend([_key_created(event, a.ts_ns) for event in created])
        return rows, head

    def _start(self, batch: _Batch) -> asyncio.Future[object]:
        """Hand ``batch`` (and any signed checkpoint's row) to the write process as one transaction."""
        batch.checkpoint, self._unsent = self._unsent, None
        group = WriteGroup(
            batch.first_seq, len(batch.rows), row_params(batch.rows), batch.checkpoint, self.wal.take_reset()
        )
        fut = self._proc.write(group)
        fut.add_done_callback(self._notify)
        return fut

    async def _finish(self, batch: _Batch, fut: asyncio.Future[object]) -> bool:
        """Adopt a finished commit and acknowledge its appends; on failure, fail them and resync."""
        try:
            await fut
        except Exception as exc:
            _log.error("audit commit of %d records failed: %s", len(batch.rows), exc)
            if batch.checkpoint is not None and self._unsent is None:
                self._unsent = batch.checkpoint
            await self._resync(batch.first_seq)
            self._fail(batch.appends, AuditUnavailableError(f"audit write failed: {exc}"))
            return False
        self.commits += 1
        self.wal.committed(len(batch.rows))
        tree = self.state.tree
        for row in batch.rows:
            tree.append(row.leaf)
        self.state.size += len(batch.rows)
        if batch.rows:
            self.state.head = batch.head
        for a, row in zip(batch.appends, batch.rows, strict=True):
            if not a.future.done():
                a.future.set_result(row.seq)
        if batch.checkpoint is not None:
            self._export_checkpoint(*batch.checkpoint)
        return True

    async def _resync(self, old_size: int) -> None:
        """After a failed commit: carry on only if the log is exactly as before it."""
        try:
            size = await self._proc.size()
        except Exception as exc:
            self.failed = AuditUnavailableError(f"cannot read the log back after a failed write: {exc}")
            return
        if size != old_size:
            # The commit reached the disk after all; its appenders were told it failed (a spurious
            # 503, never a loss). Stop rather than guess: a restart re-reads the chain.
            self.failed = AuditUnavailableError(
                f"log size {size} after a failed commit at {old_size}; reopen"
            )

    # -- checkpoints ------------------------------------------------------------------------------

    def _maybe_sign(self) -> None:
        size = self.state.size
        signed = 0 if self._signed is None else self._signed
        if size <= signed or self._unsent is not None:
            return
        if size - signed >= self._policy.every_records or (
            time.monotonic() - self._last_checkpoint_mono >= self._policy.every_s
        ):
            self._sign()

    def _sign(self) -> None:
        """Sign the durable size now; its row goes out with the next transaction."""
        size, root = self.state.size, self.state.tree.root()
        self._unsent = (
            size,
            sign_checkpoint(Checkpoint(self._policy.origin, size, root), self._policy.signer),
        )
        self._signed = size
        self._last_checkpoint_mono = time.monotonic()

    def _export_checkpoint(self, size: int, note: str) -> None:
        """Its row is durable: write the external copy on the export thread (in order, off the loop)."""
        fut = asyncio.get_running_loop().run_in_executor(self._export, self._policy.store.write, note)

        def done(f: asyncio.Future[None]) -> None:
            exc = f.exception() if not f.cancelled() else asyncio.CancelledError()
            if exc is not None:
                self.checkpoint_errors += 1
                _log.error("audit checkpoint at size %d failed: %s", size, exc)
            else:
                self.last_checkpoint = (size, time.time(), len(note.encode()))

        fut.add_done_callback(done)
        self._last_export = fut
