"""A fake external LLM API: a real HTTP server on 127.0.0.1, scriptable per request.

Speaks OpenAI chat completions / completions (``/v1/chat/completions``,
``/v1/completions``) and Anthropic Messages (``/v1/messages``), each as JSON or
SSE (``"stream": true``). It records every request (method, path, headers,
body) and answers each from a FIFO script of ``Reply``s (the default reply when
the script is empty): normal, a status (500, 503, 429 with ``Retry-After``),
stall before the first byte, stall mid-stream, cut stream (connection dropped),
truncated stream (clean end without the terminal event), malformed SSE JSON,
wrong content type. A closed port for "connect refused" comes from
``closed_port_url()``.

The server runs uvicorn in a background thread with its own event loop, so sync
and async tests (and benchmarks) can all use it::

    with FakeUpstream() as fake:
        fake.script(Reply(status=503), Reply(text="hi"))
        ... POST to fake.openai_base + "/chat/completions" ...
        assert len(fake.requests) == 2

Run standalone for benchmarks: ``python -m tests.fakes.upstream --port 8123``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Literal

import uvicorn

__all__ = ["FakeUpstream", "RecordedRequest", "Reply", "closed_port_url"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

Fault = Literal["none", "stall-before", "stall-mid", "cut", "truncate", "malformed", "wrong-type"]


@dataclass(frozen=True)
class Reply:
    """How to answer one request."""

    status: int = 200
    retry_after: str | None = None
    fault: Fault = "none"
    #: answer text (an error status: the error message); ``None``: the server's default text
    text: str | None = None
    #: answer with the last user message's text (to see what the upstream received, e.g. placeholders)
    echo: bool = False
    prompt_tokens: int = 11
    completion_tokens: int | None = None  # None: number of pieces sent
    #: chunks sent before a mid-stream fault
    after_chunks: int = 2
    stall_s: float = 60.0
    #: a tool call to answer with: (id, name, JSON arguments)
    tool_call: tuple[str, str, str] | None = None
    finish: str | None = None  # None: "stop"/"end_turn", or tool calls'
    #: pause between stream events (each then arrives in its own read)
    gap_s: float = 0.0
    #: pause before the first event that carries output (text or a tool call): an injected TTFT
    ttft_s: float = 0.0
    #: pause before each later event that carries output: injected inter-token latencies, one per
    #: event (the last repeats; empty: none)
    itl_s: tuple[float, ...] = ()
    #: send the whole stream in one write (its events then arrive in one read)
    one_write: bool = False
    #: hold the stream before event ``after_chunks`` until this is set (from any thread; at most
    #: ``stall_s``): a stream the test keeps in flight as long as it needs
    hold: threading.Event | None = None


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    #: the client's (host, port): equal ports mean a reused keep-alive connection
    client: tuple[str, int] = ("", 0)
    at: float = field(default_factory=time.monotonic)

    def json(self) -> Any:
        return json.loads(self.body)


def closed_port_url() -> str:
    """A loopback URL where nothing listens (connect refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _pieces(text: str) -> list[str]:
    return re.findall(r"\S+\s*|\s+", text) or [""]


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return "".join(b.get("text", "") for b in content if isinstance(b, dict))
    return str(body.get("prompt", ""))


class _Cut(Exception):
    """Raised inside the ASGI app to make uvicorn drop the connection mid-response."""


class FakeUpstream:
    def __init__(self, *, text: str = "Hello from the fake upstream, streaming a short answer.") -> None:
        self.default = Reply(text=text)
        self._lock = threading.Lock()
        self._script: deque[Reply] = deque()
        self._requests: list[RecordedRequest] = []
        self._disconnects = 0
        self._thread: threading.Thread | None = None
        self._server: uvicorn.Server | None = None
        self.port = 0

    # -- control ---------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base(self) -> str:
        return self.url + "/v1"

    @property
    def anthropic_base(self) -> str:
        return self.url

    def script(self, *replies: Reply) -> None:
        with self._lock:
            self._script.extend(replies)

    def reset(self) -> None:
        with self._lock:
            self._script.clear()
            self._requests.clear()
            self._disconnects = 0

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    async def wait_for_requests(self, n: int, *, timeout: float = 10.0) -> list[RecordedRequest]:
        """Wait (with a deadline) until ``n`` requests have been recorded."""
        deadline = time.monotonic() + timeout
        while len(self.requests) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"fake upstream saw {len(self.requests)} requests, wanted {n}")
            await asyncio.sleep(0.005)
        return self.requests

    def start(self, port: int = 0) -> FakeUpstream:
        # proto=IPPROTO_TCP so the event loop sets TCP_NODELAY on accepted connections (it checks the
        # proto); without it Nagle and delayed ACKs add 40 ms to every keep-alive response.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app,
            interface="asgi3",
            log_level="critical",
            lifespan="off",
            access_log=False,
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        server = self._server
        self._thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("fake upstream did not start")
            time.sleep(0.002)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._server.force_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def disconnects(self) -> int:
        """Stalled requests whose client went away (an aborted upstream call)."""
        with self._lock:
            return self._disconnects

    async def wait_for_disconnects(self, n: int, *, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.disconnects < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"fake upstream saw {self.disconnects} disconnects, wanted {n}")
            await asyncio.sleep(0.005)

    # -- the ASGI app ----------------------------------------------------------------------------

    async def _stall(self, receive: Receive, seconds: float) -> None:
        """Hold the request until the client goes away (or ``seconds`` pass)."""
        try:
            async with asyncio.timeout(seconds):
                while (await receive())["type"] != "http.disconnect":
                    pass
        except TimeoutError:
            return
        with self._lock:
            self._disconnects += 1

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        path = scope["path"]
        with self._lock:
            client = tuple(scope.get("client") or ("", 0))
            self._requests.append(RecordedRequest(scope["method"], path, headers, body, client))  # type: ignore[arg-type]
            reply = self._script.popleft() if self._script else self.default
        if path == "/v1/models":
            await _json(send, 200, {"object": "list", "data": []})
            return
        if path not in ("/v1/chat/completions", "/v1/completions", "/v1/messages"):
            await _json(send, 404, {"error": {"message": "not found"}})
            return
        try:
            request = json.loads(body)
        except ValueError:
            await _json(send, 400, {"error": {"message": "bad json"}})
            return
        if reply.fault == "stall-before":
            await self._stall(receive, reply.stall_s)
            return
        if reply.status != 200:
            extra = [(b"retry-after", reply.retry_after.encode())] if reply.retry_after else []
            message = reply.text or f"scripted {reply.status}"
            await _json(send, reply.status, {"error": {"message": message}}, extra)
            return
        text = (
            _last_user_text(request)
            if reply.echo
            else (self.default.text or "" if reply.text is None else reply.text)
        )
        pieces = _pieces(text)
        anthropic = path == "/v1/messages"
        if not request.get("stream"):
            payload = _anthropic_json if anthropic else _openai_json
            await _json(send, 200, payload(request, reply, text, len(pieces)))
            return
        if reply.fault == "wrong-type":
            await _json(send, 200, {"not": "a stream"})
            return
        events = (_anthropic_events if anthropic else _openai_events)(request, reply, pieces, path)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                ],
            }
        )
        faulty = reply.fault in ("stall-mid", "cut", "truncate", "malformed")
        if reply.one_write and not faulty:
            await send(
                {"type": "http.response.body", "body": b"".join(e for e, _ in events), "more_body": False}
            )
            return
        last = len(events) - 1
        outputs = 0
        # output events are due on one schedule from the request's arrival, so a late wake-up on a
        # busy host delays one event without lengthening every later gap
        clock = asyncio.get_running_loop().time
        due_at = clock()
        for i, (event, output) in enumerate(events):
            if output:
                due_at += _pause_before_output(reply, outputs)
                outputs += 1
                if due_at > clock():
                    await asyncio.sleep(due_at - clock())
            if reply.hold is not None and i == reply.after_chunks:
                await asyncio.to_thread(reply.hold.wait, reply.stall_s)
            if faulty and i == reply.after_chunks:
                if reply.fault == "stall-mid":
                    await self._stall(receive, reply.stall_s)
                    return
                if reply.fault == "cut":
                    raise _Cut("scripted cut")
                if reply.fault == "truncate":
                    break
                event = b"data: {not json\n\n"
            if reply.gap_s and i:
                await asyncio.sleep(reply.gap_s)  # scripted pacing, like a model decoding
            # The last event goes out with the end of the body, in one write, as real servers do.
            await send({"type": "http.response.body", "body": event, "more_body": i < last or faulty})
        if faulty:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _json(
    send: Send, status: int, payload: Any, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
    await send({"type": "http.response.body", "body": body})


def _pause_before_output(reply: Reply, n: int) -> float:
    """The scripted pause before the stream's output event number ``n`` (0: the first)."""
    if n == 0:
        return reply.ttft_s
    return reply.itl_s[min(n, len(reply.itl_s)) - 1] if reply.itl_s else 0.0


def _sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n".encode()


def _usage(reply: Reply, n: int) -> tuple[int, int]:
    return reply.prompt_tokens, n if reply.completion_tokens is None else reply.completion_tokens


def _openai_events(
    request: dict[str, Any], reply: Reply, pieces: list[str], path: str
) -> list[tuple[bytes, bool]]:
    """The stream's events, each with whether it carries output."""
    model = request.get("model", "")
    chat = path.endswith("/chat/completions")
    base = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": 0,
        "model": model,
    }
    out: list[tuple[bytes, bool]] = []
    count = _choice_count(request)
    offsets = [0] * count
    for piece in pieces:
        for index in range(count):  # several choices (n, several prompts): a chunk each, same text
            choice: dict[str, Any] = (
                {"index": index, "delta": {"content": piece}, "finish_reason": None}
                if chat
                else {"index": index, "text": piece, "finish_reason": None}
            )
            if request.get("logprobs"):
                choice["logprobs"] = _logprobs(request, piece, offsets[index], chat=chat)
                offsets[index] += len(piece)
            out.append((_sse({**base, "choices": [choice]}), bool(piece)))
    finish = reply.finish or "stop"
    if reply.tool_call is not None:
        call_id, name, arguments = reply.tool_call
        half = len(arguments) // 2
        for i, frag in enumerate((arguments[:half], arguments[half:])):
            call = {"index": 0, "function": {"arguments": frag}}
            if i == 0:
                call.update(id=call_id, type="function")
                call["function"]["name"] = name
            out.append(
                (
                    _sse(
                        {
                            **base,
                            "choices": [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": None}],
                        }
                    ),
                    True,
                )
            )
        finish = reply.finish or "tool_calls"
    for index in range(count):
        final = (
            {"index": index, "delta": {}, "finish_reason": finish}
            if chat
            else {"index": index, "text": "", "finish_reason": finish}
        )
        out.append((_sse({**base, "choices": [final]}), False))
    if (request.get("stream_options") or {}).get("include_usage"):
        p, c = _usage(reply, len(pieces) * count)
        usage = {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
        out.append((_sse({**base, "choices": [], "usage": usage}), False))
    out.append((b"data: [DONE]\n\n", False))
    return out


def _choice_count(request: dict[str, Any]) -> int:
    """Choices an OpenAI request asks for: ``n`` for each prompt."""
    prompt = request.get("prompt")
    return int(request.get("n") or 1) * (len(prompt) if isinstance(prompt, list) else 1)


#: the log probability the fake reports for every token
FAKE_LOGPROB = -0.5


def _logprobs(request: dict[str, Any], piece: str, offset: int, *, chat: bool) -> dict[str, Any]:
    """A piece's log probabilities, as chat or legacy completions report them; every alternative is
    the piece itself."""
    if chat:
        top = [{"token": piece, "logprob": FAKE_LOGPROB, "bytes": list(piece.encode())}] * int(
            request.get("top_logprobs") or 0
        )
        entry = {"token": piece, "logprob": FAKE_LOGPROB, "bytes": list(piece.encode()), "top_logprobs": top}
        return {"content": [entry], "refusal": None}
    return {
        "tokens": [piece],
        "token_logprobs": [FAKE_LOGPROB],
        "top_logprobs": [{piece: FAKE_LOGPROB}],
        "text_offset": [offset],
    }


def _anthropic_events(
    request: dict[str, Any], reply: Reply, pieces: list[str], path: str
) -> list[tuple[bytes, bool]]:
    """The stream's events, each with whether it carries output."""
    p, c = _usage(reply, len(pieces))
    output: set[int] = set()
    out = [
        _sse(
            {
                "type": "message_start",
                "message": {
                    "id": "msg_fake",
                    "type": "message",
                    "role": "assistant",
                    "model": request.get("model", ""),
                    "content": [],
                    "stop_reason": None,
                    "usage": {"input_tokens": p, "output_tokens": 1},
                },
            },
            "message_start",
        )
    ]
    out.append(
        _sse(
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            "content_block_start",
        )
    )
    out.append(_sse({"type": "ping"}, "ping"))
    for piece in pieces:
        if piece:
            output.add(len(out))
        out.append(
            _sse(
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}},
                "content_block_delta",
            )
        )
    out.append(_sse({"type": "content_block_stop", "index": 0}, "content_block_stop"))
    stop = reply.finish or "end_turn"
    if reply.tool_call is not None:
        call_id, name, arguments = reply.tool_call
        out.append(
            _sse(
                {
                    "type": "content_block_start",
                    "index": 1,
                    "content_block": {"type": "tool_use", "id": call_id, "name": name, "input": {}},
                },
                "content_block_start",
            )
        )
        half = len(arguments) // 2
        for frag in (arguments[:half], arguments[half:]):
            output.add(len(out))
            out.append(
                _sse(
                    {
                        "type": "content_block_delta",
                        "index": 1,
                        "delta": {"type": "input_json_delta", "partial_json": frag},
                    },
                    "content_block_delta",
                )
            )
        out.append(_sse({"type": "content_block_stop", "index": 1}, "content_block_stop"))
        stop = reply.finish or "tool_use"
    out.append(
        _sse(
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": c},
            },
            "message_delta",
        )
    )
    out.append(_sse({"type": "message_stop"}, "message_stop"))
    return [(event, i in output) for i, event in enumerate(out)]


def _openai_json(request: dict[str, Any], reply: Reply, text: str, n: int) -> dict[str, Any]:
    p, c = _usage(reply, n)
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if reply.tool_call is not None:
        call_id, name, arguments = reply.tool_call
        message["tool_calls"] = [
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
        ]
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": request.get("model", ""),
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": reply.finish or ("tool_calls" if reply.tool_call else "stop"),
            }
        ],
        "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c},
    }


def _anthropic_json(request: dict[str, Any], reply: Reply, text: str, n: int) -> dict[str, Any]:
    p, c = _usage(reply, n)
    content: list[dict[str, Any]] = [{"type": "text", "text": text}]
    if reply.tool_call is not None:
        call_id, name, arguments = reply.tool_call
        content.append({"type": "tool_use", "id": call_id, "name": name, "input": json.loads(arguments)})
    return {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": request.get("model", ""),
        "content": content,
        "stop_reason": reply.finish or ("tool_use" if reply.tool_call else "end_turn"),
        "stop_sequence": None,
        "usage": {"input_tokens": p, "output_tokens": c},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the fake upstream until interrupted.")
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--text", default=None)
    args = parser.parse_args()
    fake = FakeUpstream(text=args.text) if args.text else FakeUpstream()
    fake.start(args.port)
    print(f"fake upstream on {fake.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        fake.stop()


if __name__ == "__main__":
    main()
