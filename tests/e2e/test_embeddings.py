"""``/v1/embeddings`` end to end: uvicorn on 127.0.0.1, the real pooling engine on the tiny
embedding model (and the tiny chat model beside it), the official ``openai`` client, the real
audit log read back through ``bastion audit export --decrypt``."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio

from serving.embedding import LocalEmbedder
from serving.engine import LocalEngine
from tests.conftest import TINY_EMBED_NAME
from tests.harness import (
    TINY,
    NodeSetup,
    RunningNode,
    audit_records_by_request,
    bearer,
    node_setup,
    running_node,
)

pytestmark = pytest.mark.engine

EMBED = TINY_EMBED_NAME


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def node(
    tmp_path_factory: pytest.TempPathFactory, local_engine: LocalEngine, embed_engine: LocalEmbedder
) -> AsyncIterator[tuple[RunningNode, NodeSetup]]:
    tmp = tmp_path_factory.mktemp("embed-node")
    setup = node_setup(
        tmp,
        tenants={
            "acme": f'models = ["{TINY}", "{EMBED}"]\nresidency = "local-only"',
            "globex": f'models = ["{TINY}"]\nresidency = "local-only"',
            "metered": f'models = ["{EMBED}"]\nresidency = "local-only"\nrpm = 3',
            "daily": f'models = ["{EMBED}"]\nresidency = "local-only"\ntokens_per_day = 5',
        },
    )
    async with running_node(setup, {TINY: local_engine, EMBED: embed_engine}) as running:
        yield running, setup


def _client(running: RunningNode, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=running.url + "/v1", api_key=key, max_retries=0)


def _norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


def _token_ids(engine: LocalEmbedder, text: str) -> list[int]:
    ids: list[int] = engine._llm.get_tokenizer().encode(text, add_special_tokens=True)
    return ids


async def test_a_string_a_list_and_token_arrays_embed_alike(
    node: tuple[RunningNode, NodeSetup], embed_engine: LocalEmbedder
) -> None:
    running, setup = node
    client = _client(running, setup.keys["acme"])
    raw = await client.embeddings.with_raw_response.create(
        model=EMBED, input="hello world", encoding_format="float"
    )
    assert raw.headers["x-bastion-route"] == "local"
    assert raw.headers["x-bastion-route-reason"] == "embeddings-local"
    assert raw.headers["x-bastion-model-revision"] == embed_engine.revision
    one = raw.parse()
    assert one.model == EMBED and one.object == "list"
    (item,) = one.data
    assert item.index == 0 and item.object == "embedding"
    assert len(item.embedding) == embed_engine.embedding_size == 128
    assert _norm(item.embedding) == pytest.approx(1.0, abs=1e-5)
    ids = _token_ids(embed_engine, "hello world")
    assert one.usage.prompt_tokens == one.usage.total_tokens == len(ids)

    many = await client.embeddings.create(
        model=EMBED, input=["hello world", "the audit log"], encoding_format="float"
    )
    assert [d.index for d in many.data] == [0, 1]
    assert many.data[0].embedding == pytest.approx(item.embedding, abs=1e-6)
    assert many.data[1].embedding != pytest.approx(item.embedding, abs=1e-3)
    other = _token_ids(embed_engine, "the audit log")
    assert many.usage.prompt_tokens == len(ids) + len(other)

    tokens = await client.embeddings.create(model=EMBED, input=ids, encoding_format="float")
    assert tokens.data[0].embedding == pytest.approx(item.embedding, abs=1e-6)
    arrays = await client.embeddings.create(model=EMBED, input=[other, ids], encoding_format="float")
    assert arrays.data[1].embedding == pytest.approx(item.embedding, abs=1e-6)
    assert arrays.data[0].embedding == pytest.approx(many.data[1].embedding, abs=1e-6)


async def test_base64_is_the_clients_default_and_decodes_to_the_same_floats(
    node: tuple[RunningNode, NodeSetup],
) -> None:
    running, setup = node
    client = _client(running, setup.keys["acme"])
    floats = await client.embeddings.create(model=EMBED, input="base sixty four", encoding_format="float")
    # no encoding_format: the client asks for base64 and decodes little-endian float32 itself
    decoded = await client.embeddings.create(model=EMBED, input="base sixty four")
    assert decoded.data[0].embedding == floats.data[0].embedding
    async with httpx.AsyncClient(base_url=running.url) as http:
        r = await http.post(
            "/v1/embeddings",
            headers=bearer(setup.keys["acme"]),
            json={"model": EMBED, "input": "base sixty four", "encoding_format": "base64"},
        )
    assert r.status_code == 200, r.text
    assert isinstance(r.json()["data"][0]["embedding"], str)


async def test_dimensions_truncate_and_renormalise(node: tuple[RunningNode, NodeSetup]) -> None:
    running, setup = node
    client = _client(running, setup.keys["acme"])
    full = (await client.embeddings.create(model=EMBED, input="matryoshka", encoding_format="float")).data[0]
    cut = await client.embeddings.create(
        model=EMBED, input="matryoshka", dimensions=16, encoding_format="float"
    )
    short = cut.data[0]
    assert len(short.embedding) == 16
    assert _norm(short.embedding) == pytest.approx(1.0, abs=1e-5)
    prefix = full.embedding[:16]
    assert short.embedding == pytest.approx([x / _norm(prefix) for x in prefix], abs=1e-5)


def _bad(exc: openai.APIStatusError) -> dict[str, Any]:
    body = exc.response.json()["error"]
    assert isinstance(body, dict)
    return body


@pytest.mark.parametrize(
    ("kwargs", "status", "code", "param"),
    [
        ({"input": "x", "extra_body": {"truncate": 8}}, 400, "invalid_request", "truncate"),
        ({"input": "x", "dimensions": 129}, 400, "invalid_request", "dimensions"),
        ({"input": "x", "dimensions": 0}, 400, "invalid_request", "dimensions"),
        ({"input": [[1, 2], [2048]]}, 400, "invalid_request", "input"),
        ({"input": [5, -1]}, 400, "invalid_request", "input"),
        ({"input": ""}, 400, "invalid_request", "input"),
        ({"input": []}, 400, "invalid_request", "input"),
        ({"input": ["a", [1, 2]]}, 400, "invalid_request", "input"),
        ({"input": [7] * 2049}, 400, "context_length_exceeded", "input"),
        ({"input": "x", "encoding_format": "int8"}, 400, "invalid_request", "encoding_format"),
        ({"input": "x", "model": TINY}, 400, "invalid_request", "model"),
        ({"input": "x", "model": "no-such-model"}, 404, "model_not_found", "model"),
    ],
)
async def test_bad_requests_are_openai_errors_naming_the_parameter(
    node: tuple[RunningNode, NodeSetup], kwargs: dict[str, Any], status: int, code: str, param: str
) -> None:
    running, setup = node
    client = _client(running, setup.keys["acme"])
    args = {"model": EMBED, "encoding_format": "float"} | kwargs
    with pytest.raises(openai.APIStatusError) as caught:
        await client.embeddings.create(**args)
    assert caught.value.status_code == status
    error = _bad(caught.value)
    assert (error["code"], error["param"]) == (code, param), error


async def test_a_chat_model_and_an_embedding_model_each_refuse_the_other_endpoint(
    node: tuple[RunningNode, NodeSetup],
) -> None:
    running, setup = node
    client = _client(running, setup.keys["acme"])
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model=EMBED, messages=[{"role": "user", "content": "hi"}])
    assert "embedding model" in _bad(caught.value)["message"]
    with pytest.raises(openai.BadRequestError) as caught:
        await client.embeddings.create(model=TINY, input="hi")
    assert "not an embedding model" in _bad(caught.value)["message"]


async def test_a_tenant_without_the_model_gets_404_and_does_not_see_it_listed(
    node: tuple[RunningNode, NodeSetup],
) -> None:
    running, setup = node
    globex = _client(running, setup.keys["globex"])
    with pytest.raises(openai.NotFoundError) as caught:
        await globex.embeddings.create(model=EMBED, input="hi")
    assert _bad(caught.value)["code"] == "model_not_found"
    assert [m.id async for m in globex.models.list()] == [TINY]
    acme = _client(running, setup.keys["acme"])
    assert sorted([m.id async for m in acme.models.list()]) == sorted([TINY, EMBED])


async def test_requests_are_audited_with_the_input_and_without_the_vectors(
    node: tuple[RunningNode, NodeSetup], embed_engine: LocalEmbedder
) -> None:
    running, setup = node
    client = _client(running, setup.keys["acme"])
    ok = await client.embeddings.with_raw_response.create(
        model=EMBED, input=["secret text one", "two"], dimensions=8, user="alice"
    )
    ok_id = ok.headers["x-request-id"]
    with pytest.raises(openai.BadRequestError) as caught:
        await client.embeddings.create(model=EMBED, input="x", extra_body={"truncate": 8})
    bad_id = caught.value.response.headers["x-request-id"]
    records = await audit_records_by_request(setup)

    start, end = records[ok_id]
    assert (start["type"], end["type"]) == ("request.start", "request.end")
    assert start["subject"] == "alice"
    assert start["content"] == {"input": ["secret text one", "two"]}
    assert start["meta"]["endpoint"] == "embeddings"
    assert start["meta"]["route"] == "local" and start["meta"]["revision"] == embed_engine.revision
    assert start["meta"]["embedding"] == {"inputs": 2, "encoding_format": "base64", "dimensions": 8}
    assert end["meta"]["status"] == "ok" and end["meta"]["http_status"] == 200
    assert end["meta"]["prompt_tokens"] == ok.parse().usage.prompt_tokens > 0
    assert end.get("content") is None  # the vectors are not stored

    (rejected,) = records[bad_id]
    assert rejected["type"] == "request.rejected"
    assert rejected["meta"]["endpoint"] == "embeddings" and rejected["meta"]["param"] == "truncate"


async def test_metrics_count_embedding_requests_by_route(node: tuple[RunningNode, NodeSetup]) -> None:
    running, setup = node
    client = _client(running, setup.keys["acme"])

    async def scrape() -> str:
        async with httpx.AsyncClient(base_url=running.url) as http:
            return (await http.get("/metrics")).text

    def count(text: str, route: str, status: str) -> float:
        labels = f'endpoint="embeddings",route="{route}",status="{status}"'
        prefix = f"bastion_endpoint_requests_total{{{labels}}} "
        lines = [line for line in text.splitlines() if line.startswith(prefix)]
        return float(lines[0].split()[-1]) if lines else 0.0

    before = await scrape()
    await client.embeddings.create(model=EMBED, input="count me")
    with pytest.raises(openai.BadRequestError):
        await client.embeddings.create(model=EMBED, input="")
    after = await scrape()
    assert count(after, "local", "200") == count(before, "local", "200") + 1
    assert count(after, "local", "400") == count(before, "local", "400") + 1


async def test_any_readable_residency_header_holds_and_an_unreadable_one_is_a_400(
    node: tuple[RunningNode, NodeSetup],
) -> None:
    running, setup = node
    async with httpx.AsyncClient(base_url=running.url) as http:
        body = {"model": EMBED, "input": "where", "encoding_format": "float"}
        ok = await http.post(
            "/v1/embeddings",
            json=body,
            headers={**bearer(setup.keys["acme"]), "x-bastion-residency": "local-only"},
        )
        assert ok.status_code == 200 and ok.headers["x-bastion-route"] == "local"
        bad = await http.post(
            "/v1/embeddings",
            json=body,
            headers={**bearer(setup.keys["acme"]), "x-bastion-residency": "mars,"},
        )
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "bad_residency_header"


async def test_embeddings_draw_on_the_tenants_rate_limit_and_token_budget(
    node: tuple[RunningNode, NodeSetup],
) -> None:
    """The counters chat draws on: a tenant cannot get around ``rpm`` or ``tokens_per_day``
    by calling /v1/embeddings, and the input tokens it embedded are charged."""
    running, setup = node
    metered = _client(running, setup.keys["metered"])
    for _ in range(3):
        await metered.embeddings.create(model=EMBED, input="hello", encoding_format="float")
    with pytest.raises(openai.RateLimitError) as limited:
        await metered.embeddings.create(model=EMBED, input="hello", encoding_format="float")
    assert limited.value.status_code == 429
    assert limited.value.code == "rate_limit_exceeded"
    assert float(limited.value.response.headers["retry-after"]) > 0

    daily = _client(running, setup.keys["daily"])
    first = await daily.embeddings.create(
        model=EMBED, input="one two three four five six seven eight", encoding_format="float"
    )
    assert first.usage.prompt_tokens > 5
    with pytest.raises(openai.RateLimitError) as spent:
        await daily.embeddings.create(model=EMBED, input="nine", encoding_format="float")
    assert spent.value.code == "budget_exceeded"
