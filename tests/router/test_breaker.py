from __future__ import annotations

import msgspec

from router.breaker import Breaker, BreakerState
from router.config import BreakerConfig
from tests.router.conftest import FakeClock


def _breaker(clock: FakeClock, **fields: object) -> Breaker:
    config = msgspec.json.decode(msgspec.json.encode(fields), type=BreakerConfig)
    return Breaker(config, clock=clock)


def test_opens_at_the_failure_ratio_once_enough_requests() -> None:
    clock = FakeClock()
    breaker = _breaker(clock, min_requests=4, failure_ratio=0.5, open_s=10)
    breaker.record_success()
    breaker.record_failure()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED  # 3 outcomes < min_requests
    breaker.record_failure()  # 2/4 = 0.5
    assert breaker.state is BreakerState.OPEN
    assert not breaker.acquire()
    assert breaker.retry_after_s() == 10


def test_half_open_probe_success_closes_failure_reopens() -> None:
    clock = FakeClock()
    breaker = _breaker(clock, min_requests=1, failure_ratio=1.0, open_s=5, half_open_probes=1)
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    clock.advance(5)
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.acquire()
    assert not breaker.acquire()  # only one probe at a time
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    clock.advance(5)
    assert breaker.acquire()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.acquire() and breaker.acquire()


def test_cancelled_probe_gives_its_slot_back() -> None:
    clock = FakeClock()
    breaker = _breaker(clock, min_requests=1, failure_ratio=1.0, open_s=5)
    breaker.record_failure()
    clock.advance(5)
    assert breaker.acquire()
    breaker.release()
    assert breaker.acquire()


def test_old_outcomes_leave_the_window() -> None:
    clock = FakeClock()
    breaker = _breaker(clock, window_s=10, min_requests=2, failure_ratio=0.5)
    breaker.record_failure()
    clock.advance(11)
    breaker.record_success()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    breaker.record_failure()  # 1 of 3 in window
    assert breaker.state is BreakerState.CLOSED
