"""The router end to end: a real in-process local engine, real providers, fake upstreams on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from router.config import RouterConfig
from router.decision import Charge, ForwardDecision, Outcome, Refusal
from router.redaction import Redactor
from router.router import Router
from serving.errors import (
    BadRequestError,
    BastionError,
    BudgetExceededError,
    EngineUnavailableError,
    ModelNotFoundError,
    RateLimitedError,
    RedactionError,
    ResidencyRejectedError,
    ServiceUnavailableError,
    UpstreamError,
)
from tests.fakes import FakeUpstream, Reply
from tests.router.conftest import FakeClock, LocalEngine, chat, collect, policy, standard_config

EXTERNAL = policy(residency=["eu-west", "eu-central"], redact=False)
LOCAL_ONLY = policy(residency="local-only")


@dataclass
class Env:
    router: Router
    engine: LocalEngine
    clock: FakeClock
    a: FakeUpstream
    b: FakeUpstream
    key: Path

    def upstream_requests(self) -> int:
        return len(self.a.requests) + len(self.b.requests)


def _make(
    config: RouterConfig,
    engine: LocalEngine,
    clock: FakeClock,
    *,
    with_local: bool = True,
    redactor: Redactor | None = None,
) -> Router:
    return Router(config, local={"tiny": engine} if with_local else {}, clock=clock, redactor=redactor)


@pytest.fixture
async def env(upstream_a: FakeUpstream, upstream_b: FakeUpstream, key_file: Path) -> AsyncIterator[Env]:
    config = standard_config(
        upstream_a,
        upstream_b,
        key_file,
        routing="local_breaker = { min_requests = 2, failure_ratio = 0.5, open_s = 10 }",
    )
    engine, clock = LocalEngine(), FakeClock()
    router = _make(config, engine, clock)
    yield Env(router, engine, clock, upstream_a, upstream_b, key_file)
    await router.aclose()


async def test_local_first_when_it_fits_the_budget(env: Env) -> None:
    stream = await env.router.open(chat("acme", EXTERNAL))
    text, last = await collect(stream)
    assert (
        stream.decision.route,
        stream.decision.reason,
        stream.decision.provider,
        stream.decision.model,
    ) == ("local", "ok", "local", "tiny")
    assert stream.decision.revision == "rev-0123abcd"
    assert text == "local answer here" and last.finish_reason == "stop"
    assert env.engine.calls[0].model == "tiny"
    assert env.upstream_requests() == 0
    assert env.router.aliases() == ["chat", "tiny-only", "us-chat"]


@pytest.mark.parametrize("upstream", ["a", "b"])
async def test_connections_are_reused_after_complete_streams(env: Env, upstream: str) -> None:
    env.engine.healthy = False
    header = "eu-west" if upstream == "a" else "eu-central"
    for _ in range(3):
        await collect(await env.router.open(chat("t", EXTERNAL, header=header)))
    fake = env.a if upstream == "a" else env.b
    assert len({r.client for r in fake.requests}) == 1


async def test_unknown_alias(env: Env) -> None:
    with pytest.raises(ModelNotFoundError):
        await env.router.open(chat("acme", EXTERNAL, alias="nope"))


# -- the residency invariant ------------------------------------------------------------------------

LOCAL_FAULTS = ["stopped", "unhealthy", "saturated", "kv-full", "failing", "breaker-open"]


async def _break_local(env: Env, fault: str, request_policy: object, header: str | None) -> Router:
    if fault == "stopped":
        config = standard_config(env.a, env.b, env.key)
        return _make(config, env.engine, env.clock, with_local=False)
    if fault == "unhealthy":
        env.engine.healthy = False
    elif fault == "saturated":
        env.engine.waiting = 10_000
    elif fault == "kv-full":
        env.engine.waiting, env.engine.kv_cache_usage = 1, 1.0
    elif fault in ("failing", "breaker-open"):
        env.engine.fail = True
    if fault == "breaker-open":
        for _ in range(2):
            with pytest.raises(ResidencyRejectedError):
                await env.router.open(chat("secret-tenant", request_policy, header=header))  # type: ignore[arg-type]
        assert env.router.breaker_states()["local:tiny"] == "open"
    return env.router


@pytest.mark.parametrize("fault", LOCAL_FAULTS)
@pytest.mark.parametrize("how", ["tenant-policy", "header-tightened"])
async def test_local_only_never_leaves_the_node(env: Env, fault: str, how: str) -> None:
    # The upstreams would answer fine: only the rule keeps the request in.
    request_policy = LOCAL_ONLY if how == "tenant-policy" else EXTERNAL
    header = "local-only" if how == "header-tightened" else None
    router = await _break_local(env, fault, request_policy, header)
    try:
        for _ in range(3):
            with pytest.raises(ResidencyRejectedError) as info:
                await router.open(chat("secret-tenant", request_policy, header=header))  # type: ignore[arg-type]
            assert info.value.status_code == 503
            assert info.value.retry_after_s is not None and info.value.retry_after_s > 0
            assert info.value.reason in {
                "no-local",
                "local-unhealthy",
                "overflow",
                "local-failed",
                "breaker-open",
            }
    finally:
        if router is not env.router:
            await router.aclose()
    assert env.upstream_requests() == 0


async def test_header_may_not_loosen_residency(env: Env) -> None:
    env.engine.healthy = False
    with pytest.raises(ResidencyRejectedError):
        await env.router.open(chat("t", LOCAL_ONLY, header="eu-west,eu-central"))
    assert env.upstream_requests() == 0


async def test_header_narrows_regions(env: Env) -> None:
    env.engine.healthy = False
    stream = await env.router.open(chat("t", EXTERNAL, header="eu-central"))
    await collect(stream)
    assert stream.decision.route == "external:b"
    assert [(a.route, a.reason) for a in stream.attempts if a.outcome == "skipped"] == [
        ("local", "local-unhealthy"),
        ("external:a", "residency"),
    ]
    with pytest.raises(ResidencyRejectedError):
        await env.router.open(chat("t", EXTERNAL, header="us-east"))  # outside the tenant's regions
    with pytest.raises(BadRequestError):
        await env.router.open(chat("t", EXTERNAL, header="anywhere please!"))
    assert len(env.a.requests) == 0 and len(env.b.requests) == 1


async def test_route_without_fallbacks_and_local_down_is_engine_unavailable(env: Env) -> None:
    env.engine.healthy = False
    with pytest.raises(EngineUnavailableError) as info:
        await env.router.open(chat("t", EXTERNAL, alias="tiny-only"))
    assert info.value.status_code == 503 and info.value.reason == "local-unhealthy"
    assert env.upstream_requests() == 0


async def test_region_outside_policy_is_never_used(env: Env) -> None:
    env.engine.healthy = False
    with pytest.raises(ResidencyRejectedError):
        await env.router.open(chat("t", EXTERNAL, alias="us-chat"))
    assert env.upstream_requests() == 0


# -- overflow and failover ---------------------------------------------------------------------------


async def test_overflow_goes_to_the_first_healthy_fallback(env: Env) -> None:
    env.engine.waiting = 50  # 10 ms prior x 51 > 100 ms budget
    stream = await env.router.open(chat("t", EXTERNAL))
    text, last = await collect(stream)
    assert last.finish_reason == "stop"
    assert (stream.decision.route, stream.decision.reason) == ("external:a", "overflow")
    assert stream.decision.model == "gpt-4o-2024-08-06" and stream.decision.revision == "gpt-4o-2024-08-06"
    assert text == "answer from a"
    assert env.engine.calls == []
    assert len(env.a.requests) == 1 and env.a.requests[0].json()["model"] == "gpt-4o-2024-08-06"
    # one success and one failure reach a's failure ratio (0.5 of min 2): overflow then skips a for b
    env.a.script(Reply(status=500))
    s = await env.router.open(chat("t", EXTERNAL))
    await collect(s)
    assert (s.decision.route, s.decision.reason) == ("external:b", "failover")
    assert env.router.breaker_states()["a"] == "open"
    stream = await env.router.open(chat("t", EXTERNAL))
    await collect(stream)
    assert (stream.decision.route, stream.decision.reason) == ("external:b", "overflow")
    assert ("external:a", "breaker-open") in [(a.route, a.reason) for a in stream.attempts]
    assert len(env.a.requests) == 2


async def test_overflow_with_nowhere_to_go_is_served_locally(env: Env) -> None:
    env.engine.waiting = 50
    stream = await env.router.open(chat("t", policy(residency=["us-east"]), alias="chat"))
    await collect(stream)
    assert (stream.decision.route, stream.decision.reason) == ("local", "overflow")
    assert env.upstream_requests() == 0


async def test_failover_order_and_attempts(env: Env) -> None:
    env.engine.healthy = False
    env.a.script(Reply(status=503))
    stream = await env.router.open(chat("t", EXTERNAL))
    text, _ = await collect(stream)
    assert (stream.decision.route, stream.decision.reason, text) == (
        "external:b",
        "failover",
        "answer from b",
    )
    assert [(a.route, a.outcome, a.reason) for a in stream.attempts] == [
        ("local", "skipped", "local-unhealthy"),
        ("external:a", "failed", "upstream-503"),
        ("external:b", "ok", "failover"),
    ]
    assert env.a.requests[0].at <= env.b.requests[0].at


async def test_local_failure_fails_over_to_external(env: Env) -> None:
    env.engine.fail = True
    stream = await env.router.open(chat("t", EXTERNAL))
    await collect(stream)
    assert (stream.decision.route, stream.decision.reason) == ("external:a", "failover")
    assert stream.attempts[0].reason == "engine-down"


@dataclass
class Observer:
    """A ``RouteObserver`` that keeps what it is told; ``refuse_with`` makes ``on_forward`` raise."""

    forwarded: list[ForwardDecision] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    settled: list[tuple[Outcome, Charge]] = field(default_factory=list)
    before: Callable[[ForwardDecision], None] | None = None
    refuse_with: BastionError | None = None

    async def on_forward(self, decision: ForwardDecision) -> None:
        if self.refuse_with is not None:
            raise self.refuse_with
        if self.before is not None:
            self.before(decision)
        self.forwarded.append(decision)

    def on_refuse(self, refusal: Refusal) -> None:
        self.refusals.append(refusal)

    def on_settle(self, outcome: Outcome, charge: Charge) -> None:
        self.settled.append((outcome, charge))


async def test_on_forward_sees_every_attempt_before_it_is_sent(env: Env) -> None:
    env.engine.healthy = False
    env.a.script(Reply(status=503))

    def nothing_sent_yet(decision: ForwardDecision) -> None:
        # nothing has reached this attempt's upstream yet
        assert len((env.a if decision.route == "external:a" else env.b).requests) == 0

    observer = Observer(before=nothing_sent_yet)
    p = policy(residency=["eu-west", "eu-central"], redact=True)
    stream = await env.router.open(chat("t", p, text=PII), observer=observer)
    await collect(stream)
    seen = observer.forwarded
    assert [(d.route, d.reason, d.attempt) for d in seen] == [
        ("external:a", "local-unhealthy", 0),
        ("external:b", "failover", 1),
    ]
    assert seen[1].model == "claude-3-5-sonnet-20241022" and seen[1].provider == "b"
    assert seen[1].redactions == {"EMAIL": 1, "PHONE": 1, "CARD": 1}
    # the stream carries the decision it streams with: the last one forwarded, not a copy of its facts
    assert stream.decision is seen[-1]
    [(outcome, charge)] = observer.settled
    assert outcome.ok and stream.charge == charge and charge.completion_tokens > 0


async def test_on_forward_failing_forwards_nothing(env: Env) -> None:
    env.engine.healthy = False
    observer = Observer(
        refuse_with=ServiceUnavailableError("audit log unavailable", reason="audit-unavailable")
    )
    with pytest.raises(ServiceUnavailableError) as info:
        await env.router.open(chat("t", EXTERNAL), observer=observer)
    assert info.value.reason == "audit-unavailable"
    assert env.upstream_requests() == 0
    assert env.router.breaker_states()["a"] == "closed"
    assert observer.settled == []


async def test_a_plan_without_candidates_is_told_to_the_observer_once(env: Env) -> None:
    env.engine.healthy = False
    observer = Observer()
    with pytest.raises(ResidencyRejectedError) as info:
        await env.router.open(chat("t", LOCAL_ONLY), observer=observer)
    assert observer.refusals == [Refusal(reason="local-unhealthy", skipped=(("local", "local-unhealthy"),))]
    assert info.value.reason == "local-unhealthy" and observer.forwarded == []


async def test_allowed_providers(env: Env) -> None:
    env.engine.healthy = False
    stream = await env.router.open(
        chat("t", policy(residency=["eu-west", "eu-central"], allowed_providers=["b"]))
    )
    await collect(stream)
    assert stream.decision.route == "external:b" and len(env.a.requests) == 0


async def test_all_candidates_failing_is_a_502(env: Env) -> None:
    env.engine.healthy = False
    env.a.script(Reply(fault="cut", after_chunks=0))
    env.b.script(Reply(status=500))
    with pytest.raises(UpstreamError) as info:
        await env.router.open(chat("t", EXTERNAL))
    assert info.value.status_code == 502 and info.value.reason == "all-candidates-failed"


# -- breakers, 429, mid-stream --------------------------------------------------------------------------


async def test_breaker_opens_and_recovers_through_a_probe(env: Env) -> None:
    env.engine.healthy = False
    env.a.script(Reply(status=500), Reply(status=500))
    for _ in range(2):
        await collect(await env.router.open(chat("t", EXTERNAL)))
    assert env.router.breaker_states()["a"] == "open"
    stream = await env.router.open(chat("t", EXTERNAL))
    await collect(stream)
    assert stream.decision.route == "external:b" and len(env.a.requests) == 2
    env.clock.advance(10)
    assert env.router.breaker_states()["a"] == "half-open"
    stream = await env.router.open(chat("t", EXTERNAL))
    await collect(stream)
    assert stream.decision.route == "external:a"
    assert env.router.breaker_states()["a"] == "closed"


async def test_breakers_open_everywhere_is_503_with_retry_after(env: Env) -> None:
    env.engine.healthy = False
    env.a.script(*[Reply(status=500)] * 2)
    env.b.script(*[Reply(status=500)] * 2)
    for _ in range(2):
        with pytest.raises(UpstreamError):
            await env.router.open(chat("t", EXTERNAL))
    with pytest.raises(ServiceUnavailableError) as info:
        await env.router.open(chat("t", EXTERNAL))
    assert info.value.reason == "breaker-open"
    # the soonest of: the local engine's recheck (1 s) and the breakers' open time (10 s)
    assert info.value.retry_after_s == pytest.approx(1.0)


async def test_429_cools_the_provider_down_for_its_retry_after(env: Env) -> None:
    env.engine.healthy = False
    env.a.script(Reply(status=429, retry_after="30"))
    first = await env.router.open(chat("t", EXTERNAL))
    await collect(first)
    assert (first.decision.route, first.decision.reason) == ("external:b", "failover")
    assert first.attempts[1].outcome == "rate-limited" and first.attempts[1].status_code == 429
    second = await env.router.open(chat("t", EXTERNAL))
    await collect(second)
    assert (
        second.decision.route == "external:b" and len(env.a.requests) == 1
    )  # a not asked again while cooling
    assert env.router.breaker_states()["a"] == "closed"  # a 429 is not a breaker failure
    env.clock.advance(31)
    third = await env.router.open(chat("t", EXTERNAL))
    await collect(third)
    assert third.decision.route == "external:a"


async def test_429_retry_after_is_waited_out_within_the_budget(env: Env) -> None:
    env.engine.healthy = False
    only_us = policy(residency=["us-east"], redact=False)
    env.b.script(Reply(status=429, retry_after="0.2"))
    stream = await env.router.open(chat("t", only_us, alias="us-chat"))
    await collect(stream)
    assert (stream.decision.route, stream.decision.reason) == ("external:us", "failover")
    first, second = env.b.requests
    assert second.at - first.at >= 0.2
    env.b.script(Reply(status=429, retry_after="3600"))
    with pytest.raises(ServiceUnavailableError) as info:
        await env.router.open(chat("t", only_us, alias="us-chat"))
    assert info.value.reason in {"upstream-rate-limited"} and info.value.retry_after_s is not None


@pytest.mark.parametrize("fault", ["cut", "truncate", "stall-mid", "malformed"])
async def test_failure_after_the_first_token_raises_from_the_stream(env: Env, fault: str) -> None:
    env.engine.healthy = False
    env.a.script(Reply(fault=fault, after_chunks=2, text="one two three four five", stall_s=5))
    stream = await env.router.open(chat("t", EXTERNAL))
    assert stream.decision.route == "external:a"
    received = ""
    with pytest.raises(UpstreamError):
        async for delta in stream:
            received += delta.text
    assert received.startswith("one")
    assert len(env.b.requests) == 0  # no failover after the first token


async def test_mid_stream_failures_count_in_the_breaker(env: Env) -> None:
    env.engine.healthy = False
    env.a.script(Reply(fault="cut", after_chunks=2), Reply(fault="cut", after_chunks=2))
    for _ in range(2):
        stream = await env.router.open(chat("t", EXTERNAL))
        with pytest.raises(BastionError):
            await collect(stream)
    assert env.router.breaker_states()["a"] == "open"


async def test_closing_the_stream_aborts_the_upstream_call(env: Env) -> None:
    env.engine.healthy = False
    env.a.script(Reply(fault="stall-mid", after_chunks=2, text="one two three four", stall_s=30))
    stream = await env.router.open(chat("t", EXTERNAL))
    assert (await anext(stream)).text.startswith("one ")  # the two pieces sent before the stall
    await stream.aclose()
    await env.a.wait_for_disconnects(1)
    assert env.router.breaker_states()["a"] == "closed"  # a client leaving is not the provider's failure


async def test_client_leaving_before_the_first_token_aborts_the_upstream_call(env: Env) -> None:
    env.engine.healthy = False
    env.a.script(Reply(fault="stall-before", stall_s=30))
    task = asyncio.create_task(env.router.open(chat("t", EXTERNAL)))
    await env.a.wait_for_requests(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await env.a.wait_for_disconnects(1)
    assert env.router.breaker_states()["a"] == "closed"
    assert len(env.b.requests) == 0


async def test_local_mid_stream_failure_raises(env: Env) -> None:
    env.engine.fail_mid = True
    stream = await env.router.open(chat("t", LOCAL_ONLY))
    with pytest.raises(EngineUnavailableError):
        await collect(stream)
    assert env.upstream_requests() == 0


# -- redaction ------------------------------------------------------------------------------------------

PII = "Mail jane.roe@example.org or call +1 415 555 2671 about card 4111 1111 1111 1111."


async def test_upstream_sees_placeholders_client_sees_values(env: Env) -> None:
    env.engine.healthy = False
    env.a.script(Reply(echo=True))
    restore = policy(residency=["eu-west"], redact=True, restore_pii=True)
    stream = await env.router.open(chat("t", restore, text=PII))
    text, _ = await collect(stream)
    sent = env.a.requests[0].body.decode()
    for value in ("jane.roe@example.org", "415 555 2671", "4111"):
        assert value not in sent
    assert env.a.requests[0].json()["messages"][0]["content"] == (
        "Mail [EMAIL_1] or call [PHONE_1] about card [CARD_1]."
    )
    assert text == PII
    assert stream.decision.redactions == {"EMAIL": 1, "PHONE": 1, "CARD": 1}
    assert all(isinstance(v, int) for v in stream.decision.redactions.values())


async def test_long_prompts_are_redacted_too(env: Env) -> None:
    env.engine.healthy = False
    long_text = "filler words for a long context. " * 600 + PII  # past the inline-redaction size
    stream = await env.router.open(chat("t", policy(residency=["eu-west"], redact=True), text=long_text))
    await collect(stream)
    sent = env.a.requests[0].json()["messages"][0]["content"]
    assert sent.endswith("Mail [EMAIL_1] or call [PHONE_1] about card [CARD_1].")
    assert stream.decision.redactions == {"EMAIL": 1, "PHONE": 1, "CARD": 1}


async def test_without_restore_the_client_sees_placeholders(env: Env) -> None:
    env.engine.healthy = False
    env.b.script(Reply(echo=True))
    stream = await env.router.open(chat("t", policy(residency=["eu-central"], redact=True), text=PII))
    text, _ = await collect(stream)
    assert stream.decision.route == "external:b"  # the Anthropic path redacts too
    assert text == "Mail [EMAIL_1] or call [PHONE_1] about card [CARD_1]."
    assert "jane.roe" not in env.b.requests[0].body.decode()


async def test_local_route_is_not_redacted(env: Env) -> None:
    stream = await env.router.open(chat("t", policy(residency=["eu-west"], redact=True), text=PII))
    await collect(stream)
    assert stream.decision.route == "local" and stream.decision.redactions == {}
    assert env.engine.calls[0].messages is not None and env.engine.calls[0].messages[0].content == PII


class _BrokenRedactor(Redactor):
    def find(self, text: str, **_: Any) -> list[tuple[int, int, str]]:
        raise MemoryError("no memory for the detector")


async def test_redaction_failure_sends_nothing_out(env: Env, key_file: Path) -> None:
    router = _make(standard_config(env.a, env.b, key_file), env.engine, env.clock, redactor=_BrokenRedactor())
    env.engine.healthy = False
    try:
        with pytest.raises(RedactionError):
            await router.open(chat("t", policy(residency=["eu-west"], redact=True), text=PII))
    finally:
        await router.aclose()
    assert env.upstream_requests() == 0


# -- limits and budgets ------------------------------------------------------------------------------


async def test_rpm_trips_at_the_right_count(env: Env) -> None:
    p = policy(residency="local-only", rpm=2)
    for _ in range(2):
        await collect(await env.router.open(chat("t", p)))
    with pytest.raises(RateLimitedError) as info:
        await env.router.open(chat("t", p))
    assert info.value.status_code == 429 and info.value.retry_after_s == pytest.approx(60)
    assert len(env.engine.calls) == 2


async def test_tokens_per_day_trips_at_the_right_count(env: Env) -> None:
    p = policy(residency="local-only", tokens_per_day=12)  # each local answer: 3 prompt + 3 completion
    for _ in range(2):
        await collect(await env.router.open(chat("t", p)))
    with pytest.raises(BudgetExceededError) as info:
        await env.router.open(chat("t", p))
    assert info.value.reason == "budget-tokens-per-day"


async def test_monthly_spend_from_usage_and_prices(env: Env) -> None:
    env.engine.healthy = False
    p = policy(residency=["eu-west"], redact=False, spend_per_month=0.0001)
    costs = []
    for _ in range(2):
        stream = await env.router.open(chat("t", p))
        await collect(stream)
        assert stream.charge is not None
        costs.append(stream.charge.cost)
    # 11 prompt tokens at 2.0/M + 3 completion tokens at 10.0/M
    assert costs == [pytest.approx(11 * 2e-6 + 3 * 1e-5)] * 2
    with pytest.raises(BudgetExceededError) as info:
        await env.router.open(chat("t", p))
    assert info.value.reason == "budget-spend-per-month"
    env.engine.healthy = True  # local use costs nothing and stays open
    stream = await env.router.open(chat("t", p))
    await collect(stream)
    assert stream.decision.route == "local"
    assert len(env.a.requests) == 2
