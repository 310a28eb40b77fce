"""The external providers against a real fake upstream on loopback: wire format and every fault."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from router import build_provider, external_providers
from router.anthropic_provider import AnthropicProvider
from router.anthropic_wire import build_messages_body
from router.config import ProviderConfig
from router.openai_provider import OpenAIProvider
from serving.errors import BastionError, UpstreamError, UpstreamRateLimitedError, UpstreamTimeoutError
from serving.protocol import ChatMessage, Delta, FunctionCall, GenerationRequest, SamplingOptions, ToolCall
from tests.fakes import FakeUpstream, Reply, closed_port_url
from tests.router.conftest import CLAUDE, GPT, SECRET, decode_config, provider_toml


def _config(kind: str, base_url: str, key: Path, model: str, stall_s: float = 5.0) -> ProviderConfig:
    return decode_config(
        provider_toml("p", kind, base_url, "eu-west", key, model, stall_s=stall_s)
    ).providers[0]


def _request(model: str, text: str = "Hi") -> GenerationRequest:
    return GenerationRequest(
        request_id="r1",
        model=model,
        tenant="acme",
        cache_salt="salt",
        messages=(ChatMessage(role="user", content=text),),
        sampling=SamplingOptions(max_tokens=64, temperature=0.2),
    )


async def _drain(provider: OpenAIProvider | AnthropicProvider, request: GenerationRequest) -> list[Delta]:
    return [d async for d in provider.stream(request)]


async def test_openai_streams_text_usage_and_sends_the_key(upstream_a: FakeUpstream, key_file: Path) -> None:
    provider = OpenAIProvider(_config("openai", upstream_a.openai_base, key_file, GPT))
    try:
        deltas = await _drain(provider, _request(GPT))
    finally:
        await provider.aclose()
    assert "".join(d.text for d in deltas) == "answer from a"
    assert deltas[-1].finish_reason == "stop"
    assert (deltas[-1].prompt_tokens, deltas[-1].completion_tokens) == (11, 3)
    (seen,) = upstream_a.requests
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["authorization"] == f"Bearer {SECRET}"
    body = seen.json()
    assert body["model"] == GPT and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 64
    assert "tenant" not in body and "cache_salt" not in body and "user" not in body


async def test_openai_assembles_tool_call_fragments(upstream_a: FakeUpstream, key_file: Path) -> None:
    upstream_a.script(Reply(text="", tool_call=("call_1", "get_weather", '{"city": "Paris"}')))
    provider = OpenAIProvider(_config("openai", upstream_a.openai_base, key_file, GPT))
    try:
        deltas = await _drain(provider, _request(GPT))
    finally:
        await provider.aclose()
    last = deltas[-1]
    assert last.finish_reason == "tool_calls"
    assert last.tool_calls == (
        ToolCall(id="call_1", function=FunctionCall(name="get_weather", arguments='{"city": "Paris"}')),
    )


FAULTS = [
    (Reply(status=500), UpstreamError, "upstream-500"),
    (Reply(status=503), UpstreamError, "upstream-503"),
    (Reply(status=401), UpstreamError, "upstream-401"),
    (Reply(status=429, retry_after="7"), UpstreamRateLimitedError, "upstream-429"),
    (Reply(fault="stall-before"), UpstreamTimeoutError, "first-byte-timeout"),
    (Reply(fault="stall-mid"), UpstreamTimeoutError, "stream-stalled"),
    (Reply(fault="cut"), UpstreamError, "stream-cut"),
    (Reply(fault="truncate"), UpstreamError, "stream-truncated"),
    (Reply(fault="malformed"), UpstreamError, "malformed-stream"),
    (Reply(fault="wrong-type"), UpstreamError, "bad-content-type"),
]


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
@pytest.mark.parametrize(("reply", "error", "reason"), FAULTS, ids=[f[2] for f in FAULTS])
async def test_every_fault_raises_from_the_taxonomy(
    kind: str, reply: Reply, error: type[BastionError], reason: str, upstream_a: FakeUpstream, key_file: Path
) -> None:
    upstream_a.script(reply)
    # Short timeouts only where the fault is a stall: on a loaded machine a scripted 500 can
    # take longer than 0.3 s to arrive, and would then be (rightly) a first-byte timeout.
    stall_s = 0.3 if reply.fault in ("stall-before", "stall-mid") else 8.0
    if kind == "openai":
        provider: OpenAIProvider | AnthropicProvider = OpenAIProvider(
            _config(kind, upstream_a.openai_base, key_file, GPT, stall_s=stall_s)
        )
    else:
        provider = AnthropicProvider(
            _config(kind, upstream_a.anthropic_base, key_file, CLAUDE, stall_s=stall_s)
        )
    try:
        with pytest.raises(error) as info:
            await _drain(provider, _request(GPT if kind == "openai" else CLAUDE))
    finally:
        await provider.aclose()
    assert info.value.reason == reason
    assert SECRET not in str(info.value)
    if reply.status == 429:
        assert info.value.retry_after_s == 7


async def test_connect_refused(key_file: Path) -> None:
    provider = OpenAIProvider(_config("openai", closed_port_url() + "/v1", key_file, GPT))
    try:
        with pytest.raises(UpstreamError) as info:
            await _drain(provider, _request(GPT))
    finally:
        await provider.aclose()
    assert info.value.reason == "connect-failed"


async def test_egress_goes_through_the_configured_proxy(upstream_a: FakeUpstream, key_file: Path) -> None:
    """With ``proxy`` set, the request goes to the proxy (here the fake upstream, which answers
    as the proxy would relay), addressed to the real base URL, which is not reachable directly."""
    unreachable = closed_port_url() + "/v1"
    toml = provider_toml("p", "openai", unreachable, "eu-west", key_file, GPT)
    toml = toml.replace("[providers.models]", f'proxy = "{upstream_a.url}"\n[providers.models]')
    provider = OpenAIProvider(decode_config(toml).providers[0])
    try:
        deltas = await _drain(provider, _request(GPT))
    finally:
        await provider.aclose()
    assert "".join(d.text for d in deltas) == "answer from a"
    (seen,) = upstream_a.requests
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["host"] == unreachable.removeprefix("http://").removesuffix("/v1")


async def test_key_from_environment(upstream_a: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_PROVIDER_KEY", "sk-env-key")
    config = msgspec.structs.replace(
        _config("openai", upstream_a.openai_base, Path("/nonexistent"), GPT),
        api_key_file=None,
        api_key_env="FAKE_PROVIDER_KEY",
    )
    provider = OpenAIProvider(config)
    try:
        await _drain(provider, _request(GPT))
    finally:
        await provider.aclose()
    assert upstream_a.requests[0].headers["authorization"] == "Bearer sk-env-key"


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_events_arriving_together_go_out_as_one_delta(
    kind: str, upstream_a: FakeUpstream, upstream_b: FakeUpstream, key_file: Path
) -> None:
    """One read, one delta (one write to the client instead of one per token); paced
    events stay separate deltas, so coalescing never holds text back."""
    upstream = upstream_a if kind == "openai" else upstream_b
    model = GPT if kind == "openai" else CLAUDE
    base = upstream.openai_base if kind == "openai" else upstream.anthropic_base
    cls = OpenAIProvider if kind == "openai" else AnthropicProvider
    upstream.script(
        Reply(text="one two three four", completion_tokens=4, one_write=True),
        Reply(text="one two three four", completion_tokens=4, gap_s=0.05),
    )
    provider = cls(_config(kind, base, key_file, model))
    try:
        together = await _drain(provider, _request(model))
        paced = await _drain(provider, _request(model))
    finally:
        await provider.aclose()
    for deltas in (together, paced):
        assert "".join(d.text for d in deltas) == "one two three four"
        assert deltas[-1].finish_reason == "stop" and deltas[-1].completion_tokens == 4
    assert [d.text for d in together if d.text] == ["one two three four"]
    assert [d.text for d in paced if d.text] == ["one ", "two ", "three ", "four"]
    # running counts before the usage arrives: one token per chunk of output
    assert [d.completion_tokens for d in paced if d.text] == [1, 2, 3, 4]


async def test_anthropic_translation_round_trip_with_streaming(
    upstream_b: FakeUpstream, key_file: Path
) -> None:
    upstream_b.script(
        Reply(
            text="It is sunny.",
            prompt_tokens=42,
            completion_tokens=9,
            tool_call=("toolu_2", "get_time", '{"tz": "Europe/Paris"}'),
            gap_s=0.05,  # paced like a decoding model: each piece in its own read
        )
    )
    request = GenerationRequest(
        request_id="r2",
        model=CLAUDE,
        messages=(
            ChatMessage(role="system", content="Be brief."),
            ChatMessage(role="developer", content="Use tools."),
            ChatMessage(role="user", content="Weather and time in Paris?"),
            ChatMessage(
                role="assistant",
                content="Checking.",
                tool_calls=(
                    ToolCall(
                        id="toolu_1", function=FunctionCall(name="get_weather", arguments='{"city": "Paris"}')
                    ),
                    ToolCall(id="toolu_9", function=FunctionCall(name="get_news", arguments="{}")),
                ),
            ),
            ChatMessage(role="tool", tool_call_id="toolu_1", content="sunny, 21C"),
            ChatMessage(role="tool", tool_call_id="toolu_9", content="no news"),
        ),
        sampling=SamplingOptions(temperature=0.5, stop=("END",)),
        tools=(
            {
                "type": "function",
                "function": {
                    "name": "get_time",
                    "description": "Current time",
                    "parameters": {"type": "object"},
                },
            },
        ),
    )
    provider = AnthropicProvider(_config("anthropic", upstream_b.anthropic_base, key_file, CLAUDE))
    try:
        deltas = await _drain(provider, request)
    finally:
        await provider.aclose()
    (seen,) = upstream_b.requests
    assert seen.path == "/v1/messages"
    assert seen.headers["x-api-key"] == SECRET
    assert seen.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in seen.headers
    body = seen.json()
    assert body["system"] == "Be brief.\n\nUse tools."
    assert body["max_tokens"] == 4096 and body["stream"] is True
    assert body["stop_sequences"] == ["END"] and body["temperature"] == 0.5
    assert body["tools"] == [
        {"name": "get_time", "description": "Current time", "input_schema": {"type": "object"}}
    ]
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather and time in Paris?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_9", "name": "get_news", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [  # both tool results in one user turn
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny, 21C"},
                {"type": "tool_result", "tool_use_id": "toolu_9", "content": "no news"},
            ],
        },
    ]
    assert "".join(d.text for d in deltas) == "It is sunny."
    assert len([d for d in deltas if d.text]) == 3  # streamed piece by piece
    last = deltas[-1]
    assert last.finish_reason == "tool_calls"
    assert (last.prompt_tokens, last.completion_tokens) == (42, 9)
    assert last.tool_calls is not None
    assert last.tool_calls[0].id == "toolu_2"
    assert json.loads(last.tool_calls[0].function.arguments) == {"tz": "Europe/Paris"}


@pytest.mark.parametrize(
    ("stop", "finish"),
    [
        ("end_turn", "stop"),
        ("max_tokens", "length"),
        ("stop_sequence", "stop"),
        ("refusal", "content_filter"),
    ],
)
async def test_anthropic_stop_reasons(
    stop: str, finish: str, upstream_b: FakeUpstream, key_file: Path
) -> None:
    upstream_b.script(Reply(finish=stop))
    provider = AnthropicProvider(_config("anthropic", upstream_b.anthropic_base, key_file, CLAUDE))
    try:
        deltas = await _drain(provider, _request(CLAUDE))
    finally:
        await provider.aclose()
    assert deltas[-1].finish_reason == finish


@pytest.mark.parametrize(
    ("choice", "parallel", "sent"),
    [
        (None, None, None),
        (None, True, None),
        ("auto", None, {"type": "auto"}),
        ("required", None, {"type": "any"}),
        ("none", False, {"type": "none"}),
        ({"type": "function", "function": {"name": "f"}}, None, {"type": "tool", "name": "f"}),
        (
            {"type": "function", "function": {"name": "f"}},
            False,
            {"type": "tool", "name": "f", "disable_parallel_tool_use": True},
        ),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
    ],
)
def test_tool_choice_and_parallel_tool_calls_become_one_messages_tool_choice(
    choice: str | dict[str, object] | None, parallel: bool | None, sent: dict[str, object] | None
) -> None:
    request = GenerationRequest(
        request_id="r",
        model=CLAUDE,
        messages=(ChatMessage(role="user", content="hi"),),
        tool_choice=choice,
        parallel_tool_calls=parallel,
    )
    body = json.loads(build_messages_body(request, default_max_tokens=16)[0])
    assert body.get("tool_choice") == sent


@pytest.mark.parametrize("choice", ["sometimes", {"type": "function"}, {"type": "function", "function": {}}])
def test_a_tool_choice_the_messages_api_cannot_express_is_a_400(choice: str | dict[str, object]) -> None:
    request = GenerationRequest(
        request_id="r", model=CLAUDE, messages=(ChatMessage(role="user", content="hi"),), tool_choice=choice
    )
    with pytest.raises(BastionError) as raised:
        build_messages_body(request, default_max_tokens=16)
    assert (raised.value.status_code, raised.value.param) == (400, "tool_choice")


async def test_one_factory_builds_each_kind() -> None:
    price = {"input_per_mtok": 1.0, "output_per_mtok": 2.0}
    configs = [
        msgspec.convert(
            {
                "name": name,
                "kind": kind,
                "base_url": "http://127.0.0.1:9",
                "region": "eu-west",
                "models": {m: price},
            },
            ProviderConfig,
        )
        for name, kind, m in (("o", "openai", GPT), ("a", "anthropic", CLAUDE))
    ]
    openai, anthropic = build_provider(configs[0]), build_provider(configs[1])
    assert isinstance(openai, OpenAIProvider) and isinstance(anthropic, AnthropicProvider)
    await openai.aclose()
    await anthropic.aclose()
    async with external_providers(configs) as built:
        assert {n: type(p) for n, p in built.items()} == {"o": OpenAIProvider, "a": AnthropicProvider}
        assert all(p.describe().name == n for n, p in built.items())
