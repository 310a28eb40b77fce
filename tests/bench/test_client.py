"""The streaming client against scripted HTTP servers on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable

import msgspec
import pytest

from bench.client import ConnectionPool, StreamClient
from bench.records import RequestRecord

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], "asyncio.Future[None] | object"]


async def _serve(script: list[bytes], gap_s: float = 0.01) -> AsyncGenerator[str, None]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        for piece in script:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(gap_s)  # separate TCP reads, to split events and characters
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()


def _chunk(b: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(b), b)


def _event(obj: object, sep: bytes = b"\n\n") -> bytes:
    return b"data: " + msgspec.json.encode(obj) + sep


async def _run(script: list[bytes], text: list[str] | None = None) -> RequestRecord:
    gen = _serve(script)
    url = await gen.__anext__()
    pool = ConnectionPool(url)
    client = StreamClient(pool, "/v1/completions")
    rec = RequestRecord(index=0, t_sched=0)
    try:
        await client.send(rec, b"{}", 10.0, text)
    finally:
        pool.close()
        await gen.aclose()
    return rec


HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


async def test_events_split_mid_character_and_odd_line_separators() -> None:
    e1 = _event({"choices": [{"text": "a\u2028b"}], "usage": {"completion_tokens": 2}})
    e2 = _event({"choices": [{"text": " \x85é€"}], "usage": {"completion_tokens": 5}}, b"\r\n\r\n")
    e3 = _event({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 5}})
    body = e1 + b": keep-alive\n\n" + e2 + e3 + b"data: [DONE]\n\n"
    cut = body.index("€".encode()) + 1  # inside the 3-byte euro sign
    # chunk boundaries and read boundaries both fall inside characters and events
    stream = _chunk(body[:7]) + _chunk(body[7:cut]) + _chunk(body[cut:]) + b"0\r\n\r\n"
    pieces = [HEAD + stream[:20], stream[20 : cut + 5], stream[cut + 5 :]]
    text: list[str] = []
    rec = await _run(pieces, text)
    assert rec.ok, rec.error
    assert "".join(text) == "a\u2028b \x85é€"
    assert rec.completion_tokens == 5 and rec.prompt_tokens == 3
    assert rec.event_tokens == [2, 3]
    assert len(rec.event_ns) == 2
    assert rec.t_first is not None and rec.t_last is not None and rec.t_first <= rec.t_last <= rec.t_close


async def test_role_only_and_empty_events_are_not_first_token() -> None:
    role = _event({"choices": [{"delta": {"role": "assistant"}}]})
    empty = _event({"choices": [{"delta": {"content": ""}}]})
    tok = _event({"choices": [{"delta": {"content": "hi"}}]})
    body = _chunk(role + empty) + _chunk(tok) + _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"
    rec = await _run([HEAD + body[:40], body[40:]])
    assert rec.ok
    assert len(rec.event_ns) == 1
    assert rec.completion_tokens is None and rec.output_tokens() == 1


async def test_http_error_and_midstream_error_are_failures() -> None:
    err = b'{"error": {"message": "overloaded"}}'
    rec = await _run([b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: %d\r\n\r\n%s" % (len(err), err)])
    assert not rec.ok and rec.status == 503 and rec.error is not None and rec.error.startswith("HTTP 503")
    mid = _chunk(_event({"choices": [{"text": "x"}]}) + _event({"error": {"message": "engine died"}}))
    rec = await _run([HEAD + mid + b"0\r\n\r\n"])
    assert not rec.ok and rec.error is not None and rec.error.startswith("stream error")
    truncated = _chunk(_event({"choices": [{"text": "x"}]}))
    rec = await _run([HEAD + truncated])  # server closes before the terminal chunk
    assert not rec.ok and rec.error is not None and rec.error.startswith("connection lost")


async def test_connect_failure_is_recorded() -> None:
    pool = ConnectionPool("http://127.0.0.1:9")  # discard port: nothing listens
    rec = RequestRecord(index=0, t_sched=0)
    await StreamClient(pool, "/v1/completions").send(rec, b"{}", 5.0)
    assert not rec.ok and rec.error is not None and rec.error.startswith("connect failed")


@pytest.mark.parametrize("n", [3])
async def test_keep_alive_reuses_one_connection(n: int) -> None:
    served = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served.append(writer)
        for _ in range(n):
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            writer.write(HEAD + _chunk(_event({"choices": [{"text": "x"}]})) + b"0\r\n\r\n")
            await writer.drain()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    pool = ConnectionPool(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    client = StreamClient(pool, "/v1/completions")
    recs = [RequestRecord(index=i, t_sched=0) for i in range(n)]
    for r in recs:
        await client.send(r, b"{}", 5.0)
    pool.close()
    server.close()
    assert all(r.ok for r in recs)
    assert len(served) == 1
    assert recs[0].connect_ns > 0 and recs[1].connect_ns == 0
