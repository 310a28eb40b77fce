"""The HTTP server: uvicorn configured from ``[server]``, with deadlines for reading requests.

Uvicorn bounds idle keep-alive connections but not the time a client takes to
send a request: a connection that announces a body and never sends it, or
sends its headers a byte at a time, is held open indefinitely. The node's
protocol adds two deadlines per request, armed by the HTTP parser's own
events:

- ``header_timeout_s`` from the connection's start (or the first byte of its
  next request) to the end of the headers;
- ``body_timeout_s`` from the end of the headers to the end of the body.

A request that misses either gets a 408 ``request_timeout`` (OpenAI-shaped,
``connection: close``) unless a response has begun, and the connection is
closed; a handler still reading the body gets ``RequestTimeoutError`` from it
(``read_deadline_middleware``), so the request is recorded as a 408 rather than
as a client that vanished. ``max_connections`` caps the connections served at
once: a request on one beyond them gets uvicorn's 503 and the connection is
closed.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import msgspec
import uvicorn
from litestar.types import ASGIApp, Receive, ReceiveMessage, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from serving.errors import RequestTimeoutError

from .config import ServerConfig

__all__ = ["read_deadline_middleware", "uvicorn_config"]

#: once the drain (``node.drain``, ``[server] drain_timeout_s``) has ended or cut every generation:
#: how long requests still in flight (a cut stream's error event and end record) may take to
#: finish before uvicorn cancels them
_GRACEFUL_SHUTDOWN_S = 5
#: set in a request's ASGI ``state`` by the protocol when its read deadline passed
_READ_TIMED_OUT = "bastion.read_timed_out"
_TIMEOUT_MESSAGE = "The request was not received in time; send headers and body promptly."


def uvicorn_config(app: Any, server: ServerConfig, *, port: int | None = None) -> uvicorn.Config:
    """Uvicorn's config for ``app`` under ``[server]`` (``port`` overrides it: 0 for a free one)."""
    return uvicorn.Config(
        app,
        host=server.host,
        port=server.port if port is None else port,
        http=_protocol(server.header_timeout_s, server.body_timeout_s),
        # uvicorn refuses a request once this many connections are open, counting its own
        limit_concurrency=server.max_connections + 1,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_S,
    )


def read_deadline_middleware(app: ASGIApp) -> ASGIApp:
    """A handler reading a body whose deadline passed gets ``RequestTimeoutError``, not a disconnect."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # type: ignore[comparison-overlap]
            await app(scope, receive, send)
            return

        async def receive_in_time() -> ReceiveMessage:
            message = await receive()
            if message["type"] == "http.disconnect" and scope.get("state", {}).get(_READ_TIMED_OUT):
                raise RequestTimeoutError(_TIMEOUT_MESSAGE)
            return message

        await app(scope, receive_in_time, send)

    return middleware


def _timeout_response() -> bytes:
    body = msgspec.json.encode(RequestTimeoutError(_TIMEOUT_MESSAGE).to_body())
    return (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body
    )


def _protocol(header_timeout_s: float, body_timeout_s: float) -> type[HttpToolsProtocol]:
    class Protocol(_ReadDeadlineProtocol):
        pass

    Protocol.header_timeout_s = header_timeout_s
    Protocol.body_timeout_s = body_timeout_s
    return Protocol


class _ReadDeadlineProtocol(HttpToolsProtocol):
    """Uvicorn's httptools protocol with a deadline on reading each request's headers and body."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._reading: Literal["headers", "body"] = "headers"

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm("headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:  # a later request on a kept-alive connection
            self._arm("headers")

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._arm("body")

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()

    def _arm(self, reading: Literal["headers", "body"]) -> None:
        self._disarm()
        self._reading = reading
        seconds = self.header_timeout_s if reading == "headers" else self.body_timeout_s
        self._deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle if self._reading == "body" else None
        if cycle is None:
            self.transport.write(_timeout_response())
        elif not cycle.response_started:
            # the handler waiting for the rest of the body sees a disconnect; what it then
            # tries to send is dropped, and the client gets the 408 instead
            cycle.scope["state"][_READ_TIMED_OUT] = True
            cycle.disconnected = True
            cycle.message_event.set()
            self.transport.write(_timeout_response())
        self.transport.close()
