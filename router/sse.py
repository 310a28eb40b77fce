"""Incremental Server-Sent Events parsing over bytes.

Events are split on blank lines only, and on bytes: a model that emits U+2028
or NEL (multi-byte in UTF-8) can never split an event, unlike
``str.splitlines()``. Line endings inside an event follow the SSE spec
(CRLF, LF or CR).
"""

from __future__ import annotations

import re
from typing import NamedTuple

__all__ = ["SseEvent", "SseParser"]

_BOUNDARY = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_MAX_BUFFER = 8 * 1024 * 1024


class SseEvent(NamedTuple):
    event: str
    data: bytes


class SseParser:
    """Feed raw chunks; get complete events. An unterminated last event is dropped (per spec)."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[SseEvent]:
        buffer = self._buffer + chunk if self._buffer else chunk
        events: list[SseEvent] = []
        start = 0
        for match in _BOUNDARY.finditer(buffer):
            event = _parse_block(buffer[start : match.start()])
            if event is not None:
                events.append(event)
            start = match.end()
        self._buffer = buffer[start:]
        if len(self._buffer) > _MAX_BUFFER:
            raise ValueError("SSE event larger than 8 MiB")
        return events

    @property
    def pending(self) -> bool:
        """Whether bytes of an unfinished event are buffered."""
        return bool(self._buffer.strip())


def _parse_block(block: bytes) -> SseEvent | None:
    if b"\r" in block:
        block = block.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    event = ""
    data: list[bytes] = []
    for line in block.split(b"\n"):
        if not line or line.startswith(b":"):
            continue
        name, sep, value = line.partition(b":")
        if sep and value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            data.append(value)
        elif name == b"event":
            event = value.decode("utf-8", "replace")
    if not data and not event:
        return None
    return SseEvent(event, b"\n".join(data))
