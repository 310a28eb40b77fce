"""``bench mock``: an OpenAI-compatible streaming server with injected latencies.

It exists to measure ``bench`` itself, so its own timing must be exact:

- every write of a response is pre-encoded when the request arrives, and sent by one
  scheduler on absolute deadlines (``t_request + TTFT + sum of per-token ITLs``),
  so lateness never accumulates along a stream;
- deadlines fire from a ``timerfd`` (``bench.timer``), not from asyncio timers
  that round to whole milliseconds, and without busy-waiting, which would steal the
  CPU the client under test needs;
- it counts how late its own writes left (``mock_write_late_*`` on ``/metrics``),
  so a test can tell a contended machine from an inaccurate client.

Latency semantics: the first write leaves at ``t_request + TTFT`` and carries the
first ``tokens_per_event * events_per_write`` tokens; each later write leaves once
its tokens' per-token ITL samples have elapsed. So token-normalised ITL equals the
injected ITL exactly, whatever the batching.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import re
import time
from typing import IO, Annotated, Any, cast

import msgspec

from bench.timer import DeadlineTimer

__all__ = ["Dist", "MockConfig", "MockServer", "parse_dist", "serve_mock"]

_MS = 1_000_000


class Dist(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A latency distribution in milliseconds: const, uniform(a,b), normal(mean,std), exp(mean)."""

    kind: str = "const"
    a: float = 0.0
    b: float = 0.0

    def sample_ns(self, rng: random.Random) -> int:
        if self.kind == "const":
            v = self.a
        elif self.kind == "uniform":
            v = rng.uniform(self.a, self.b)
        elif self.kind == "normal":
            v = max(0.0, rng.gauss(self.a, self.b))
        else:
            v = rng.expovariate(1.0 / self.a) if self.a > 0 else 0.0
        return int(v * _MS)


def parse_dist(spec: str) -> Dist:
    """``"20"``/``"const:20"``, ``"uniform:10:30"``, ``"normal:20:5"``, ``"exp:20"`` (ms)."""
    parts = spec.split(":")
    if len(parts) == 1:
        parts = ["const", parts[0]]
    kind, *nums = parts
    expect = {"const": 1, "exp": 1, "uniform": 2, "normal": 2}
    if kind not in expect or len(nums) != expect[kind]:
        raise ValueError(f"bad distribution {spec!r}; use const:MS, exp:MS, uniform:A:B, normal:MEAN:STD")
    vals = [float(x) for x in nums]
    if any(v < 0 for v in vals):
        raise ValueError(f"negative latency in {spec!r}")
    return msgspec.convert({"kind": kind, "a": vals[0], "b": vals[1] if len(vals) > 1 else 0.0}, Dist)


Frac = Annotated[float, msgspec.Meta(ge=0, le=1)]


class MockConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What the mock injects. Latencies in ms; error rates are per-request probabilities."""

    ttft: Dist = Dist(kind="const", a=20.0)
    itl: Dist = Dist(kind="const", a=10.0)
    tokens_per_event: Annotated[int, msgspec.Meta(ge=1)] = 1
    events_per_write: Annotated[int, msgspec.Meta(ge=1)] = 1
    usage: bool = True
    error_rate: Frac = 0.0
    midstream_error_rate: Frac = 0.0
    max_concurrency: Annotated[int, msgspec.Meta(ge=1)] | None = None
    default_max_tokens: Annotated[int, msgspec.Meta(ge=1)] = 16
    odd_text: bool = True
    seed: int = 0
    gpu_utilization: Frac = 0.5
    gpu_memory_bytes: int = 8 << 30


class _Request(msgspec.Struct):
    model: str = "mock"
    prompt: str | list[Any] | None = None
    messages: list[dict[str, Any]] | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None


_REQ = msgspec.json.Decoder(_Request)
_ENC = msgspec.json.Encoder()
# One token in every seven carries U+2028 or NEL, which break str.splitlines()-based clients.
_ODD = ("\u2028", "\x85")


def _token_text(i: int, odd: bool) -> str:
    if odd and i % 7 == 3:
        return f" w{i % 50}{_ODD[i % 2]}"
    return f" w{i % 50}"


def _chunked(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _sse(obj: Any) -> bytes:
    return b"data: " + _ENC.encode(obj) + b"\n\n"


class _Scheduler:
    """Sends queued writes at absolute monotonic deadlines, and keeps score of its own lateness."""

    def __init__(self) -> None:
        self._timer: DeadlineTimer | None = None
        # Self-check: how late the mock's own writes left, so tests can tell mock error from client error.
        self.writes = 0
        self.late_max_ns = 0
        self.late_over_500us = 0

    def start(self) -> None:
        self._timer = DeadlineTimer()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.close()

    def push(
        self,
        deadline: int,
        tr: asyncio.Transport,
        data: bytes,
        done: asyncio.Future[None] | None,
        sent: list[int],
    ) -> None:
        assert self._timer is not None
        self._timer.call_at_ns(deadline, self._write, deadline, tr, data, done, sent)

    def _write(
        self,
        deadline: int,
        tr: asyncio.Transport,
        data: bytes,
        done: asyncio.Future[None] | None,
        sent: list[int],
    ) -> None:
        now = time.monotonic_ns()
        sent.append(now)
        late = now - deadline
        self.writes += 1
        self.late_max_ns = max(self.late_max_ns, late)
        self.late_over_500us += late > 500_000
        if not tr.is_closing():
            tr.write(data)
        if done is not None and not done.done():
            done.set_result(None)


class MockServer:
    """The mock's state: config, RNG, request counter, scheduler and the FIFO gate."""

    def __init__(self, config: MockConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.counter = itertools.count()
        self.scheduler = _Scheduler()
        self.gate = asyncio.Semaphore(config.max_concurrency) if config.max_concurrency else None
        self.requests = 0
        self.log: IO[bytes] | None = None

    def plan(self, body: bytes, chat: bool) -> tuple[list[tuple[int, bytes]], int] | bytes:
        """Offsets (ns from arrival) and bytes of each write, or an error response."""
        cfg = self.config
        try:
            req = _REQ.decode(body)
        except msgspec.DecodeError as exc:
            return _response(400, {"error": {"message": str(exc), "type": "invalid_request_error"}})
        n = next(self.counter)
        self.requests += 1
        rng = random.Random(f"{cfg.seed}:{n}")
        if cfg.error_rate and rng.random() < cfg.error_rate:
            return _response(500, {"error": {"message": "injected failure", "type": "server_error"}})
        max_tokens = req.max_tokens or req.max_completion_tokens or cfg.default_max_tokens
        opts = req.stream_options or {}
        want_usage = cfg.usage and bool(opts.get("include_usage"))
        continuous = cfg.usage and bool(opts.get("continuous_usage_stats"))
        if req.messages is not None:
            prompt_words = sum(len(str(m.get("content", "")).split()) for m in req.messages)
        else:
            prompt_words = len(str(req.prompt or "").split())
        obj = "chat.completion.chunk" if chat else "text_completion"
        rid = f"mock-{n}"
        per_write = cfg.tokens_per_event * cfg.events_per_write
        fail_at = -1
        if cfg.midstream_error_rate and rng.random() < cfg.midstream_error_rate:
            fail_at = max(1, max_tokens // 2)
        writes: list[tuple[int, bytes]] = []
        t = cfg.ttft.sample_ns(rng)
        produced = 0
        buf = bytearray()
        if chat:
            buf += _sse(
                {
                    "id": rid,
                    "object": obj,
                    "model": req.model,
                    "choices": [{"index": 0, "delta": {"role": "assistant"}}],
                }
            )
        while produced < max_tokens:
            if produced == fail_at:
                buf += _sse({"error": {"message": "injected mid-stream failure", "type": "server_error"}})
                writes.append((t, _chunked(bytes(buf)) + b"0\r\n\r\n"))
                return writes, n
            if produced:
                t += sum(cfg.itl.sample_ns(rng) for _ in range(min(per_write, max_tokens - produced)))
            for _ in range(cfg.events_per_write):
                if produced >= max_tokens:
                    break
                k = min(cfg.tokens_per_event, max_tokens - produced)
                text = "".join(_token_text(produced + j, cfg.odd_text) for j in range(k))
                produced += k
                last = produced >= max_tokens
                choice: dict[str, Any] = {"index": 0, "finish_reason": "length" if last else None}
                if chat:
                    choice["delta"] = {"content": text}
                else:
                    choice["text"] = text
                chunk: dict[str, Any] = {"id": rid, "object": obj, "model": req.model, "choices": [choice]}
                if continuous:
                    chunk["usage"] = {
                        "prompt_tokens": prompt_words,
                        "completion_tokens": produced,
                        "total_tokens": prompt_words + produced,
                    }
                buf += _sse(chunk)
            if produced >= max_tokens:
                if want_usage:
                    buf += _sse(
                        {
                            "id": rid,
                            "object": obj,
                            "model": req.model,
                            "choices": [],
                            "usage": {
                                "prompt_tokens": prompt_words,
                                "completion_tokens": produced,
                                "total_tokens": prompt_words + produced,
                            },
                        }
                    )
                buf += b"data: [DONE]\n\n"
                writes.append((t, _chunked(bytes(buf)) + b"0\r\n\r\n"))
            else:
                writes.append((t, _chunked(bytes(buf))))
            buf = bytearray()
        return writes, n

    def metrics_text(self) -> bytes:
        cfg = self.config
        return (
            "# TYPE bastion_gpu_utilization_ratio gauge\n"
            f'bastion_gpu_utilization_ratio{{gpu="0"}} {cfg.gpu_utilization}\n'
            "# TYPE bastion_gpu_memory_used_bytes gauge\n"
            f'bastion_gpu_memory_used_bytes{{gpu="0"}} {cfg.gpu_memory_bytes}\n'
            "# TYPE mock_requests_total counter\n"
            f"mock_requests_total {self.requests}\n"
            "# TYPE mock_writes_total counter\n"
            f"mock_writes_total {self.scheduler.writes}\n"
            "# TYPE mock_write_late_max_seconds gauge\n"
            f"mock_write_late_max_seconds {self.scheduler.late_max_ns / 1e9}\n"
            "# TYPE mock_write_late_over_500us_total counter\n"
            f"mock_write_late_over_500us_total {self.scheduler.late_over_500us}\n"
        ).encode()


class _LogLine(msgspec.Struct):
    """One served stream: when it arrived, when each write was due and when it left."""

    n: int
    head: str
    t_arrival: int
    deadlines: list[int]
    sent: list[int]


def _prompt_head(body: bytes) -> str:
    try:
        req = _REQ.decode(body)
    except msgspec.DecodeError:
        return ""
    text = req.prompt if isinstance(req.prompt, str) else str((req.messages or [{}])[-1].get("content", ""))
    return text.split(" ", 1)[0][:40]


_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
_HEAD_RE = re.compile(rb"content-length:\s*(\d+)", re.IGNORECASE)


def _response(status: int, obj: Any, ctype: bytes = b"application/json") -> bytes:
    body = obj if isinstance(obj, bytes) else _ENC.encode(obj)
    reason = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 500: b"Internal Server Error"}[status]
    return b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s" % (
        status,
        reason,
        ctype,
        len(body),
        body,
    )


class _MockConn(asyncio.Protocol):
    def __init__(self, server: MockServer) -> None:
        self.server = server
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.busy: asyncio.Task[None] | None = None
        self.queue: list[tuple[int, bytes, bytes]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        t = time.monotonic_ns()
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end])
            m = _HEAD_RE.search(head)
            length = int(m.group(1)) if m else 0
            if len(self.buf) < end + 4 + length:
                return
            body = bytes(self.buf[end + 4 : end + 4 + length])
            del self.buf[: end + 4 + length]
            self.queue.append((t, head, body))
            if self.busy is None or self.busy.done():
                self.busy = asyncio.get_running_loop().create_task(self._serve_queue())

    async def _serve_queue(self) -> None:
        while self.queue and self.transport is not None and not self.transport.is_closing():
            t, head, body = self.queue.pop(0)
            await self._serve(t, head, body)

    async def _serve(self, t_arrival: int, head: bytes, body: bytes) -> None:
        tr = self.transport
        assert tr is not None
        line = head.split(b"\r\n", 1)[0].split(b" ")
        method, path = line[0], line[1].split(b"?")[0] if len(line) > 1 else b"/"
        if method == b"GET":
            if path == b"/metrics":
                tr.write(_response(200, self.server.metrics_text(), b"text/plain; version=0.0.4"))
            elif path in (b"/health", b"/v1/models"):
                tr.write(_response(200, {"object": "list", "data": [{"id": "mock", "object": "model"}]}))
            else:
                tr.write(_response(404, {"error": {"message": "not found"}}))
            return
        if path not in (b"/v1/completions", b"/v1/chat/completions"):
            tr.write(_response(404, {"error": {"message": "not found"}}))
            return
        gate = self.server.gate
        if gate is not None:
            await gate.acquire()
            t_arrival = time.monotonic_ns()  # service starts when a slot frees (server-side FIFO)
        try:
            plan = self.server.plan(body, chat=path == b"/v1/chat/completions")
            if isinstance(plan, bytes):
                tr.write(plan)
                return
            writes, _ = plan
            tr.write(_SSE_HEAD)
            loop = asyncio.get_running_loop()
            done: asyncio.Future[None] = loop.create_future()
            sched = self.server.scheduler
            sent: list[int] = []
            for i, (off, data) in enumerate(writes):
                sched.push(t_arrival + off, tr, data, done if i == len(writes) - 1 else None, sent)
            await done
            if self.server.log is not None:
                self.server.log.write(
                    _ENC.encode(
                        _LogLine(
                            n=plan[1],
                            head=_prompt_head(body),
                            t_arrival=t_arrival,
                            deadlines=[t_arrival + off for off, _ in writes],
                            sent=sent,
                        )
                    )
                    + b"\n"
                )
        finally:
            if gate is not None:
                gate.release()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve_mock(
    config: MockConfig,
    host: str = "127.0.0.1",
    port: int = 0,
    ready: asyncio.Future[int] | None = None,
    log_path: str | None = None,
) -> None:
    """Serve until cancelled; ``ready`` receives the bound port.

    ``log_path``: a JSONL line per finished stream with its due and actual write
    times (``_LogLine``), to separate the mock's own lateness from the client's.
    """
    server = MockServer(config)
    if log_path:
        server.log = open(log_path, "wb", buffering=0)  # noqa: ASYNC230 - once, before serving
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(lambda: _MockConn(server), host, port, backlog=4096)
    bound = srv.sockets[0].getsockname()[1]
    server.scheduler.start()
    if ready is not None:
        ready.set_result(bound)
    try:
        async with srv:
            await srv.serve_forever()
    finally:
        server.scheduler.close()
        if server.log is not None:
            server.log.close()
