"""Tenant limits in a real PostgreSQL server, shared by several nodes (``PgLimits`` instances).

Each ``PgLimits`` has its own connection pool, as two nodes would; the wall clock is
a test clock so that a minute window never turns over mid-test by accident.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import psycopg
import pytest

from router.pg_limits import PgLimits
from serving.errors import BudgetExceededError, RateLimitedError, StateUnavailableError
from tests.postgres import PostgresServer
from tests.router.conftest import FakeClock, policy

# 12:00:10 UTC: 50 s left in the minute
NOON = dt.datetime(2026, 3, 31, 12, 0, 10, tzinfo=dt.UTC).timestamp()


@asynccontextmanager
async def fleet(url: str, wall: Callable[[], float], nodes: int = 2) -> AsyncIterator[list[PgLimits]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(PgLimits.open(url, wall_clock=wall)) for _ in range(nodes)]


async def admitted(limits: PgLimits, tenant: str, **limits_: int) -> bool:
    try:
        await limits.admit(tenant, policy(**limits_))
    except RateLimitedError:
        return False
    return True


async def test_rpm_holds_across_two_nodes_the_eleventh_is_refused(pg_url: str) -> None:
    async with fleet(pg_url, FakeClock(NOON)) as (a, b):
        results = [await admitted((a, b)[i % 2], "acme", rpm=10) for i in range(11)]
        assert results == [True] * 10 + [False]
        with pytest.raises(RateLimitedError) as info:
            await b.admit("acme", policy(rpm=10))
        assert info.value.status_code == 429
        assert info.value.reason == "rate-limit-rpm"
        assert info.value.retry_after_s == pytest.approx(50)
        assert await admitted(a, "globex", rpm=10)  # per tenant


async def test_concurrent_checks_never_admit_past_the_limit(pg_url: str) -> None:
    """60 checks at once from three nodes: exactly ``rpm`` get through (one atomic statement each)."""
    async with fleet(pg_url, FakeClock(NOON), nodes=3) as nodes:
        results = await asyncio.gather(*(admitted(nodes[i % 3], "acme", rpm=25) for i in range(60)))
        assert sum(results) == 25


async def test_the_next_minute_opens_a_new_window(pg_url: str) -> None:
    wall = FakeClock(NOON)
    async with fleet(pg_url, wall) as (a, b):
        assert [await admitted(a, "acme", rpm=2) for _ in range(3)] == [True, True, False]
        wall.advance(50)  # 12:01:00
        assert await admitted(b, "acme", rpm=2)


async def test_tokens_charged_on_one_node_count_on_the_other(pg_url: str) -> None:
    async with fleet(pg_url, FakeClock(NOON)) as (a, b):
        await a.admit("acme", policy(tpm=100, tokens_per_day=1000))
        a.record("acme", tokens=120)
        await a.flush()
        with pytest.raises(RateLimitedError) as info:
            await b.admit("acme", policy(tpm=100))
        assert info.value.reason == "rate-limit-tpm"
        b.record("acme", tokens=900)
        await b.flush()
        with pytest.raises(BudgetExceededError) as budget:
            await a.admit("acme", policy(tokens_per_day=1000))
        assert budget.value.reason == "budget-tokens-per-day"
        assert budget.value.retry_after_s == pytest.approx(12 * 3600 - 10)


async def test_monthly_spend_is_shared(pg_url: str) -> None:
    async with fleet(pg_url, FakeClock(NOON)) as (a, b):
        p = policy(spend_per_month=1.0)
        a.record("acme", tokens=10, spend=0.75)
        b.record("acme", tokens=10, spend=0.125)
        await a.flush()
        await b.flush()
        assert await a.spend_left("acme", p) == pytest.approx(0.125)
        assert await b.spend_left("acme", p) == pytest.approx(0.125)
        assert await b.spend_left("acme", policy()) is None


async def test_charges_queued_by_record_are_written_in_the_background(pg_url: str) -> None:
    async with fleet(pg_url, FakeClock(NOON), nodes=1) as (a,):
        a.record("acme", tokens=5, spend=0.5)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while a.pending:
            assert loop.time() < deadline, "the writer never wrote the charge"
            await asyncio.sleep(0.01)
        assert await a.spend_left("acme", policy(spend_per_month=1.0)) == pytest.approx(0.5)


async def test_an_unreachable_server_refuses_requests_and_recovers(
    postgres: PostgresServer, pg_url: str
) -> None:
    async with fleet(pg_url, FakeClock(NOON), nodes=1) as (a,):
        assert await admitted(a, "acme", rpm=10)
        postgres.stop()
        try:
            with pytest.raises(StateUnavailableError) as info:
                await a.admit("acme", policy(rpm=10))
            assert info.value.status_code == 503
            assert info.value.code == "state_unavailable"
            assert "refused" in info.value.message
            with pytest.raises(StateUnavailableError):
                await a.spend_left("acme", policy(spend_per_month=1.0))
            a.record("acme", tokens=4)  # kept for later, not lost
            a.record("acme", tokens=3)
            with pytest.raises(psycopg.Error):
                await a.flush()
            assert a.pending == 2  # summed per counter: this minute's and today's tokens
        finally:
            postgres.start()
        assert await admitted(a, "acme", rpm=10)  # the pool reconnects
        await a.flush()
        assert a.pending == 0
        with pytest.raises(RateLimitedError):
            await a.admit("acme", policy(tpm=7))


async def test_a_node_cannot_start_without_its_state_store() -> None:
    url = "postgresql://nobody:x@127.0.0.1:1/none"
    with pytest.raises(StateUnavailableError, match="cannot reach"):
        async with PgLimits.open(url, timeout_s=1.0):
            pass  # pragma: no cover


async def test_a_wrong_password_is_refused(postgres: PostgresServer, pg_url: str) -> None:
    wrong = pg_url.replace(postgres.password, "not-the-password")
    with pytest.raises(StateUnavailableError) as info:
        async with PgLimits.open(wrong, timeout_s=2.0):
            pass  # pragma: no cover
    assert postgres.password not in str(info.value)
