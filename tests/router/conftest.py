"""Router test fixtures: two fake upstreams on loopback, an in-process local engine, a test clock."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from router.config import RouterConfig, TenantPolicy
from router.router import RouteRequest
from router.stream import RoutedStream
from serving.errors import EngineUnavailableError
from serving.protocol import ChatMessage, Delta, GenerationRequest, Health, ProviderInfo
from tests.fakes import FakeUpstream

SECRET = "sk-test-DO-NOT-LEAK-1234567890"
GPT = "gpt-4o-2024-08-06"
CLAUDE = "claude-3-5-sonnet-20241022"


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class LocalEngine:
    """A real in-process Provider standing in for the vLLM engine, with switchable faults."""

    def __init__(self, model: str = "tiny", text: str = "local answer here") -> None:
        self.model = model
        self.text = text
        self.healthy = True
        self.waiting = 0
        self.kv_cache_usage = 0.0
        self.fail = False
        self.fail_mid = False
        self.calls: list[GenerationRequest] = []

    def describe(self) -> ProviderInfo:
        return ProviderInfo(
            name="local",
            kind="local",
            region="local",
            models=(self.model,),
            revisions={self.model: "rev-0123abcd"},
        )

    async def health(self) -> Health:
        return Health(healthy=self.healthy, waiting=self.waiting, kv_cache_usage=self.kv_cache_usage)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        self.calls.append(request)
        if self.fail:
            raise EngineUnavailableError("engine is down", reason="engine-down")
        words = self.text.split(" ")
        for i, word in enumerate(words):
            yield Delta(
                text=word + (" " if i < len(words) - 1 else ""), prompt_tokens=3, completion_tokens=i + 1
            )
            if self.fail_mid:
                raise EngineUnavailableError("engine died mid-stream", reason="engine-died")
        yield Delta(finish_reason="stop", prompt_tokens=3, completion_tokens=len(words))


@pytest.fixture(scope="session")
def upstream_a() -> Iterator[FakeUpstream]:
    with FakeUpstream(text="answer from a") as fake:
        yield fake


@pytest.fixture(scope="session")
def upstream_b() -> Iterator[FakeUpstream]:
    with FakeUpstream(text="answer from b") as fake:
        yield fake


@pytest.fixture(autouse=True)
def _reset_upstreams(request: pytest.FixtureRequest) -> None:
    for name in ("upstream_a", "upstream_b"):
        if name in request.fixturenames:
            request.getfixturevalue(name).reset()


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "key"
    path.write_text(SECRET + "\n")
    return path


def decode_config(text: str) -> RouterConfig:
    return msgspec.toml.decode(text.encode(), type=RouterConfig)


def policy(**fields: Any) -> TenantPolicy:
    return msgspec.json.decode(json.dumps(fields).encode(), type=TenantPolicy)


def provider_toml(
    name: str,
    kind: str,
    base_url: str,
    region: str,
    key: Path,
    model: str,
    *,
    stall_s: float = 1.0,
    breaker: str = "",
) -> str:
    return f"""
[[providers]]
name = "{name}"
kind = "{kind}"
base_url = "{base_url}"
region = "{region}"
api_key_file = "{key}"
timeouts = {{ connect_s = 1, first_byte_s = {stall_s}, between_chunks_s = {stall_s}, total_s = 10 }}
breaker = {{ window_s = 30, min_requests = 2, failure_ratio = 0.5, open_s = 10 {breaker} }}
[providers.models]
"{model}" = {{ input_per_mtok = 2.0, output_per_mtok = 10.0 }}
"""


def standard_config(
    a: FakeUpstream,
    b: FakeUpstream,
    key: Path,
    *,
    routing: str = "",
    stall_s: float = 1.0,
    budget_ms: float = 100,
) -> RouterConfig:
    return decode_config(
        f"""
[routing]
backoff_base_s = 0.0
local_ttft_prior_ms = 10
{routing}
"""
        + provider_toml("a", "openai", a.openai_base, "eu-west", key, GPT, stall_s=stall_s)
        + provider_toml("b", "anthropic", b.anthropic_base, "eu-central", key, CLAUDE, stall_s=stall_s)
        + provider_toml("us", "openai", b.openai_base, "us-east", key, GPT, stall_s=stall_s)
        + f"""
[[routes]]
alias = "chat"
local = "tiny"
ttft_budget_ms = {budget_ms}
fallbacks = [
  {{ provider = "a", model = "{GPT}" }},
  {{ provider = "b", model = "{CLAUDE}" }},
]

[[routes]]
alias = "us-chat"
local = "tiny"
ttft_budget_ms = {budget_ms}
fallbacks = [{{ provider = "us", model = "{GPT}" }}]

[[routes]]
alias = "tiny-only"
local = "tiny"
ttft_budget_ms = {budget_ms}
"""
    )


def chat(
    tenant: str,
    tenant_policy: TenantPolicy,
    text: str = "Hello there",
    *,
    alias: str = "chat",
    header: str | None = None,
    messages: tuple[ChatMessage, ...] | None = None,
) -> RouteRequest:
    generation = GenerationRequest(
        request_id="req-1",
        model=alias,
        tenant=tenant,
        messages=messages or (ChatMessage(role="user", content=text),),
    )
    return RouteRequest(
        tenant=tenant,
        policy=tenant_policy,
        alias=alias,
        generation=generation,
        residency_headers=() if header is None else (header,),
    )


async def collect(stream: RoutedStream) -> tuple[str, Delta]:
    text = ""
    last = Delta()
    async for delta in stream:
        text += delta.text
        last = delta
    return text, last
