from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from router.ledger import BudgetLedger
from router.limits import Limiter
from serving.errors import BudgetExceededError, RateLimitedError
from tests.router.conftest import FakeClock, policy

NOON = dt.datetime(2026, 3, 31, 12, 0, tzinfo=dt.UTC).timestamp()


def _limiter() -> tuple[Limiter, FakeClock, FakeClock]:
    clock, wall = FakeClock(), FakeClock(NOON)
    return Limiter(clock=clock, wall_clock=wall), clock, wall


async def test_rpm_trips_on_the_request_after_the_limit_and_says_when() -> None:
    limiter, clock, _ = _limiter()
    p = policy(rpm=3)
    for _ in range(3):
        await limiter.admit("t", p)
        clock.advance(1)
    with pytest.raises(RateLimitedError) as info:
        await limiter.admit("t", p)
    assert info.value.status_code == 429
    assert info.value.retry_after_s == pytest.approx(57)
    assert "3 requests per minute" in info.value.message
    await limiter.admit("other", p)  # per tenant
    clock.advance(57)
    await limiter.admit("t", p)


async def test_tpm_counts_recorded_tokens() -> None:
    limiter, clock, _ = _limiter()
    p = policy(tpm=100)
    for _ in range(3):
        await limiter.admit("t", p)
        limiter.record("t", tokens=40)  # 40, 80, 120
    with pytest.raises(RateLimitedError) as info:
        await limiter.admit("t", p)
    assert info.value.reason == "rate-limit-tpm"
    clock.advance(60)
    await limiter.admit("t", p)


async def test_tokens_per_day_resets_at_utc_midnight() -> None:
    limiter, _, wall = _limiter()
    p = policy(tokens_per_day=50)
    await limiter.admit("t", p)
    limiter.record("t", tokens=49)
    await limiter.admit("t", p)
    limiter.record("t", tokens=1)
    with pytest.raises(BudgetExceededError) as info:
        await limiter.admit("t", p)
    assert info.value.retry_after_s == pytest.approx(12 * 3600)
    wall.advance(12 * 3600)
    await limiter.admit("t", p)


async def test_monthly_spend_is_tracked_and_resets() -> None:
    limiter, _, wall = _limiter()
    p = policy(spend_per_month=1.0)
    limiter.record("t", tokens=10, spend=0.75)
    assert await limiter.spend_left("t", p) == pytest.approx(0.25)
    limiter.record("t", tokens=10, spend=0.25)
    assert await limiter.spend_left("t", p) == pytest.approx(0.0)
    assert limiter.until_next_month() == pytest.approx(12 * 3600)
    wall.advance(12 * 3600)  # April 1st
    assert await limiter.spend_left("t", p) == pytest.approx(1.0)


async def test_budgets_survive_a_restart_through_the_ledger(tmp_path: Path) -> None:
    ledger = BudgetLedger(tmp_path / "budgets.db")
    limiter, _, _ = _limiter()
    p = policy(tokens_per_day=50, spend_per_month=2.0)
    await limiter.admit("t", p)
    limiter.record("t", tokens=50, spend=1.5)
    limiter.record("u", tokens=7)
    ledger.save(limiter.take_changes())
    assert limiter.take_changes() == []  # only what changed since the last flush
    ledger.close()

    ledger = BudgetLedger(tmp_path / "budgets.db")  # a new process
    again, _, wall2 = _limiter()
    again.restore(ledger.load())
    with pytest.raises(BudgetExceededError):
        await again.admit("t", p)  # today's 50 tokens are still spent
    assert await again.spend_left("t", p) == pytest.approx(0.5)
    assert again.usage("u").day_tokens == 7
    wall2.advance(13 * 3600)  # 1 April: a new day and a new month
    await again.admit("t", p)
    assert await again.spend_left("t", p) == pytest.approx(2.0)
    again.record("t", tokens=1)
    ledger.save(again.take_changes())
    assert {(r.tenant, r.kind, r.period, r.value) for r in ledger.load()} == {
        ("t", "day_tokens", "2026-04-01", 1.0),
        ("t", "month_spend", "2026-04", 0.0),
        ("u", "day_tokens", "2026-03-31", 7.0),
        ("u", "month_spend", "2026-03", 0.0),
    }
    ledger.close()
