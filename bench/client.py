"""A minimal asyncio HTTP/1.1 streaming client, built for timestamp accuracy.

Why not httpx/aiohttp: per-chunk overhead there is tens of microseconds and the read
buffer hides when bytes arrived. Here ``data_received`` only stamps the read with
``monotonic_ns()`` and queues it; parsing (HTTP framing, SSE, JSON) runs in a later
loop callback. When hundreds of streams become readable at once, every read is
stamped in one cheap pass before any of them is parsed.

SSE events are split on blank lines at the byte level, never with
``str.splitlines()``: generated text can contain U+2028 or NEL, and events are only
decoded once complete, so a multi-byte character split across reads is never cut.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from typing import cast
from urllib.parse import urlsplit

import msgspec

from bench.records import RequestRecord

__all__ = ["ConnectionPool", "StreamClient"]


class _Delta(msgspec.Struct):
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None


class _Choice(msgspec.Struct):
    text: str | None = None
    delta: _Delta | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class _Chunk(msgspec.Struct):
    choices: list[_Choice] = []
    usage: _Usage | None = None
    error: object | None = None


_DECODER = msgspec.json.Decoder(_Chunk)
_SEPARATORS = (b"\r\n\r\n", b"\n\n", b"\r\r")


class _Exchange:
    """State of one request/response on a connection."""

    __slots__ = ("done", "prev_completion", "rec", "text")

    def __init__(self, rec: RequestRecord, text: list[str] | None, done: asyncio.Future[None]) -> None:
        self.rec = rec
        self.text = text
        self.done = done
        self.prev_completion = 0


class _Conn(asyncio.Protocol):
    """One keep-alive connection; parses one response at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reusable = True
        self._pending: list[tuple[int, bytes]] = []
        self._drain_scheduled = False
        self._ex: _Exchange | None = None
        self._reset_parser()

    def _reset_parser(self) -> None:
        self._head = bytearray()
        self._in_body = False
        self._chunked = False
        self._remaining = -1  # content-length bytes left; -1: until close
        self._cbuf = bytearray()
        self._cstate = 0  # 0: size line, 1: data, 2: CRLF after data
        self._cleft = 0
        self._sbuf = bytearray()
        self._error_body = bytearray()

    # -- asyncio.Protocol -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._pending.append((time.monotonic_ns(), data))
        if not self._drain_scheduled:
            self._drain_scheduled = True
            self._loop.call_soon(self._drain)

    def connection_lost(self, exc: Exception | None) -> None:
        t = time.monotonic_ns()
        self._drain()
        self.closed = True
        self.reusable = False
        ex = self._ex
        if ex is not None:
            if self._in_body and not self._chunked and self._remaining < 0:
                self._finish(t)  # close-delimited body ended normally
            else:
                self._fail(t, f"connection lost: {exc or 'closed by server'}")

    # -- request ------------------------------------------------------------
    def start(self, ex: _Exchange, request: bytes) -> None:
        self._reset_parser()
        self._ex = ex
        assert self.transport is not None
        self.transport.write(request)

    def abort(self, reason: str) -> None:
        self._fail(time.monotonic_ns(), reason)
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()

    # -- parsing --------------------------------------------------------------
    def _drain(self) -> None:
        self._drain_scheduled = False
        pending, self._pending = self._pending, []
        for t, data in pending:
            if self._ex is None:
                return
            self._feed(t, data)

    def _feed(self, t: int, data: bytes) -> None:
        if not self._in_body:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return
            rest = bytes(self._head[end + 4 :])
            self._parse_head(bytes(self._head[:end]))
            data = rest
            if self._ex is None:
                return
            if self._remaining == 0:
                self._finish(t)
                return
        if self._chunked:
            self._feed_chunked(t, data)
        elif self._remaining >= 0:
            take = data[: self._remaining]
            self._remaining -= len(take)
            self._feed_body(t, take)
            if self._remaining == 0:
                self._finish(t)
        else:
            self._feed_body(t, data)

    def _parse_head(self, head: bytes) -> None:
        ex = self._ex
        assert ex is not None
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        try:
            ex.rec.status = int(parts[1])
        except (IndexError, ValueError):
            self._fail(time.monotonic_ns(), "malformed status line")
            return
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            key = name.strip().lower()
            val = value.strip().lower()
            if key == b"transfer-encoding" and b"chunked" in val:
                self._chunked = True
            elif key == b"content-length":
                self._remaining = int(val)
            elif key == b"connection" and val == b"close":
                self.reusable = False
        if self._chunked:
            self._remaining = -1
        elif self._remaining < 0:
            self.reusable = False
        self._in_body = True

    def _feed_chunked(self, t: int, data: bytes) -> None:
        buf = self._cbuf
        buf += data
        pos = 0
        n = len(buf)
        while pos < n and self._ex is not None:
            if self._cstate == 0:
                i = buf.find(b"\r\n", pos)
                if i < 0:
                    break
                size = int(bytes(buf[pos:i]).split(b";", 1)[0], 16)
                pos = i + 2
                if size == 0:
                    self._finish(t)
                    break
                self._cleft = size
                self._cstate = 1
            elif self._cstate == 1:
                take = min(self._cleft, n - pos)
                self._feed_body(t, bytes(buf[pos : pos + take]))
                pos += take
                self._cleft -= take
                if self._cleft == 0:
                    self._cstate = 2
            else:
                if n - pos < 2:
                    break
                pos += 2
                self._cstate = 0
        del buf[:pos]

    def _feed_body(self, t: int, data: bytes) -> None:
        ex = self._ex
        if ex is None:
            return
        if ex.rec.status != 200:
            self._error_body += data
            return
        sbuf = self._sbuf
        sbuf += data
        start = 0
        while True:
            cut = -1
            seplen = 0
            for sep in _SEPARATORS:
                i = sbuf.find(sep, start)
                if i >= 0 and (cut < 0 or i < cut):
                    cut, seplen = i, len(sep)
            if cut < 0:
                break
            self._event(t, bytes(sbuf[start:cut]))
            start = cut + seplen
            if self._ex is None:
                return
        if start:
            del sbuf[:start]

    def _event(self, t: int, raw: bytes) -> None:
        ex = self._ex
        assert ex is not None
        payload = b"\n".join(
            line[5:].removeprefix(b" ")
            for line in raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
            if line.startswith(b"data:")
        )
        if not payload or payload == b"[DONE]":
            return
        try:
            chunk = _DECODER.decode(payload)
        except msgspec.DecodeError:
            ex.rec.error = "undecodable SSE event"
            return
        rec = ex.rec
        if chunk.error is not None:
            rec.error = f"stream error: {msgspec.json.encode(chunk.error).decode()[:200]}"
            return
        pieces = 0
        for choice in chunk.choices:
            piece = choice.text
            if choice.delta is not None:
                d = choice.delta
                piece = (d.content or "") + (d.reasoning_content or d.reasoning or "")
            if piece:
                pieces += 1
                if ex.text is not None:
                    ex.text.append(piece)
        usage = chunk.usage
        if pieces:
            if rec.t_first is None:
                rec.t_first = t
            rec.t_last = t
            rec.event_ns.append(t - rec.t_send)
            if usage is not None and usage.completion_tokens is not None:
                if rec.event_tokens is None:
                    rec.event_tokens = [0] * (len(rec.event_ns) - 1)
                rec.event_tokens.append(usage.completion_tokens - ex.prev_completion)
            elif rec.event_tokens is not None:
                rec.event_tokens.append(0)
        if usage is not None:
            if usage.completion_tokens is not None:
                rec.completion_tokens = usage.completion_tokens
                ex.prev_completion = usage.completion_tokens
            if usage.prompt_tokens is not None:
                rec.prompt_tokens = usage.prompt_tokens

    def _finish(self, t: int) -> None:
        ex = self._ex
        if ex is None:
            return
        self._ex = None
        rec = ex.rec
        rec.t_close = t
        if rec.status != 200:
            rec.ok = False
            body = bytes(self._error_body[:200]).decode(errors="replace")
            rec.error = rec.error or f"HTTP {rec.status}: {body}"
        elif rec.error is None:
            rec.ok = rec.t_first is not None
            if not rec.ok:
                rec.error = "no tokens in response"
        if not ex.done.done():
            ex.done.set_result(None)

    def _fail(self, t: int, reason: str) -> None:
        ex = self._ex
        if ex is None:
            return
        ex.rec.error = ex.rec.error or reason
        ex.rec.status = ex.rec.status or 0
        self._finish(t)
        self.reusable = False


class ConnectionPool:
    """Keep-alive connections to one origin, opened on demand and reused."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.https = parts.scheme == "https"
        self.port = parts.port or (443 if self.https else 80)
        self.base_path = parts.path.rstrip("/")
        self._idle: list[_Conn] = []
        self._all: set[_Conn] = set()

    def idle(self) -> _Conn | None:
        """A kept-alive connection, without suspending; None when all are busy or closed."""
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn
        return None

    async def connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        ctx = ssl.create_default_context() if self.https else None
        _, conn = await loop.create_connection(
            lambda: _Conn(loop), self.host, self.port, ssl=ctx, server_hostname=self.host if ctx else None
        )
        self._all.add(conn)
        return conn

    async def acquire(self) -> tuple[_Conn, int]:
        """A ready connection, and the ns spent connecting (0 when reused)."""
        conn = self.idle()
        if conn is not None:
            return conn, 0
        t0 = time.monotonic_ns()
        conn = await self.connect()
        return conn, time.monotonic_ns() - t0

    def release(self, conn: _Conn) -> None:
        if conn.reusable and not conn.closed:
            self._idle.append(conn)
        else:
            self._all.discard(conn)
            if conn.transport is not None and not conn.closed:
                conn.transport.close()

    async def warm(self, n: int) -> None:
        """Open ``n`` connections up front so the first requests do not pay for connecting."""
        conns = [await self.acquire() for _ in range(max(0, n - len(self._idle)))]
        for conn, _ in conns:
            self.release(conn)

    def close(self) -> None:
        for conn in list(self._all):
            if conn.transport is not None:
                conn.transport.close()
        self._all.clear()
        self._idle.clear()


class StreamClient:
    """Sends one streaming POST and fills a ``RequestRecord`` with its timestamps."""

    def __init__(self, pool: ConnectionPool, path: str, headers: dict[str, str] | None = None) -> None:
        self.pool = pool
        self.path = pool.base_path + path
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._head_prefix = (
            f"POST {self.path} HTTP/1.1\r\nHost: {pool.host}:{pool.port}\r\n"
            f"Content-Type: application/json\r\nAccept: text/event-stream\r\n{extra}"
        ).encode()

    async def send(
        self,
        rec: RequestRecord,
        body: bytes,
        timeout_s: float,
        text: list[str] | None = None,
        on_send: Callable[[RequestRecord], None] | None = None,
    ) -> None:
        """Stream one request. ``rec.t_send`` is stamped before a connection is taken."""
        rec.t_send = time.monotonic_ns()
        if on_send is not None:
            on_send(rec)
        request = self._head_prefix + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        # The hot path (a kept-alive connection) creates no task and no wait_for wrapper.
        conn = self.pool.idle()
        if conn is None:
            t0 = time.monotonic_ns()
            try:
                conn = await asyncio.wait_for(self.pool.connect(), timeout_s)
            except (OSError, TimeoutError) as exc:
                rec.t_close = time.monotonic_ns()
                rec.error = f"connect failed: {type(exc).__name__}: {exc}"
                return
            rec.connect_ns = time.monotonic_ns() - t0
        conn.start(_Exchange(rec, text, done), request)
        timer = loop.call_later(timeout_s, conn.abort, f"timeout after {timeout_s:g}s")
        try:
            await done
        finally:
            timer.cancel()
            self.pool.release(conn)
