"""Latency histograms on external routes show the upstream's real TTFT and token gaps.

External APIs report token counts only at the end of a stream; the node must
still time the first token when it arrives and every gap after it. A fake
upstream injects a known TTFT and known gaps between tokens, and the node's
``/metrics`` must show them, for streamed and non-streamed client requests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.upstream import FakeUpstream, Reply
from tests.harness import bearer, node_setup, running_node

MODEL = "fake-model-2024-08-06"
# gaps long enough that a busy shared test host does not read two of them at once
TTFT_S = 0.3
ITL_S = 0.25
PIECES = 8  # "a b c d e f g h": one output event per word
#: the node's own share of the TTFT (parsing, routing, connecting to the upstream) on a busy test host
OVERHEAD_S = 0.03


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeUpstream]:
    monkeypatch.setenv("FAKE_UPSTREAM_KEY", "sk-fake-secret-123")
    with FakeUpstream(text="a b c d e f g h") as upstream:
        yield upstream


def _samples(text: str, route: str) -> dict[tuple[str, str], float]:
    """(sample name, bucket bound or token direction or "") -> value, for one route."""
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("route") == route:
                out[(s.name, s.labels.get("le", s.labels.get("direction", "")))] = float(s.value)
    return out


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "not-streamed"])
@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_ttft_and_inter_token_latency_are_the_upstreams(
    tmp_path: Path, fake: FakeUpstream, kind: str, stream: bool
) -> None:
    setup = node_setup(
        tmp_path,
        tenants={"acme": 'models = ["ext"]\nresidency = ["eu-west"]\nredact = false'},
        audit=False,
        extra=f"""
[[providers]]
name = "fake"
kind = "{kind}"
base_url = "{fake.openai_base if kind == "openai" else fake.anthropic_base}"
region = "eu-west"
api_key_env = "FAKE_UPSTREAM_KEY"
[providers.models."{MODEL}"]
input_per_mtok = 1.0
output_per_mtok = 2.0

[[routes]]
alias = "ext"
fallbacks = [{{ provider = "fake", model = "{MODEL}" }}]
""",
    )
    # a first, unpaced request warms the node's path to the upstream (its connection pool, ...):
    # what is measured is the second one, as the difference of two scrapes
    fake.script(Reply(), Reply(ttft_s=TTFT_S, itl_s=(ITL_S,)))
    async with (
        running_node(setup, {}) as node,
        httpx.AsyncClient(base_url=node.url, timeout=30) as http,
    ):
        request = {"model": "ext", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
        scrapes = []
        for _ in range(2):
            r = await http.post("/v1/chat/completions", headers=bearer(setup.keys["acme"]), json=request)
            assert r.status_code == 200, r.text
            scrapes.append(_samples((await http.get("/metrics")).text, "external:fake"))
    warm, after = scrapes
    metrics = {k: v - warm.get(k, 0.0) for k, v in after.items()}
    ttft = "bastion_time_to_first_token_seconds"
    itl = "bastion_inter_token_latency_seconds"
    assert metrics[(f"{ttft}_count", "")] == 1
    assert TTFT_S <= metrics[(f"{ttft}_sum", "")] < TTFT_S + OVERHEAD_S
    # one gap per token after the first, each about the injected one: all of them between
    # the 200 ms and 300 ms bucket bounds, and their mean within a few milliseconds of 250 ms
    gaps = metrics[(f"{itl}_count", "")]
    assert gaps == PIECES - 1
    assert metrics[(f"{itl}_bucket", "0.2")] == 0
    assert metrics[(f"{itl}_bucket", "0.3")] == gaps
    assert metrics[(f"{itl}_sum", "")] / gaps == pytest.approx(ITL_S, abs=0.004)
    # the provider's usage gives the token count
    assert metrics[("bastion_tokens_total", "in")] == 11
    assert metrics[("bastion_tokens_total", "out")] == PIECES
