"""Per-request records: the raw timestamps every metric is recomputed from.

All times are ``time.monotonic_ns()`` values (CLOCK_MONOTONIC, shared by every
process on the host), so a mock server in another process can stamp the same clock.
Records are written to JSONL as each request finishes, so a long run keeps only
the in-flight requests in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO

import msgspec

from bench.config import REDACTED

__all__ = ["RecordReader", "RecordWriter", "RequestRecord", "read_records"]


class RequestRecord(msgspec.Struct, kw_only=True):
    """One request, as the client saw it.

    ``event_ns`` holds, for every token-bearing SSE event, the arrival time of the
    socket read that completed it, as an offset from ``t_send``. Events that arrived
    in the same read share an offset. ``event_tokens`` is the token count of each
    event when the server reported it (continuous usage), else ``None``.
    """

    index: int
    t_sched: int
    t_dispatch: int = 0
    t_send: int = 0
    t_first: int | None = None
    t_last: int | None = None
    t_close: int = 0
    ok: bool = False
    status: int = 0
    error: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    client_tokens: int | None = None
    requested_tokens: int | None = None
    connect_ns: int = 0
    event_ns: list[int] = msgspec.field(default_factory=list)
    event_tokens: list[int] | None = None

    @property
    def n_events(self) -> int:
        return len(self.event_ns)

    def output_tokens(self) -> int:
        """Server usage when reported, else the client tokenizer, else one token per event."""
        if self.completion_tokens is not None:
            return self.completion_tokens
        if self.client_tokens is not None:
            return self.client_tokens
        return len(self.event_ns)

    def tokens_per_event(self) -> list[float]:
        """Token count of each event; spread evenly over events when the server gave only a total."""
        n = len(self.event_ns)
        if n == 0:
            return []
        if self.event_tokens is not None and len(self.event_tokens) == n and sum(self.event_tokens) > 0:
            return [float(t) for t in self.event_tokens]
        total = self.output_tokens()
        return [total / n] * n


class RecordWriter:
    """Appends records to a JSONL file; buffered, flushed on close."""

    def __init__(self, path: Path, *, secrets: tuple[str, ...] = ()) -> None:
        self.path = path
        self._secrets = tuple(s for s in secrets if s)
        self._enc = msgspec.json.Encoder()
        self._fh: IO[bytes] = path.open("wb", buffering=1 << 20)
        self.count = 0

    def write(self, rec: RequestRecord) -> None:
        if rec.error and self._secrets:  # a server may echo the key it refused
            for secret in self._secrets:
                rec.error = rec.error.replace(secret, REDACTED)
        self._fh.write(self._enc.encode(rec) + b"\n")
        self.count += 1

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class RecordReader:
    """Re-iterable view over a records JSONL file (each iteration streams from disk)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __iter__(self) -> Iterator[RequestRecord]:
        return read_records(self.path)


def read_records(path: Path) -> Iterator[RequestRecord]:
    dec = msgspec.json.Decoder(RequestRecord)
    with path.open("rb") as fh:
        for line in fh:
            if line.strip():
                yield dec.decode(line)
