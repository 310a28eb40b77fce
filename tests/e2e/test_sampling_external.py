"""Sampling and output fields on an OpenAI-compatible route: sent verbatim, answered unchanged in
shape (several choices, log probabilities), recorded. The official client against the node, the
fake upstream behind it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio

from serving.engine import LocalEngine
from tests.fakes.upstream import FAKE_LOGPROB, FakeUpstream
from tests.harness import TINY, NodeSetup, audit_records_by_request, node_setup, running_node

pytestmark = pytest.mark.engine

MODEL = "fake-model-2024-08-06"
SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True}}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FAKE_UPSTREAM_KEY", "sk-fake-secret-123")
        with FakeUpstream(text="alpha beta gamma") as upstream:
            yield upstream


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def node(
    tmp_path_factory: pytest.TempPathFactory, fake: FakeUpstream, local_engine: LocalEngine
) -> AsyncIterator[tuple[NodeSetup, openai.AsyncOpenAI]]:
    setup = _setup(tmp_path_factory.mktemp("sampling-external"), fake)
    async with running_node(setup, {TINY: local_engine}) as running:
        client = openai.AsyncOpenAI(base_url=running.url + "/v1", api_key=setup.keys["acme"], max_retries=0)
        yield setup, client


def _setup(tmp_path: Path, fake: FakeUpstream) -> NodeSetup:
    return node_setup(
        tmp_path,
        tenants={"acme": 'models = ["via-openai"]\nresidency = ["eu-west"]'},
        extra=f"""
[[providers]]
name = "fake-openai"
kind = "openai"
base_url = "{fake.openai_base}"
region = "eu-west"
api_key_env = "FAKE_UPSTREAM_KEY"
[providers.models."{MODEL}"]
input_per_mtok = 1.0
output_per_mtok = 2.0

[[routes]]
alias = "via-openai"
fallbacks = [{{ provider = "fake-openai", model = "{MODEL}" }}]
""",
    )


async def test_chat_fields_go_out_verbatim_and_choices_come_back_in_shape(
    node: tuple[NodeSetup, openai.AsyncOpenAI], fake: FakeUpstream
) -> None:
    setup, client = node
    seen = len(fake.requests)
    reply = await client.chat.completions.create(
        model="via-openai",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=9,
        n=2,
        logprobs=True,
        top_logprobs=2,
        logit_bias={"42": -100, "7": 3.5},
        frequency_penalty=0.25,
        presence_penalty=-0.5,
        response_format=RESPONSE_FORMAT,  # type: ignore[arg-type]
    )
    [received] = fake.requests[seen:]
    body = received.json()
    assert {k: body[k] for k in ("n", "logprobs", "top_logprobs", "logit_bias", "response_format")} == {
        "n": 2,
        "logprobs": True,
        "top_logprobs": 2,
        "logit_bias": {"42": -100, "7": 3.5},
        "response_format": RESPONSE_FORMAT,
    }
    assert (body["frequency_penalty"], body["presence_penalty"]) == (0.25, -0.5)
    assert [c.index for c in reply.choices] == [0, 1]
    for choice in reply.choices:
        assert choice.message.content == "alpha beta gamma" and choice.finish_reason == "stop"
        assert choice.logprobs is not None and choice.logprobs.content is not None
        assert [t.token for t in choice.logprobs.content] == ["alpha ", "beta ", "gamma"]
        for token in choice.logprobs.content:
            assert token.logprob == FAKE_LOGPROB and token.bytes == list(token.token.encode())
            assert [(t.token, t.logprob) for t in token.top_logprobs] == [(token.token, FAKE_LOGPROB)] * 2
    assert reply.usage is not None and reply.usage.completion_tokens == 6  # 3 pieces x 2 choices
    records = await audit_records_by_request(setup)
    start, end = records[reply.id]
    assert start["content"]["response_format"] == RESPONSE_FORMAT
    assert start["content"]["logprobs"] == 2
    assert start["content"]["logit_bias"] == {"42": -100, "7": 3.5}
    assert start["meta"]["sampling"]["n"] == 2
    assert end["content"]["choices"] == ["alpha beta gamma", "alpha beta gamma"]
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(str(client.base_url).removesuffix("/v1/") + "/metrics")).text
    for feature in ("json_schema", "logprobs", "choices"):
        line = f'bastion_feature_requests_total{{feature="{feature}",route="external:fake-openai"}} '
        assert line in metrics, metrics


async def test_several_choices_stream_with_their_index(
    node: tuple[NodeSetup, openai.AsyncOpenAI], fake: FakeUpstream
) -> None:
    _, client = node
    texts = ["", "", ""]
    tokens: list[list[str]] = [[], [], []]
    finishes: dict[int, str] = {}
    usage = None
    async for chunk in await client.chat.completions.create(
        model="via-openai",
        messages=[{"role": "user", "content": "hi"}],
        n=3,
        logprobs=True,
        stream=True,
        stream_options={"include_usage": True},
    ):
        usage = chunk.usage or usage
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.delta.content:  # the tokens of what arrived in one read: their text
                assert choice.logprobs is not None and choice.logprobs.content is not None
                assert "".join(t.token for t in choice.logprobs.content) == choice.delta.content
                tokens[choice.index] += [t.token for t in choice.logprobs.content]
            if choice.finish_reason is not None:
                finishes[choice.index] = choice.finish_reason
    assert texts == ["alpha beta gamma"] * 3
    assert tokens == [["alpha ", "beta ", "gamma"]] * 3
    assert finishes == {0: "stop", 1: "stop", 2: "stop"}
    assert usage is not None and usage.completion_tokens == 9
    assert "top_logprobs" not in fake.requests[-1].json()  # not set by the client, not sent


async def test_list_prompts_and_legacy_logprobs_go_out_and_come_back(
    node: tuple[NodeSetup, openai.AsyncOpenAI], fake: FakeUpstream
) -> None:
    _, client = node
    seen = len(fake.requests)
    reply = await client.completions.create(
        model="via-openai", prompt=["one", "two"], logprobs=1, max_tokens=5
    )
    [received] = fake.requests[seen:]
    assert (received.path, received.json()["prompt"], received.json()["logprobs"]) == (
        "/v1/completions",
        ["one", "two"],
        1,
    )
    assert [c.index for c in reply.choices] == [0, 1]
    for choice in reply.choices:
        assert choice.text == "alpha beta gamma"
        logprobs: Any = choice.logprobs
        assert logprobs.tokens == ["alpha ", "beta ", "gamma"]
        assert logprobs.token_logprobs == [FAKE_LOGPROB] * 3
        assert logprobs.top_logprobs == [{t: FAKE_LOGPROB} for t in logprobs.tokens]
        assert logprobs.text_offset == [0, 6, 11]


async def test_an_invalid_schema_is_refused_before_anything_is_sent(
    node: tuple[NodeSetup, openai.AsyncOpenAI], fake: FakeUpstream
) -> None:
    _, client = node
    seen = len(fake.requests)
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "foo"}}}
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model="via-openai",
            messages=[{"role": "user", "content": "hi"}],
            response_format=bad,  # type: ignore[arg-type]
        )
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["param"] == "response_format.json_schema.schema"
    assert len(fake.requests) == seen
