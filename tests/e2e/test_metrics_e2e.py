"""Metrics end to end: a known mix of requests through the real node and the official client.

The histograms' counts must equal what the client sent, exactly; their sums
must sit just under what the client measured (the server's clock starts after
the request arrived and stops before the last byte left, so the gap is HTTP
and scheduling overhead, not a speed goal). Label values must stay bounded:
nothing the client chose (request ids, ``user``, prompts, an unknown model
name) becomes a label.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from serving.protocol import Provider
from tests.harness import TINY, bearer, node_setup, running_node

pytestmark = pytest.mark.engine

USER = "alice@example.com"
SECRET_PROMPT = "zebra-canteloupe-7781 is my private note"
#: per request: a fixed number of output tokens (``ignore_eos``), so token counts are known exactly
MAX_TOKENS = (3, 5, 8)


@dataclass
class Measured:
    requests: int = 0
    e2e_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: first content chunk, streamed requests only
    stream_ttft_s: list[float] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)


def _sample(families: dict[str, list[tuple[str, dict[str, str], float]]], name: str, **labels: str) -> float:
    total = 0.0
    for family in families.values():
        for sample, got, value in family:
            if sample == name and all(got.get(k) == v for k, v in labels.items()):
                total += value
    return total


async def _scrape(url: str) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    async with httpx.AsyncClient() as client:
        r = await client.get(url + "/metrics")
    assert r.status_code == 200
    return {
        f.name: [(s.name, dict(s.labels), float(s.value)) for s in f.samples]
        for f in text_string_to_metric_families(r.text)
    }


async def test_histograms_match_what_the_client_measured(tmp_path: Path, local_engine: Provider) -> None:
    setup = node_setup(tmp_path, audit=False)
    measured = Measured()
    async with running_node(setup, {TINY: local_engine}) as node:
        client = openai.AsyncOpenAI(base_url=node.url + "/v1", api_key=setup.keys["acme"], max_retries=0)
        other = openai.AsyncOpenAI(base_url=node.url + "/v1", api_key=setup.keys["globex"], max_retries=0)
        extra = {"ignore_eos": True}
        try:
            for i, max_tokens in enumerate(MAX_TOKENS):
                # non-streamed chat
                t0 = time.monotonic()
                chat = await client.chat.completions.create(
                    model=TINY,
                    messages=[{"role": "user", "content": f"{SECRET_PROMPT} {i}"}],
                    max_tokens=max_tokens,
                    user=USER,
                    extra_body=extra,
                )
                measured.e2e_s += time.monotonic() - t0
                assert chat.usage is not None and chat.usage.completion_tokens == max_tokens
                measured.prompt_tokens += chat.usage.prompt_tokens
                measured.completion_tokens += chat.usage.completion_tokens
                measured.ids.append(chat.id)

                # streamed chat, with usage
                t0 = time.monotonic()
                stream = await other.chat.completions.create(
                    model=TINY,
                    messages=[{"role": "user", "content": f"stream {SECRET_PROMPT} {i}"}],
                    max_tokens=max_tokens,
                    stream=True,
                    stream_options={"include_usage": True},
                    user=USER,
                    extra_body=extra,
                )
                first: float | None = None
                usage = None
                async for chunk in stream:
                    if first is None and chunk.choices and chunk.choices[0].delta.content:
                        first = time.monotonic() - t0
                    usage = chunk.usage or usage
                    measured.ids.append(chunk.id)
                measured.e2e_s += time.monotonic() - t0
                assert first is not None and usage is not None
                measured.stream_ttft_s.append(first)
                measured.prompt_tokens += usage.prompt_tokens
                measured.completion_tokens += usage.completion_tokens

                # legacy completions
                t0 = time.monotonic()
                completion = await client.completions.create(
                    model=TINY, prompt=f"{SECRET_PROMPT} {i}", max_tokens=max_tokens, extra_body=extra
                )
                measured.e2e_s += time.monotonic() - t0
                assert completion.usage is not None
                measured.prompt_tokens += completion.usage.prompt_tokens
                measured.completion_tokens += completion.usage.completion_tokens
                measured.ids.append(completion.id)
                measured.requests += 3

            # refusals: a model name the client made up, a max_tokens above the cap, a bad key
            with pytest.raises(openai.NotFoundError):
                await client.chat.completions.create(
                    model="made-up-model-by-user-xyz", messages=[{"role": "user", "content": "hi"}]
                )
            with pytest.raises(openai.BadRequestError):
                await client.chat.completions.create(
                    model=TINY, messages=[{"role": "user", "content": "hi"}], max_tokens=10**8
                )
            async with httpx.AsyncClient(base_url=node.url) as raw:
                r = await raw.post(
                    "/v1/chat/completions", headers=bearer("bst_nobody_x"), json={"model": TINY}
                )
                assert r.status_code == 401
        finally:
            await client.close()
            await other.close()

        families = await _scrape(node.url)

    n = measured.requests
    tokens = 3 * sum(MAX_TOKENS)
    assert measured.completion_tokens == tokens
    local = {"model": TINY, "route": "local"}

    # counts: exact
    assert _sample(families, "bastion_request_duration_seconds_count", **local) == n
    assert _sample(families, "bastion_time_to_first_token_seconds_count", **local) == n
    assert _sample(families, "bastion_queue_wait_seconds_count", **local) == n
    # one inter-token gap per output token after the first
    assert _sample(families, "bastion_inter_token_latency_seconds_count", **local) == tokens - n
    assert _sample(families, "bastion_requests_total", status="200", **local) == n
    assert _sample(families, "bastion_requests_total", tenant="acme", status="200") == 2 * len(MAX_TOKENS)
    assert _sample(families, "bastion_requests_total", tenant="globex", status="200") == len(MAX_TOKENS)
    assert _sample(families, "bastion_tokens_total", direction="out", **local) == measured.completion_tokens
    assert _sample(families, "bastion_tokens_total", direction="in", **local) == measured.prompt_tokens
    # the refusals are counted (not timed) under bounded labels
    assert _sample(families, "bastion_requests_total", route="none", status="404") == 1
    assert _sample(families, "bastion_requests_total", route="none", status="400") == 1
    assert _sample(families, "bastion_request_duration_seconds_count", route="none") == 0

    # sums: the server's view of each request lies inside the client's
    server_e2e = _sample(families, "bastion_request_duration_seconds_sum", **local)
    slack = 0.25 * n + 0.2 * measured.e2e_s  # loopback HTTP + client parsing, on a shared 2-core box
    assert 0 < server_e2e <= measured.e2e_s
    assert measured.e2e_s - server_e2e <= slack, (measured.e2e_s, server_e2e)
    server_ttft = _sample(families, "bastion_time_to_first_token_seconds_sum", **local)
    assert 0 < server_ttft <= server_e2e
    # every histogram's buckets agree with its count
    for name in ("bastion_request_duration_seconds", "bastion_time_to_first_token_seconds"):
        inf = _sample(families, f"{name}_bucket", le="+Inf", **local)
        assert inf == _sample(families, f"{name}_count", **local)

    # labels: bounded, nothing from the client
    forbidden = {USER, "made-up-model-by-user-xyz", *measured.ids}
    allowed = {
        "tenant": {"acme", "globex", "other"},
        "model": {TINY, "other"},
        "route": {"local", "none", "other"},
        "provider": {"local", f"local:{TINY}", "other"},
    }
    for family in families.values():
        for sample, labels, _ in family:
            for key, value in labels.items():
                assert value not in forbidden, (sample, key, value)
                assert SECRET_PROMPT not in value and "zebra" not in value
                assert not value.startswith(("chatcmpl-", "cmpl-", "req-")), (sample, key, value)
                if key in allowed:
                    assert value in allowed[key], (sample, key, value)
                if key == "status":
                    assert value.isdigit() and len(value) == 3
