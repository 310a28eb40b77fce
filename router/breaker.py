"""Circuit breaker: failure ratio over a sliding window, open, half-open probes.

One per external provider and one per local engine. Closed: outcomes are kept
for ``window_s``; once at least ``min_requests`` are in the window and the
failure share reaches ``failure_ratio``, it opens. Open: nothing passes for
``open_s``. Half-open: up to ``half_open_probes`` requests pass; a success
closes it (with a fresh window), a failure opens it again. The clock is
injected so tests drive time.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from enum import StrEnum

from router.config import BreakerConfig

__all__ = ["Breaker", "BreakerState"]


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class Breaker:
    def __init__(self, config: BreakerConfig, *, clock: Callable[[], float]) -> None:
        self._config = config
        self._clock = clock
        self._outcomes: deque[tuple[float, bool]] = deque()  # (time, failed)
        self._failures = 0
        self._opened_at: float | None = None
        self._probes = 0

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at < self._config.open_s:
            return BreakerState.OPEN
        return BreakerState.HALF_OPEN

    def retry_after_s(self) -> float:
        """Seconds until the breaker lets a probe through (0 when it would now)."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._config.open_s - (self._clock() - self._opened_at))

    def can_pass(self) -> bool:
        """Whether a request would pass now, without taking a probe slot."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        return state is BreakerState.HALF_OPEN and self._probes < self._config.half_open_probes

    def acquire(self) -> bool:
        """Take permission for one request (a probe slot when half-open)."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and self._probes < self._config.half_open_probes:
            self._probes += 1
            return True
        return False

    def record_success(self) -> None:
        if self._opened_at is not None:
            if self.state is BreakerState.HALF_OPEN:
                self._close()
            return
        self._add(failed=False)

    def record_failure(self) -> None:
        if self._opened_at is not None:
            if self.state is BreakerState.HALF_OPEN:
                self._open()
            return
        self._add(failed=True)
        if len(self._outcomes) >= self._config.min_requests and (
            self._failures / len(self._outcomes) >= self._config.failure_ratio
        ):
            self._open()

    def release(self) -> None:
        """Give back a permission that ended with neither success nor failure (client cancelled)."""
        if self._probes > 0 and self.state is BreakerState.HALF_OPEN:
            self._probes -= 1

    def _add(self, *, failed: bool) -> None:
        now = self._clock()
        horizon = now - self._config.window_s
        outcomes = self._outcomes
        while outcomes and outcomes[0][0] < horizon:
            if outcomes.popleft()[1]:
                self._failures -= 1
        outcomes.append((now, failed))
        if failed:
            self._failures += 1

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._probes = 0

    def _close(self) -> None:
        self._opened_at = None
        self._probes = 0
        self._outcomes.clear()
        self._failures = 0
