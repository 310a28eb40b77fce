"""The node's HTTP server bounds slow clients: read deadlines and a connection cap, over real sockets."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import RunningNode, bearer, node_setup, running_node

HEADER_S = 1.0
BODY_S = 1.0
#: how late past its deadline a connection may close on a busy test host
MARGIN_S = 2.0


async def _connect(node: RunningNode) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    url = urlsplit(node.url)
    assert url.hostname is not None and url.port is not None
    return await asyncio.open_connection(url.hostname, url.port)


async def _answer_and_close(reader: asyncio.StreamReader, within_s: float) -> bytes:
    """Everything the server sends until it closes the connection, which must happen in time."""
    async with asyncio.timeout(within_s):
        return await reader.read()  # until EOF


def _head(key: str, length: int) -> bytes:
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: node\r\nauthorization: Bearer {key}\r\n"
        f"content-type: application/json\r\ncontent-length: {length}\r\n\r\n"
    ).encode()


async def test_stalled_bodies_and_headers_get_408_and_are_closed(tmp_path: Path) -> None:
    setup = node_setup(
        tmp_path, audit=False, extra=f"[server]\nheader_timeout_s = {HEADER_S}\nbody_timeout_s = {BODY_S}\n"
    )
    key = setup.keys["acme"]
    async with running_node(setup, {}) as node:
        started = time.monotonic()
        bodies = []
        for i in range(50):  # announce 1,000 bytes, send 9 (half with a key the node refuses at once)
            reader, writer = await _connect(node)
            writer.write(_head(key if i % 2 else "bst_wrong_key", 1000) + b'{"model":')
            bodies.append((i % 2 == 1, reader, writer))
        heads = []
        for partial in (b"", b"POST /v1/chat/completions HTTP/1.1\r\nhost: node\r\n"):  # silent; headers cut
            reader, writer = await _connect(node)
            writer.write(partial)
            heads.append((reader, writer))
        # meanwhile a normal request is served
        async with httpx.AsyncClient(base_url=node.url, timeout=10) as http:
            r = await http.get("/v1/models", headers=bearer(key))
        assert r.status_code == 200, r.text
        assert time.monotonic() - started < BODY_S  # while the stalled ones were still open

        for authenticated, reader, writer in bodies:
            answer = await _answer_and_close(reader, BODY_S + MARGIN_S)
            if authenticated:  # the handler was waiting for the body: 408
                assert answer.startswith(b"HTTP/1.1 408 "), answer[:80]
                error = json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]
                assert error["code"] == "request_timeout" and error["type"] == "invalid_request_error"
            else:  # refused before its body was read, then closed at the deadline all the same
                assert answer.startswith(b"HTTP/1.1 401 "), answer[:80]
            writer.close()
        for reader, writer in heads:
            answer = await _answer_and_close(reader, HEADER_S + MARGIN_S)
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:80]
            assert b"connection: close" in answer
            writer.close()
        assert time.monotonic() - started < max(HEADER_S, BODY_S) + MARGIN_S
        # the handlers that were reading those bodies recorded a 408, not an error of the node's
        async with httpx.AsyncClient(base_url=node.url, timeout=10) as http:
            metrics = (await http.get("/metrics")).text
        statuses = [
            (s.labels["status"], s.value)
            for f in text_string_to_metric_families(metrics)
            for s in f.samples
            if s.name == "bastion_requests_total"
        ]
        assert sum(v for code, v in statuses if code == "408") == 25
        assert not [code for code, _ in statuses if code.startswith("5")]

        # a request whose body comes promptly, in pieces, is not cut short
        reader, writer = await _connect(node)
        body = json.dumps({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}).encode()
        writer.write(_head(key, len(body)) + body[:5])
        await asyncio.sleep(BODY_S / 4)
        writer.write(body[5:])
        answer = await reader.readuntil(b"\r\n\r\n")
        assert answer.startswith((b"HTTP/1.1 403 ", b"HTTP/1.1 404 ")), answer[:80]  # a model it cannot use
        writer.close()


async def test_connections_beyond_the_cap_are_refused(tmp_path: Path) -> None:
    cap = 4
    setup = node_setup(
        tmp_path, audit=False, extra=f"[server]\nmax_connections = {cap}\nheader_timeout_s = 60\n"
    )
    async with running_node(setup, {}) as node:
        idle = [await _connect(node) for _ in range(cap - 1)]
        async with httpx.AsyncClient(base_url=node.url, timeout=10) as http:
            assert (await http.get("/healthz")).status_code == 200  # the cap-th connection is served
        async with httpx.AsyncClient(base_url=node.url, timeout=10) as http:
            idle.append(await _connect(node))
            r = await http.get("/healthz")
            assert r.status_code == 503
        for _, writer in idle:
            writer.close()
        # once they are gone, requests are served again
        deadline = time.monotonic() + 10
        async with httpx.AsyncClient(base_url=node.url, timeout=10) as http:
            while (await http.get("/healthz")).status_code != 200:
                assert time.monotonic() < deadline, "the closed connections were never released"
                await asyncio.sleep(0.02)


@pytest.mark.parametrize(
    ("setting", "value"),
    [("header_timeout_s", "0"), ("body_timeout_s", "-1"), ("max_connections", "0")],
)
def test_server_limits_are_validated(tmp_path: Path, setting: str, value: str) -> None:
    from node.config import ConfigError

    with pytest.raises(ConfigError, match=setting):
        node_setup(tmp_path, audit=False, extra=f"[server]\n{setting} = {value}\n")
