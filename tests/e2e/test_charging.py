"""Budgets are charged for what was generated, however a stream ends.

A client that reads part of a long completion and disconnects, and a stream
that an external provider cuts mid-way, are charged the prompt plus the tokens
produced, through the real node on loopback (the local engine on the tiny
model, a fake upstream for the external APIs).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from router.ledger import BudgetLedger
from router.limits import Limiter
from router.stream import estimate_prompt_tokens
from serving.engine import LocalEngine
from serving.protocol import ChatMessage, GenerationRequest
from tests.fakes.upstream import FakeUpstream, Reply
from tests.harness import TINY, RunningNode, bearer, node_setup, running_node

pytestmark = pytest.mark.engine

MODEL = "fake-model-2024-08-06"
PROMPT = "Summarise the quarterly figures for the board, please."


async def _wait_until(predicate: Callable[[], bool], *, timeout: float = 15.0, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def _limiter(node: RunningNode) -> Limiter:
    limits = node.state.router.limits
    assert isinstance(limits, Limiter)  # a single node counts in memory
    return limits


def _day_tokens(node: RunningNode, tenant: str) -> int:
    return _limiter(node).usage(tenant).day_tokens


async def test_a_client_that_disconnects_is_charged_what_it_read_and_the_prompt(
    tmp_path: Path, local_engine: LocalEngine
) -> None:
    read = 40  # content chunks the client reads before it goes away; each carries at least one token
    setup = node_setup(
        tmp_path,
        tenants={
            "acme": f'models = ["{TINY}"]\nresidency = "local-only"\ntokens_per_day = {read}',
            "globex": f'models = ["{TINY}"]\nresidency = "local-only"',
        },
        audit=False,
    )
    body = {"model": TINY, "prompt": "go on", "max_tokens": 1900, "min_tokens": 1900, "ignore_eos": True}
    async with (
        running_node(setup, {TINY: local_engine}) as node,
        httpx.AsyncClient(base_url=node.url, timeout=60) as http,
    ):
        # the same prompt's size, as the engine counts it, from another tenant's request
        ref = await http.post(
            "/v1/completions",
            headers=bearer(setup.keys["globex"]),
            json={**body, "max_tokens": 1, "min_tokens": 1},
        )
        prompt_tokens = ref.json()["usage"]["prompt_tokens"]
        assert prompt_tokens > 0
        chunks = 0
        async with http.stream(
            "POST", "/v1/completions", headers=bearer(setup.keys["acme"]), json={**body, "stream": True}
        ) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["text"]:
                    chunks += 1
                    if chunks >= read:
                        break
        await _wait_until(lambda: _day_tokens(node, "acme") > 0, what="the abandoned stream to be charged")
        charged = _day_tokens(node, "acme")
        assert charged >= read + prompt_tokens
        assert charged < 1900  # the generation was aborted, not run to its end
        # the budget is spent: the next request is refused
        again = await http.post("/v1/completions", headers=bearer(setup.keys["acme"]), json=body)
        assert again.status_code == 429, again.text
        assert again.json()["error"]["code"] == "budget_exceeded"
    # and the charge survives a restart
    rows = BudgetLedger(Path(setup.config.data_dir) / "budgets.db").load()
    assert [int(r.value) for r in rows if r.tenant == "acme" and r.kind == "day_tokens"] == [charged]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeUpstream]:
    monkeypatch.setenv("FAKE_UPSTREAM_KEY", "sk-fake-secret-123")
    with FakeUpstream(text="one two three four five six seven eight") as upstream:
        yield upstream


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_a_stream_cut_mid_way_is_charged_the_tokens_that_arrived(
    tmp_path: Path, fake: FakeUpstream, kind: str
) -> None:
    setup = node_setup(
        tmp_path,
        tenants={
            "acme": 'models = ["ext"]\nresidency = ["eu-west"]\nredact = false\n'
            "tokens_per_day = 100000\nspend_per_month = 10.0"
        },
        audit=False,
        extra=f"""
[[providers]]
name = "fake"
kind = "{kind}"
base_url = "{fake.openai_base if kind == "openai" else fake.anthropic_base}"
region = "eu-west"
api_key_env = "FAKE_UPSTREAM_KEY"
[providers.models."{MODEL}"]
input_per_mtok = 1000.0
output_per_mtok = 2000.0

[[routes]]
alias = "ext"
fallbacks = [{{ provider = "fake", model = "{MODEL}" }}]
""",
    )
    arrived = 3
    # Anthropic's stream opens with message_start (the prompt's usage), content_block_start and a ping
    fake.script(Reply(fault="cut", after_chunks=arrived if kind == "openai" else arrived + 3))
    async with (
        running_node(setup, {}) as node,
        httpx.AsyncClient(base_url=node.url, timeout=30) as http,
    ):
        request = {"model": "ext", "messages": [{"role": "user", "content": PROMPT}], "stream": True}
        async with http.stream(
            "POST", "/v1/chat/completions", headers=bearer(setup.keys["acme"]), json=request
        ) as r:
            raw = (await r.aread()).decode()
        assert "one two three " in "".join(
            json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
            for line in raw.splitlines()
            if line.startswith("data: {") and '"choices"' in line
        )
        assert raw.rstrip().endswith("}") and "[DONE]" not in raw  # it ended with the error
        await _wait_until(lambda: _day_tokens(node, "acme") > 0, what="the cut stream to be charged")
        if kind == "anthropic":
            prompt = 11  # message_start reported it
        else:  # no usage arrived: the prompt is estimated from its size
            sent = GenerationRequest(
                request_id="x", model=MODEL, messages=(ChatMessage(role="user", content=PROMPT),)
            )
            prompt = estimate_prompt_tokens(sent)
        assert _day_tokens(node, "acme") == prompt + arrived
        spend = _limiter(node).usage("acme").month_spend
        assert spend == pytest.approx((prompt * 1000.0 + arrived * 2000.0) / 1e6)
