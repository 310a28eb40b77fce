"""The log's write connection, in a process of its own (``audit.dbproc.main``, one per open log).

The writer task seals records on the event loop; this process binds, inserts and
commits them. It used to be a thread of the node, and then both shared one GIL:
binding a group's ~1,800 parameters held it for 1-1.5 ms, and each commit waited
for the busy loop to let go of it before it could even start. In a process of
its own the commit runs on the other core while the loop seals the next group.

Protocol, over the child's stdin and stdout: frames of a 4-byte big-endian
length and a msgpack body. The parent sends ``WriteGroup``, ``ReadSize`` or
``Close``; the child answers each, in order, ``[0, value]``, ``[1, message]`` (an
error) or ``[2, message]`` (refused). Requests may queue: the writer sends the
group it sealed ahead while the one before is still committing, so the child
goes from one transaction to the next without waiting for the loop. The child
runs them one at a time and refuses a group that does not start exactly where
the log ends (the one before it failed), so the database only ever holds a
prefix of the chain. The child exits when its stdin closes, so a node that dies
takes its write process with it once the transaction in hand is over; the child
holds the log's lock (inherited) until then, so no second writer starts beside it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import logging
import os
import signal
import sqlite3
import struct
import sys
import time
from typing import Any

import msgspec

from .errors import AuditUnavailableError
from .record import COLUMNS, insert_rows_sql

__all__ = ["Close", "ReadSize", "Refused", "WriteGroup", "WriteProcess", "main"]

_log = logging.getLogger("bastion.audit")

_LEN = struct.Struct(">I")
_CHECKPOINT_SQL = "INSERT OR IGNORE INTO checkpoints (size, ts_ns, note) VALUES (?, ?, ?)"
# Rows per INSERT statement at most (a power of two; 14 parameters each, well below SQLite's
# default limit of 32,766).
_INSERT_CHUNK = 1024
_PIPE_SIZE = 1 << 20
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where ``audit`` imports from


class WriteGroup(msgspec.Struct, tag="write", array_like=True):
    """One transaction: records ``first_seq`` .. ``first_seq + n_rows - 1`` and maybe a checkpoint row.

    ``params``: the rows' INSERT parameters, flat, in COLUMNS order. ``wal_reset``:
    afterwards, copy what is left of the WAL into the database (see audit.wal).
    """

    first_seq: int
    n_rows: int
    params: list[Any]
    checkpoint: tuple[int, str] | None = None
    wal_reset: bool = False


class ReadSize(msgspec.Struct, tag="size", array_like=True):
    """The log's size on disk (after a failed commit: did it land?)."""


class Close(msgspec.Struct, tag="close", array_like=True):
    """Close the connection and exit (after answering)."""


_Request = WriteGroup | ReadSize | Close
_OK, _ERROR, _REFUSED = 0, 1, 2


class Refused(AuditUnavailableError):
    """The write process did not run a group: it was queued behind one that failed."""


# -- the parent's side ----------------------------------------------------------------------------


class WriteProcess:
    """The node's handle on the write process: requests go out in order, replies come back in order."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc
        self._encoder = msgspec.msgpack.Encoder()
        self._waiting: collections.deque[asyncio.Future[object]] = collections.deque()
        self._dead: str | None = None
        self._closing = False
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, path: str, lock_fd: int) -> WriteProcess:
        """Start the child on ``path``; it inherits ``lock_fd`` (the log lock) and holds it till it exits."""
        # Only what an interpreter needs to import us: not the node's environment, which may
        # hold the key-encryption key (kek_env) and other secrets this process has no use for.
        env = {k: os.environ[k] for k in ("PATH", "PYTHONHOME", "LD_LIBRARY_PATH") if k in os.environ}
        env["PYTHONPATH"] = os.pathsep.join([_ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "import sys; from audit.dbproc import main; sys.exit(main())",
            path,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            pass_fds=(lock_fd,),
            env=env,
        )
        self = cls(proc)
        _widen(proc)
        ready: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._waiting.append(ready)  # the child's first reply says it opened the database
        self._reader = asyncio.create_task(self._read_replies())
        try:
            await ready
        except BaseException:
            await self.kill()
            raise
        return self

    def write(self, group: WriteGroup) -> asyncio.Future[object]:
        """Send ``group`` now; the future ends when it is committed (or fails, or is Refused)."""
        return self._send(group)

    async def size(self) -> int:
        value = await self._send(ReadSize())
        assert isinstance(value, int)
        return value

    async def close(self) -> None:
        """Ask the child to close its connection and exit; kill it if it does not within 10 s."""
        self._closing = True
        try:
            if self._dead is None:
                with contextlib.suppress(AuditUnavailableError):
                    await asyncio.wait_for(self._send(Close()), 10)
            await asyncio.wait_for(self._proc.wait(), 10)
        except TimeoutError:
            _log.error("audit write process %d did not exit; killing it", self._proc.pid)
            await self.kill()
        if self._reader is not None:
            await self._reader

    async def kill(self) -> None:
        self._closing = True
        self._sigkill()
        await self._proc.wait()
        if self._reader is not None:
            await self._reader

    def _sigkill(self) -> None:
        # os.kill, not Process.kill: Popen.send_signal polls first, and a poll that reaps the
        # child races asyncio's child watcher (which then reports it as unknown, status 255).
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signal.SIGKILL)

    def _send(self, request: WriteGroup | ReadSize | Close) -> asyncio.Future[object]:
        fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        if self._dead is not None:
            fut.set_exception(AuditUnavailableError(self._dead))
            return fut
        stdin = self._proc.stdin
        assert stdin is not None
        body = self._encoder.encode(request)
        # No drain: at most two groups are ever queued, and the pipe holds a whole group.
        stdin.write(_LEN.pack(len(body)) + body)
        self._waiting.append(fut)
        return fut

    async def _read_replies(self) -> None:
        stdout = self._proc.stdout
        assert stdout is not None
        try:
            while True:
                (n,) = _LEN.unpack(await stdout.readexactly(_LEN.size))
                status, value = msgspec.msgpack.decode(await stdout.readexactly(n))
                fut = self._waiting.popleft()
                if fut.done():
                    continue
                if status == _OK:
                    fut.set_result(value)
                elif status == _REFUSED:
                    fut.set_exception(Refused(str(value)))
                else:
                    fut.set_exception(sqlite3.OperationalError(str(value)))
        except Exception as exc:  # EOF (it exited) or a broken reply: either way it is gone for us
            # Marked dead before any await, so no request sent from here on waits for a reply.
            self._dead = f"the audit write process is gone ({type(exc).__name__})"
            while self._waiting:
                fut = self._waiting.popleft()
                if not fut.done():
                    fut.set_exception(AuditUnavailableError(self._dead))
            if self._closing:
                return  # it answered Close (or is being killed) and exits by itself
            self._sigkill()
            code = await self._proc.wait()
            _log.error(
                "audit write process %d is gone (status %s): the log refuses records", self._proc.pid, code
            )


def _widen(proc: asyncio.subprocess.Process) -> None:
    """Let a whole group fit in the request pipe: one write, not pieces sent as the loop gets to them."""
    transport = proc.stdin.transport if proc.stdin is not None else None
    pipe = None if transport is None else transport.get_extra_info("pipe")
    if pipe is None:
        return
    with contextlib.suppress(OSError):  # capped by /proc/sys/fs/pipe-max-size (1 MiB by default)
        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_SIZE)


# -- the child's side -----------------------------------------------------------------------------


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("PRAGMA wal_autocheckpoint=0")  # audit.wal checkpoints from the node
    except BaseException:
        conn.close()
        raise
    return conn


class _Committer:
    """Runs the requests against the write connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self.next_seq = self.size()
        self._insert_sql = {1 << i: insert_rows_sql(1 << i) for i in range(_INSERT_CHUNK.bit_length())}

    def write(self, group: WriteGroup) -> None:
        """One transaction, one fsync (synchronous=FULL) at its commit.

        Rows go in as multi-row INSERT statements; a group that fits one statement and
        carries no checkpoint row is that one statement in autocommit mode (SQLite's
        implicit transaction). Blobs are bound as ``bytearray``: Python's sqlite3 sends
        ``bytes`` through its adapter registry first (0.86 us per value against 0.23 us).
        """
        conn, params, width = self._conn, group.params, len(COLUMNS)
        ba = bytearray
        params = [ba(v) if type(v) is bytes else v for v in params]
        statements = []
        start = 0
        while start < group.n_rows:
            n = _INSERT_CHUNK  # largest chunk first: a few statement shapes, all in sqlite3's cache
            while n > group.n_rows - start:
                n >>= 1
            statements.append((self._insert_sql[n], params[start * width : (start + n) * width]))
            start += n
        if group.checkpoint is None and len(statements) == 1:
            conn.execute(*statements[0])
        else:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for sql, values in statements:
                    conn.execute(sql, values)
                if group.checkpoint is not None:
                    size, note = group.checkpoint
                    conn.execute(_CHECKPOINT_SQL, (size, time.time_ns(), note))
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
        self.next_seq += group.n_rows
        if group.wal_reset:
            try:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as exc:  # the commit above stands; the next reset request retries
                print(f"audit WAL checkpoint after commit failed: {exc}", file=sys.stderr)

    def close(self) -> None:
        self._conn.close()

    def size(self) -> int:
        with contextlib.suppress(sqlite3.Error):
            self._conn.execute("ROLLBACK")  # no transaction left open is the usual case
        row = self._conn.execute("SELECT max(seq) FROM audit").fetchone()
        self.next_seq = 0 if row is None or row[0] is None else int(row[0]) + 1
        return self.next_seq


def _read_exactly(fd: int, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _send(fd: int, status: int, value: object) -> None:
    body = msgspec.msgpack.encode((status, value))
    view = memoryview(_LEN.pack(len(body)) + body)
    while view:
        view = view[os.write(fd, view) :]


def main() -> int:
    # The node decides when this process ends, by closing its stdin once the last records are
    # committed: a Ctrl-C to the terminal's process group or a service manager's SIGTERM to
    # every process of the unit must not cut that flush short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    inp, out = sys.stdin.fileno(), sys.stdout.fileno()
    sys.stdout = sys.stderr  # the protocol owns fd 1; anything printed goes to stderr
    try:
        committer = _Committer(_connect(sys.argv[1]))
    except sqlite3.Error as exc:
        _send(out, _ERROR, f"cannot open {sys.argv[1]}: {exc}")
        return 1
    _send(out, _OK, None)
    decoder = msgspec.msgpack.Decoder(_Request)
    while True:
        head = _read_exactly(inp, _LEN.size)
        if head is None:
            break  # the node is gone
        body = _read_exactly(inp, _LEN.unpack(head)[0])
        if body is None:
            break
        request = decoder.decode(body)
        try:
            if isinstance(request, WriteGroup):
                if request.first_seq != committer.next_seq:
                    _send(out, _REFUSED, f"group at {request.first_seq}, log ends at {committer.next_seq}")
                    continue
                committer.write(request)
                _send(out, _OK, None)
            elif isinstance(request, ReadSize):
                _send(out, _OK, committer.size())
            else:
                _send(out, _OK, None)
                break
        except sqlite3.Error as exc:
            _send(out, _ERROR, str(exc))
    committer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
