"""The node end to end: uvicorn on 127.0.0.1, the real engine on the tiny model, the official client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio

from serving.engine import LocalEngine
from serving.protocol import ChatMessage, GenerationRequest
from tests.harness import TINY, RunningNode, bearer, node_setup, running_node

pytestmark = pytest.mark.engine


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def node(
    tmp_path_factory: pytest.TempPathFactory, local_engine: LocalEngine
) -> AsyncIterator[tuple[RunningNode, dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("node")
    setup = node_setup(
        tmp,
        tenants={
            "acme": f'models = ["{TINY}"]\nresidency = "local-only"',
            "globex": 'models = []\nresidency = "local-only"',
        },
        extra="[server]\nmax_body_bytes = 65536\n",
    )
    async with running_node(setup, {TINY: local_engine}) as running:
        yield running, setup.keys


def _client(running: RunningNode, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=running.url + "/v1", api_key=key, max_retries=0)


async def _wait_until(predicate: Any, *, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_chat_non_stream_matches_the_tokenizer_and_says_where_it_ran(
    node: tuple[RunningNode, dict[str, str]], local_engine: LocalEngine
) -> None:
    running, keys = node
    client = _client(running, keys["acme"])
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
    raw = await client.chat.completions.with_raw_response.create(
        model=TINY,
        messages=messages,
        max_tokens=7,
        temperature=0,
        seed=1,  # type: ignore[arg-type]
    )
    reply = raw.parse()
    assert raw.headers["x-bastion-route"] == "local"
    assert raw.headers["x-bastion-route-reason"] == "ok"
    assert raw.headers["x-request-id"] == reply.id
    assert raw.headers["x-bastion-model-revision"] == local_engine.describe().revisions[TINY]
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.role == "assistant"
    assert reply.usage is not None
    expected_prompt = local_engine.count_prompt_tokens(
        GenerationRequest(
            request_id="x",
            model=TINY,
            messages=(
                ChatMessage(role="system", content="be brief"),
                ChatMessage(role="user", content="hello there"),
            ),
        )
    )
    assert reply.usage.prompt_tokens == expected_prompt
    if reply.choices[0].finish_reason == "length":
        assert reply.usage.completion_tokens == 7
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


async def test_streamed_chat_equals_the_non_streamed_greedy_answer(
    node: tuple[RunningNode, dict[str, str]],
) -> None:
    running, keys = node
    client = _client(running, keys["acme"])
    messages: Any = [{"role": "user", "content": "count with me"}]
    whole = await client.chat.completions.create(model=TINY, messages=messages, max_tokens=12, temperature=0)
    parts: list[str] = []
    usage = None
    finish = None
    stream = await client.chat.completions.create(
        model=TINY,
        messages=messages,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            parts.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(parts) == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason
    assert usage is not None and whole.usage is not None
    assert usage.completion_tokens == whole.usage.completion_tokens
    assert usage.prompt_tokens == whole.usage.prompt_tokens


async def test_completions_stream_and_non_stream(node: tuple[RunningNode, dict[str, str]]) -> None:
    running, keys = node
    client = _client(running, keys["acme"])
    whole = await client.completions.create(model=TINY, prompt="one two three", max_tokens=6, temperature=0)
    assert whole.object == "text_completion"
    assert whole.usage is not None and whole.usage.completion_tokens <= 6
    text = ""
    async for chunk in await client.completions.create(
        model=TINY, prompt="one two three", max_tokens=6, temperature=0, stream=True
    ):
        text += "".join(c.text for c in chunk.choices)
    assert text == whole.choices[0].text


async def test_ignore_eos_generates_exactly_max_tokens(node: tuple[RunningNode, dict[str, str]]) -> None:
    running, keys = node
    async with httpx.AsyncClient(base_url=running.url, timeout=60) as http:
        r = await http.post(
            "/v1/completions",
            headers=bearer(keys["acme"]),
            json={"model": TINY, "prompt": "x", "max_tokens": 40, "min_tokens": 40, "ignore_eos": True},
        )
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 40


async def test_concurrent_streams_all_complete(node: tuple[RunningNode, dict[str, str]]) -> None:
    running, keys = node
    client = _client(running, keys["acme"])

    async def one(i: int) -> int:
        n = 0
        stream = await client.chat.completions.create(
            model=TINY,
            messages=[{"role": "user", "content": f"stream {i}"}],
            max_tokens=24,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True, "min_tokens": 24},
        )
        async for chunk in stream:
            if chunk.usage is not None:
                n = chunk.usage.completion_tokens
        return n

    counts = await asyncio.gather(*(one(i) for i in range(12)))
    assert counts == [24] * 12


async def test_client_disconnect_aborts_the_request_in_the_engine(
    node: tuple[RunningNode, dict[str, str]], local_engine: LocalEngine
) -> None:
    running, keys = node
    await _wait_until(lambda: local_engine.stats().unfinished == 0, what="an idle engine")
    body = {
        "model": TINY,
        "prompt": "go on",
        "max_tokens": 1900,
        "min_tokens": 1900,
        "ignore_eos": True,
        "stream": True,
    }
    async with httpx.AsyncClient(base_url=running.url, timeout=60) as http:
        async with http.stream("POST", "/v1/completions", headers=bearer(keys["acme"]), json=body) as r:
            assert r.status_code == 200
            request_id = r.headers["x-request-id"]
            seen = 0
            async for _ in r.aiter_bytes():
                seen += 1
                if seen >= 3:
                    break
            assert local_engine.stats().unfinished >= 1
    # the connection is closed: the engine must drop the request long before 1900 tokens
    await _wait_until(lambda: local_engine.stats().unfinished == 0, timeout=15, what="the abort")
    audit = running.state.audit
    assert audit is not None
    deadline = time.monotonic() + 15
    types: list[str] = []
    while time.monotonic() < deadline:
        types = sorted(h.type for h in await audit.find(request_id=request_id, tenant="acme"))
        if len(types) == 2:
            break
        await asyncio.sleep(0.02)
    assert types == ["request.end", "request.start"]


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        (b"{not json", 400, "invalid_request", None),
        (b"", 400, "invalid_request", None),
        (b'{"model": "bastion-tiny"}', 400, "invalid_request", None),
        (b'{"model": "bastion-tiny", "messages": [], "max_tokens": 4}', 400, "invalid_request", "messages"),
        (
            b'{"model": "bastion-tiny", "messages": [{"role": "user", "content": "x"}], "temperature": 5}',
            400,
            "invalid_request",
            "temperature",
        ),
        (
            b'{"model": "bastion-tiny", "messages": [{"role": "user", "content": "x"}], "n": 17}',
            400,
            "invalid_request",
            "n",
        ),
        (
            b'{"model": "bastion-tiny", "messages": [{"role": "user", "content": "x"}], "bogus": 1}',
            400,
            "invalid_request",
            "bogus",
        ),
        (
            b'{"model": "bastion-tiny", "messages": [{"role": "wizard", "content": "x"}]}',
            400,
            "invalid_request",
            "messages[0].role",
        ),
        (
            b'{"model": "bastion-tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5000}',
            400,
            "context_length_exceeded",
            None,
        ),
        (
            b'{"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}',
            404,
            "model_not_found",
            "model",
        ),
    ],
)
async def test_bad_requests_get_openai_errors(
    node: tuple[RunningNode, dict[str, str]], body: bytes, status: int, code: str, param: str | None
) -> None:
    running, keys = node
    async with httpx.AsyncClient(base_url=running.url, timeout=60) as http:
        r = await http.post(
            "/v1/chat/completions",
            content=body,
            headers={**bearer(keys["acme"]), "content-type": "application/json"},
        )
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code
    assert set(error) == {"message", "type", "code", "param"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param
    assert r.headers["x-request-id"]


async def test_prompt_over_the_context_is_rejected_before_the_engine(
    node: tuple[RunningNode, dict[str, str]],
) -> None:
    running, keys = node
    client = _client(running, keys["acme"])
    with pytest.raises(openai.BadRequestError) as err:
        await client.chat.completions.create(
            model=TINY, messages=[{"role": "user", "content": "word " * 2500}], max_tokens=4
        )
    assert err.value.code == "context_length_exceeded"


async def test_oversized_body_is_413(node: tuple[RunningNode, dict[str, str]]) -> None:
    running, keys = node
    huge = '{"model": "bastion-tiny", "messages": [{"role": "user", "content": "' + "a" * 70_000 + '"}]}'
    async with httpx.AsyncClient(base_url=running.url, timeout=60) as http:
        r = await http.post(
            "/v1/chat/completions",
            content=huge,
            headers={**bearer(keys["acme"]), "content-type": "application/json"},
        )
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic Zm9vOmJhcg=="])
async def test_unauthenticated_is_401(node: tuple[RunningNode, dict[str, str]], header: str | None) -> None:
    running, _ = node
    headers = {"authorization": header} if header else {}
    async with httpx.AsyncClient(base_url=running.url, timeout=30) as http:
        r = await http.post(
            "/v1/chat/completions",
            headers=headers,
            json={"model": TINY, "messages": [{"role": "user", "content": "x"}]},
        )
        models = await http.get("/v1/models", headers=headers)
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error"
    assert models.status_code == 401


async def test_tenants_cannot_use_each_others_models(node: tuple[RunningNode, dict[str, str]]) -> None:
    running, keys = node
    other = _client(running, keys["globex"])
    with pytest.raises(openai.NotFoundError):
        await other.chat.completions.create(model=TINY, messages=[{"role": "user", "content": "x"}])
    assert [m.id async for m in other.models.list()] == []
    mine = _client(running, keys["acme"])
    assert [m.id async for m in mine.models.list()] == [TINY]


async def test_health_endpoints(node: tuple[RunningNode, dict[str, str]]) -> None:
    running, _ = node
    async with httpx.AsyncClient(base_url=running.url, timeout=30) as http:
        alive = await http.get("/healthz")
        ready = await http.get("/readyz")
    assert alive.status_code == 200
    assert ready.status_code == 200
    assert ready.json()["engines"][TINY]["healthy"] is True
    assert alive.headers["x-request-id"]
