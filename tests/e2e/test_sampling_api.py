"""Structured outputs, log probabilities, several choices, penalties, logit bias and list prompts
on the local route: uvicorn on 127.0.0.1, the real engine on the tiny model, the official client."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import jsonschema
import openai
import pytest
import pytest_asyncio

from serving.engine import LocalEngine
from tests.harness import TINY, RunningNode, node_setup, running_node

pytestmark = pytest.mark.engine

SCHEMA = {
    "type": "object",
    "properties": {"color": {"enum": ["red", "green", "blue"]}, "ok": {"type": "boolean"}},
    "required": ["color", "ok"],
    "additionalProperties": False,
}
PROMPT = [{"role": "user", "content": "Canary one: the quick brown fox"}]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def client(
    tmp_path_factory: pytest.TempPathFactory, local_engine: LocalEngine
) -> AsyncIterator[openai.AsyncOpenAI]:
    setup = node_setup(
        tmp_path_factory.mktemp("sampling"),
        tenants={"acme": f'models = ["{TINY}"]\nresidency = "local-only"'},
    )
    async with running_node(setup, {TINY: local_engine}) as running:
        yield _client(running, setup.keys["acme"])


def _client(running: RunningNode, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=running.url + "/v1", api_key=key, max_retries=0)


def _json_schema(schema: dict[str, Any], *, strict: bool = True) -> Any:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": strict}}


async def test_json_schema_answers_follow_the_schema_for_every_seed(client: openai.AsyncOpenAI) -> None:
    for seed in (1, 2, 3, 4):
        reply = await client.chat.completions.create(
            model=TINY,
            messages=PROMPT,  # type: ignore[arg-type]
            max_tokens=200,
            seed=seed,
            response_format=_json_schema(SCHEMA, strict=seed % 2 == 0),
        )
        text = reply.choices[0].message.content or ""
        assert reply.choices[0].finish_reason == "stop", text
        jsonschema.validate(json.loads(text), SCHEMA)
        assert " " not in text  # compact: no whitespace between JSON tokens


async def test_a_streamed_json_schema_answer_follows_the_schema(client: openai.AsyncOpenAI) -> None:
    text = ""
    async for chunk in await client.chat.completions.create(
        model=TINY,
        messages=PROMPT,  # type: ignore[arg-type]
        max_tokens=200,
        seed=9,
        response_format=_json_schema(SCHEMA),
        stream=True,
    ):
        text += "".join(c.delta.content or "" for c in chunk.choices)
    jsonschema.validate(json.loads(text), SCHEMA)


async def test_json_object_answers_are_json_objects(client: openai.AsyncOpenAI) -> None:
    # Any object: a random-weight model may write one key for thousands of tokens (seed 2 does),
    # so these seeds are ones where it closes the object soon.
    for seed in (1, 3):
        reply = await client.chat.completions.create(
            model=TINY,
            messages=PROMPT,  # type: ignore[arg-type]
            max_tokens=200,
            seed=seed,
            response_format={"type": "json_object"},
        )
        assert reply.choices[0].finish_reason == "stop"
        assert isinstance(json.loads(reply.choices[0].message.content or ""), dict)


@pytest.mark.parametrize(
    ("schema", "param", "words"),
    [
        ({"type": "foo"}, "response_format.json_schema.schema", "not a valid JSON schema"),
        ({"type": "object", "properties": 5}, "response_format.json_schema.schema", "schema.properties"),
        (
            {"type": "object", "properties": {"a": {"type": "integer", "multipleOf": 3}}},
            "response_format",
            "not supported by xgrammar",
        ),
    ],
)
async def test_a_schema_that_cannot_be_used_is_a_400_naming_it(
    client: openai.AsyncOpenAI, schema: dict[str, Any], param: str, words: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model=TINY,
            messages=PROMPT,  # type: ignore[arg-type]
            max_tokens=20,
            response_format=_json_schema(schema),
        )
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["param"] == param, error
    assert words in error["message"], error


async def test_chat_logprobs_in_openai_shape_streamed_and_not(client: openai.AsyncOpenAI) -> None:
    kwargs: Any = {"model": TINY, "messages": PROMPT, "max_tokens": 6, "temperature": 0}
    kwargs |= {"logprobs": True, "top_logprobs": 3, "extra_body": {"ignore_eos": True}}
    reply = await client.chat.completions.create(**kwargs)
    logprobs = reply.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    assert len(logprobs.content) == 6 and reply.usage is not None and reply.usage.completion_tokens == 6
    for entry in logprobs.content:
        assert entry.logprob <= 0.0 and entry.bytes == list(entry.token.encode())
        assert len(entry.top_logprobs) == 3
        ranked = [t.logprob for t in entry.top_logprobs]
        assert ranked == sorted(ranked, reverse=True)
        # greedy: the sampled token is the most likely one
        assert entry.top_logprobs[0].token == entry.token
    streamed = []
    async for chunk in await client.chat.completions.create(stream=True, **kwargs):
        for choice in chunk.choices:
            if choice.logprobs is not None and choice.logprobs.content:
                streamed += choice.logprobs.content
    assert [(t.token, round(t.logprob, 3)) for t in streamed] == [
        (t.token, round(t.logprob, 3)) for t in logprobs.content
    ]


async def test_completion_logprobs_in_the_legacy_shape(client: openai.AsyncOpenAI) -> None:
    reply = await client.completions.create(
        model=TINY,
        prompt="one two three",
        max_tokens=5,
        temperature=0,
        logprobs=2,
        extra_body={"ignore_eos": True},
    )
    logprobs = reply.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens is not None and logprobs.top_logprobs is not None
    assert len(logprobs.tokens) == len(logprobs.token_logprobs or []) == len(logprobs.text_offset or []) == 5
    assert logprobs.text_offset == [sum(len(t) for t in logprobs.tokens[:i]) for i in range(5)]
    for token, value, top in zip(
        logprobs.tokens, logprobs.token_logprobs or [], logprobs.top_logprobs, strict=True
    ):
        assert top[token] == value and 2 <= len(top) <= 3  # the two most likely, and the sampled one


async def test_n_choices_non_stream_and_stream_with_usage_of_all(client: openai.AsyncOpenAI) -> None:
    kwargs: Any = {"model": TINY, "messages": PROMPT, "max_tokens": 5, "n": 3, "seed": 5}
    kwargs["extra_body"] = {"ignore_eos": True}
    reply = await client.chat.completions.create(**kwargs)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert all(c.finish_reason == "length" for c in reply.choices)
    assert reply.usage is not None and reply.usage.completion_tokens == 15
    assert len({c.message.content for c in reply.choices}) > 1  # sampled, not copies
    texts = ["", "", ""]
    finishes: dict[int, str] = {}
    usage = None
    async for chunk in await client.chat.completions.create(
        stream=True, stream_options={"include_usage": True}, **kwargs
    ):
        usage = chunk.usage or usage
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason is not None:
                finishes[choice.index] = choice.finish_reason
    assert finishes == {0: "length", 1: "length", 2: "length"}
    assert all(texts) and usage is not None and usage.completion_tokens == 15


async def test_penalties_change_a_greedy_answer(client: openai.AsyncOpenAI) -> None:
    async def greedy(**extra: Any) -> str:
        reply = await client.chat.completions.create(
            model=TINY,
            messages=PROMPT,
            max_tokens=24,
            temperature=0,
            **extra,  # type: ignore[arg-type]
        )
        return reply.choices[0].message.content or ""

    plain = await greedy()
    assert await greedy() == plain
    assert await greedy(frequency_penalty=2.0) != plain
    assert await greedy(presence_penalty=2.0) != plain


async def test_logit_bias_forces_and_forbids_tokens(
    client: openai.AsyncOpenAI, local_engine: LocalEngine
) -> None:
    tokenizer = local_engine._llm.get_tokenizer()
    forced = tokenizer.encode(" apple", add_special_tokens=False)[0]
    reply = await client.completions.create(
        model=TINY,
        prompt="one two three",
        max_tokens=6,
        logit_bias={str(forced): 100},
        extra_body={"ignore_eos": True},
    )
    assert reply.choices[0].text == tokenizer.decode([forced] * 6)

    async def first_token(bias: dict[str, int] | None) -> str:
        reply = await client.chat.completions.create(
            model=TINY,
            messages=PROMPT,
            max_tokens=1,
            temperature=0,
            logprobs=True,
            logit_bias=bias,  # type: ignore[arg-type]
        )
        assert reply.choices[0].logprobs is not None and reply.choices[0].logprobs.content is not None
        return reply.choices[0].logprobs.content[0].token

    greedy = await first_token(None)
    banned = [i for i in range(len(tokenizer)) if tokenizer.decode([i]) == greedy]
    assert banned
    assert await first_token({str(i): -100 for i in banned}) != greedy


async def test_a_logit_bias_outside_the_vocabulary_is_a_400(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model=TINY,
            messages=PROMPT,
            max_tokens=2,
            logit_bias={"99999999": 5},  # type: ignore[arg-type]
        )
    assert isinstance(caught.value.body, dict) and caught.value.body["param"] == "logit_bias"


async def test_list_prompts_each_get_their_choices_in_order(client: openai.AsyncOpenAI) -> None:
    prompts = ["one two three", "Canary two: 1 2 3 4", "hello"]
    kwargs: Any = {"model": TINY, "max_tokens": 4, "extra_body": {"ignore_eos": True}}
    singles = [
        (await client.completions.create(prompt=p, temperature=0, **kwargs)).choices[0].text for p in prompts
    ]
    greedy = await client.completions.create(prompt=prompts, temperature=0, **kwargs)
    assert [c.index for c in greedy.choices] == [0, 1, 2]
    assert [c.text for c in greedy.choices] == singles  # prompt i's choice is its own completion
    assert greedy.usage is not None and greedy.usage.completion_tokens == 3 * 4
    sampled = await client.completions.create(prompt=prompts, n=2, seed=3, **kwargs)
    assert [c.index for c in sampled.choices] == list(range(6))
    assert sampled.usage is not None and sampled.usage.completion_tokens == 6 * 4
    texts = [""] * 6
    async for chunk in await client.completions.create(prompt=prompts, n=2, seed=3, stream=True, **kwargs):
        for choice in chunk.choices:
            texts[choice.index] += choice.text
    assert all(texts) and len(set(texts)) > 3


async def test_several_choices_need_sampling(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model=TINY, messages=PROMPT, max_tokens=2, n=2, temperature=0)  # type: ignore[arg-type]
    assert "greedy" in str(caught.value)
