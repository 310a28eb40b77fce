"""One provider's HTTP connection: shared client, keys, deadlines, status mapping.

Each external provider owns one ``aiohttp.ClientSession`` (a connection pool): on the
relay path its client costs a fifth of httpx's CPU per request (measured in the
commit that switched).

Four deadlines bound a call: connect, first byte (headers and the first body
bytes, which include the upstream's prefill), between chunks, and total. They
are enforced per await, never around a ``yield``, so a deadline can only
cancel our own read and never the consumer's code.

Keys come from an environment variable or a file and are scrubbed from every
error message we build; upstream error bodies are never copied into messages.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Literal

import aiohttp

from router.config import ProviderConfig
from router.sse import SseEvent, SseParser
from serving.errors import (
    BadRequestError,
    BastionError,
    UpstreamError,
    UpstreamRateLimitedError,
    UpstreamTimeoutError,
)
from serving.protocol import Health, ProviderInfo

__all__ = ["ExternalProvider", "Upstream", "fold_batch", "load_api_key", "parse_retry_after"]

# Upstream statuses that mean the request itself is bad: another provider would refuse it too.
_CLIENT_FAULT = frozenset({400, 413, 422})
# How long to wait for the end of the body after the terminal event.
_DRAIN_S = 0.5


def load_api_key(config: ProviderConfig, environ: Mapping[str, str] | None = None) -> str | None:
    """The provider's key from its environment variable or file; ``None`` when it needs none."""
    env = os.environ if environ is None else environ
    if config.api_key_env is not None:
        key = env.get(config.api_key_env, "").strip()
        if not key:
            raise ValueError(f"provider {config.name!r}: environment variable {config.api_key_env} is empty")
        return key
    if config.api_key_file is not None:
        try:
            key = Path(config.api_key_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(
                f"provider {config.name!r}: cannot read api_key_file ({type(exc).__name__})"
            ) from None
        if not key:
            raise ValueError(f"provider {config.name!r}: api_key_file is empty")
        return key
    return None


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


class Upstream:
    """POST a JSON body and iterate the SSE events of the answer, under the four deadlines.

    The aiohttp session (one connection pool per provider) is made on first use, inside
    the event loop that will use it.
    """

    def __init__(
        self, config: ProviderConfig, *, auth_headers: Mapping[str, str], secret: str | None
    ) -> None:
        self.name = config.name
        self._t = config.timeouts
        self._secret = secret
        self._base = config.base_url.rstrip("/")
        self._query = dict(config.query)
        self._proxy = config.proxy
        self._max_connections = config.max_connections
        self._headers = {"content-type": "application/json", "accept": "text/event-stream", **auth_headers}
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0),
                headers=self._headers,
                # our own deadlines below; aiohttp only bounds the TCP connect
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._t.connect_s),
                trust_env=False,  # environment proxies and .netrc are ignored on purpose
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _error(self, cls: type[BastionError], message: str, reason: str, **kw: float | None) -> BastionError:
        text = f"provider {self.name!r}: {message}"
        if self._secret:
            text = text.replace(self._secret, "[REDACTED]")
        return cls(text, reason=reason, retry_after_s=kw.get("retry_after_s"))

    async def batches(
        self, path: str, body: bytes, *, terminal: Callable[[SseEvent], bool]
    ) -> AsyncIterator[list[SseEvent]]:
        """Send ``body`` to ``path`` and yield its SSE events, one list per network read;
        raise from the taxonomy on failure.

        Events that arrived together are handed over together, so a provider can forward
        them as one delta (one write to the client instead of one per token), adding no
        delay. The batch holding the ``terminal`` event ends with it; the rest of the body
        (the chunked terminator) is then read briefly, so the connection goes back to the
        pool instead of being closed.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._t.total_s
        try:
            async with asyncio.timeout(min(self._t.first_byte_s, self._t.total_s)):
                response = await self._client().post(
                    self._base + path,
                    data=body,
                    params=self._query or None,
                    proxy=self._proxy,
                    allow_redirects=False,
                )
        except aiohttp.ConnectionTimeoutError:  # a TimeoutError too: tell it apart first
            raise self._error(UpstreamTimeoutError, "connect timed out", "connect-timeout") from None
        except TimeoutError:
            raise self._error(
                UpstreamTimeoutError, "no response before the first-byte deadline", "first-byte-timeout"
            ) from None
        except aiohttp.ClientConnectorError:
            raise self._error(UpstreamError, "connection failed", "connect-failed") from None
        except aiohttp.ClientError as exc:
            raise self._error(
                UpstreamError, f"transport error ({type(exc).__name__})", "transport-error"
            ) from None
        try:
            self._check_response(response)
            content = response.content
            parser = SseParser()
            limit = self._t.first_byte_s
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise self._error(UpstreamTimeoutError, "total deadline passed", "total-timeout")
                try:
                    async with asyncio.timeout(min(limit, remaining)):
                        chunk = await content.readany()
                except TimeoutError:
                    raise self._error(UpstreamTimeoutError, "stream stalled", "stream-stalled") from None
                except aiohttp.ClientError as exc:
                    raise self._error(
                        UpstreamError, f"stream cut ({type(exc).__name__})", "stream-cut"
                    ) from None
                if not chunk:
                    break
                limit = self._t.between_chunks_s
                try:
                    events = parser.feed(chunk)
                except ValueError:
                    raise self._error(UpstreamError, "oversized SSE event", "malformed-stream") from None
                for i, event in enumerate(events):
                    if terminal(event):
                        yield events[: i + 1]
                        await self._drain(content, loop.time() + _DRAIN_S)
                        return
                if events:
                    yield events
        finally:
            # Fully read: the connection goes back to the pool; otherwise it is closed,
            # which is also how an abandoned stream stops the upstream's generation.
            response.release()

    @staticmethod
    async def _drain(content: aiohttp.StreamReader, deadline: float) -> None:
        try:
            async with asyncio.timeout_at(deadline):
                while await content.readany():
                    pass
        except (TimeoutError, aiohttp.ClientError):
            pass  # the answer is complete; the connection is simply not reused

    def _check_response(self, response: aiohttp.ClientResponse) -> None:
        status = response.status
        if status == 429:
            retry = parse_retry_after(response.headers.get("retry-after"))
            raise self._error(
                UpstreamRateLimitedError, "rate limited (429)", "upstream-429", retry_after_s=retry
            )
        if status in _CLIENT_FAULT:
            raise self._error(BadRequestError, f"refused the request ({status})", "upstream-rejected")
        if status >= 300:
            raise self._error(UpstreamError, f"answered {status}", f"upstream-{status}")
        ctype = response.headers.get("content-type", "")
        if not ctype.startswith("text/event-stream"):
            raise self._error(UpstreamError, "answered with a non-SSE content type", "bad-content-type")


def fold_batch(
    batch: list[SseEvent], absorb: Callable[[SseEvent, list[str]], UpstreamError | None]
) -> tuple[str, UpstreamError | None]:
    """Fold the events of one network read with ``absorb`` (which appends their text to the
    list it is given and returns the error an event carries); the joined text of the events
    before any error, so it can go out as one delta ahead of the error, and that error."""
    parts: list[str] = []
    for event in batch:
        failure = absorb(event, parts)
        if failure is not None:
            return "".join(parts), failure
    return "".join(parts), None


class ExternalProvider:
    """What every external API provider shares: its upstream client, description and health.

    Subclasses set ``kind`` and implement ``stream``.
    """

    kind: Literal["openai", "anthropic"]

    def __init__(self, config: ProviderConfig, upstream: Upstream) -> None:
        self._config = config
        self._upstream = upstream
        self._last_ok: float | None = None

    def describe(self) -> ProviderInfo:
        models = tuple(self._config.models)
        return ProviderInfo(
            name=self._config.name,
            kind=self.kind,
            region=self._config.region,
            models=models,
            revisions={m: m for m in models},
        )

    async def health(self) -> Health:
        # Passive: probing a paid external API would cost money and leak traffic; breakers judge it.
        return Health(healthy=True, detail="passive", last_ok_s=self._last_ok)

    async def aclose(self) -> None:
        await self._upstream.aclose()
