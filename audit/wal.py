"""WAL checkpoints off the commit path: their own thread, their own connection.

SQLite's automatic checkpoint runs inside the COMMIT that crosses its threshold,
so every few thousand records one group of appenders would wait for the WAL to
be copied into the database file and that file fsynced. The write connection
turns it off (``wal_autocheckpoint=0``) and this checkpointer does the copying
instead, on a second connection, while the writer goes on committing.

A PASSIVE checkpoint never blocks the writer (nor waits for readers), but under
steady load the writer keeps adding frames, so the WAL is never wholly copied
and never starts over. Once it holds ``reset_frames`` frames, the writer is
asked (``take_reset``) to run one passive checkpoint itself right after its
next commit: only the few frames committed since this thread's run are left to
copy, nobody else writes, so the next transaction starts the WAL over and its
file stays bounded. Checkpointing changes no log content; a crash in the middle
of one is recovered by SQLite like any other.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from concurrent.futures import ThreadPoolExecutor

__all__ = ["WalCheckpointer"]

_log = logging.getLogger("bastion.audit")


class WalCheckpointer:
    def __init__(self, path: str, *, every_rows: int = 1024, reset_frames: int = 2000) -> None:
        self._path = path
        self._every_rows = every_rows
        self._reset_frames = reset_frames
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-wal")
        self._conn: sqlite3.Connection | None = None  # opened and used on self._thread only
        self._rows = 0
        self._running: asyncio.Future[tuple[int, int]] | None = None
        self.wal_frames = 0  # frames in the WAL at the end of the last checkpoint
        self._reset_due = False
        self.runs = 0
        self.errors = 0

    def committed(self, rows: int) -> None:
        """On the loop, after a commit: start a checkpoint once enough rows have gone in since the last."""
        self._rows += rows
        if self._rows < self._every_rows or self._running is not None:
            return
        self._rows = 0
        self._running = asyncio.get_running_loop().run_in_executor(self._thread, self._checkpoint)
        self._running.add_done_callback(self._done)

    def _done(self, fut: asyncio.Future[tuple[int, int]]) -> None:
        self._running = None
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            self.errors += 1
            _log.error("audit WAL checkpoint failed: %s", exc)
            return
        self.runs += 1
        self.wal_frames = fut.result()[0]
        self._reset_due = self._reset_due or self.wal_frames >= self._reset_frames

    def take_reset(self) -> bool:
        """Whether the writer should checkpoint after its next commit (True once per request)."""
        due, self._reset_due = self._reset_due, False
        return due

    def _checkpoint(self) -> tuple[int, int]:
        """On the checkpoint thread: returns (frames in the WAL, frames copied) after the run."""
        if self._conn is None:
            self._conn = sqlite3.connect(self._path, isolation_level=None)
            self._conn.execute("PRAGMA busy_timeout=5000")
        _, frames, copied = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return int(frames), int(copied)

    async def close(self) -> None:
        """Wait for a run in progress, then close the connection on its own thread."""
        if self._running is not None:
            await asyncio.wait([self._running])
        loop = asyncio.get_running_loop()
        try:
            if self._conn is not None:
                await loop.run_in_executor(self._thread, self._conn.close)
        finally:
            self._thread.shutdown(wait=True)
