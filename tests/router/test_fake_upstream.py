"""The fake upstream itself: JSON (non-streaming) answers that e2e tests of other packages rely on."""

from __future__ import annotations

from pathlib import Path

import httpx

from router.anthropic_provider import AnthropicProvider
from router.openai_provider import OpenAIProvider
from serving.protocol import Provider
from tests.fakes import FakeUpstream, Reply
from tests.router.conftest import CLAUDE, GPT, decode_config, provider_toml


async def test_json_answers_in_both_dialects(upstream_a: FakeUpstream) -> None:
    upstream_a.script(Reply(text="plain answer", prompt_tokens=5, completion_tokens=2))
    async with httpx.AsyncClient() as client:
        chat = await client.post(
            upstream_a.openai_base + "/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        )
        messages = await client.post(
            upstream_a.anthropic_base + "/v1/messages",
            json={"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
        )
    body = chat.json()
    assert body["choices"][0]["message"]["content"] == "plain answer"
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    assert messages.json()["content"][0]["text"] == "answer from a"
    assert messages.json()["stop_reason"] == "end_turn"
    assert [r.path for r in upstream_a.requests] == ["/v1/chat/completions", "/v1/messages"]


async def test_providers_satisfy_the_protocol(upstream_a: FakeUpstream, key_file: Path) -> None:
    config = decode_config(
        provider_toml("o", "openai", upstream_a.openai_base, "eu-west", key_file, GPT)
        + provider_toml("c", "anthropic", upstream_a.anthropic_base, "eu-west", key_file, CLAUDE)
    )
    providers = [OpenAIProvider(config.providers[0]), AnthropicProvider(config.providers[1])]
    try:
        for provider in providers:
            assert isinstance(provider, Provider)
            info = provider.describe()
            assert info.region == "eu-west" and info.revisions[info.models[0]] == info.models[0]
            assert (await provider.health()).healthy
    finally:
        for provider in providers:
            await provider.aclose()
