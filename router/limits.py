"""Per-tenant rate limits and budgets, enforced before routing.

- ``rpm``: requests admitted in the last 60 s (sliding log).
- ``tpm``: tokens (prompt + completion) recorded in the last 60 s.
- ``tokens_per_day``: tokens recorded since 00:00 UTC.
- ``spend_per_month``: external spend since the 1st, 00:00 UTC, computed from
  the providers' usage fields and the configured prices. It only removes
  external candidates: an exhausted spend budget still lets local requests run.

A token or spend limit refuses a request once what has been *consumed* reaches
it; the request that crosses the line completes, as its size is unknown until
it ends. Every stream is charged when it ends, finished or not.

``LimitState`` is what the router needs from the counters. ``Limiter`` counts in
this process (sliding windows; ``restore`` and ``take_changes`` let the node keep
the day and month counters in a ``router.ledger.BudgetLedger`` across restarts);
``router.pg_limits.PgLimits`` counts for a fleet of nodes in PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from collections.abc import Callable, Iterable
from typing import Protocol

from router.config import TenantPolicy
from router.ledger import LedgerRow
from serving.errors import BudgetExceededError, RateLimitedError

__all__ = ["LimitState", "Limiter", "TenantUsage", "until_next_day", "until_next_month"]

_MINUTE = 60.0


class LimitState(Protocol):
    """A tenant's rate windows and budgets, wherever they are kept.

    ``admit`` checks and counts one request atomically (no two nodes can both take
    the last slot) or raises ``RateLimitedError``/``BudgetExceededError``; a store
    that cannot answer raises ``StateUnavailableError``: a limit never fails open.
    ``record`` is called when a stream settles and must not block: a remote store
    queues the charge and writes it in the background.
    """

    async def admit(self, tenant: str, policy: TenantPolicy) -> None: ...

    async def spend_left(self, tenant: str, policy: TenantPolicy) -> float | None: ...

    def record(self, tenant: str, *, tokens: int, spend: float = 0.0) -> None: ...

    def until_next_month(self) -> float: ...


def until_next_day(now_s: float) -> float:
    now = dt.datetime.fromtimestamp(now_s, dt.UTC)
    tomorrow = dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    return (tomorrow - now).total_seconds()


def until_next_month(now_s: float) -> float:
    now = dt.datetime.fromtimestamp(now_s, dt.UTC)
    first = dt.datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=dt.UTC)
    return (first - now).total_seconds()


class TenantUsage:
    """One tenant's counters."""

    __slots__ = ("day", "day_tokens", "month", "month_spend", "requests", "tokens")

    def __init__(self) -> None:
        self.requests: deque[float] = deque()
        self.tokens: deque[tuple[float, int]] = deque()
        self.day = ""
        self.day_tokens = 0
        self.month = ""
        self.month_spend = 0.0


class Limiter:
    """``LimitState`` in this process's memory: right for a single node."""

    def __init__(self, *, clock: Callable[[], float], wall_clock: Callable[[], float]) -> None:
        self._clock = clock
        self._wall = wall_clock
        self._tenants: dict[str, TenantUsage] = {}
        self._changed: set[str] = set()

    def usage(self, tenant: str) -> TenantUsage:
        usage = self._tenants.get(tenant)
        if usage is None:
            usage = self._tenants[tenant] = TenantUsage()
        now = dt.datetime.fromtimestamp(self._wall(), dt.UTC)
        day, month = now.strftime("%Y-%m-%d"), now.strftime("%Y-%m")
        if usage.day != day:
            usage.day, usage.day_tokens = day, 0
        if usage.month != month:
            usage.month, usage.month_spend = month, 0.0
        return usage

    async def admit(self, tenant: str, policy: TenantPolicy) -> None:
        """Count one request against ``rpm``, or raise 429 with ``Retry-After``."""
        usage = self.usage(tenant)
        now = self._clock()
        horizon = now - _MINUTE
        while usage.requests and usage.requests[0] <= horizon:
            usage.requests.popleft()
        while usage.tokens and usage.tokens[0][0] <= horizon:
            usage.tokens.popleft()
        if policy.tokens_per_day is not None and usage.day_tokens >= policy.tokens_per_day:
            raise BudgetExceededError(
                f"tenant {tenant!r} used its {policy.tokens_per_day} tokens for today",
                retry_after_s=until_next_day(self._wall()),
                reason="budget-tokens-per-day",
            )
        if policy.rpm is not None and len(usage.requests) >= policy.rpm:
            raise RateLimitedError(
                f"tenant {tenant!r} is over its limit of {policy.rpm} requests per minute",
                retry_after_s=max(0.001, usage.requests[0] + _MINUTE - now),
                reason="rate-limit-rpm",
            )
        if policy.tpm is not None:
            total = sum(n for _, n in usage.tokens)
            if total >= policy.tpm:
                raise RateLimitedError(
                    f"tenant {tenant!r} is over its limit of {policy.tpm} tokens per minute",
                    retry_after_s=self._tpm_retry_after(usage, total, policy.tpm, now),
                    reason="rate-limit-tpm",
                )
        usage.requests.append(now)

    async def spend_left(self, tenant: str, policy: TenantPolicy) -> float | None:
        """Currency left this month for external calls (``None``: unlimited)."""
        if policy.spend_per_month is None:
            return None
        return policy.spend_per_month - self.usage(tenant).month_spend

    def until_next_month(self) -> float:
        return until_next_month(self._wall())

    def record(self, tenant: str, *, tokens: int, spend: float = 0.0) -> None:
        """Charge tokens (and external spend) once a stream ended, whatever its outcome."""
        usage = self.usage(tenant)
        if tokens > 0:
            usage.tokens.append((self._clock(), tokens))
            usage.day_tokens += tokens
        usage.month_spend += spend
        self._changed.add(tenant)

    def restore(self, rows: list[LedgerRow]) -> None:
        """Counters saved by an earlier process; a past day or month simply resets on use."""
        for row in rows:
            usage = self._tenants.get(row.tenant)
            if usage is None:
                usage = self._tenants[row.tenant] = TenantUsage()
            if row.kind == "day_tokens":
                usage.day, usage.day_tokens = row.period, int(row.value)
            else:
                usage.month, usage.month_spend = row.period, row.value

    def mark_changed(self, tenants: Iterable[str]) -> None:
        """Have ``take_changes`` report these tenants again (their save failed)."""
        self._changed.update(tenants)

    def take_changes(self) -> list[LedgerRow]:
        """The day and month counters of every tenant charged since the last call."""
        rows: list[LedgerRow] = []
        for tenant in self._changed:
            usage = self._tenants[tenant]
            rows.append(LedgerRow(tenant, "day_tokens", usage.day, float(usage.day_tokens)))
            rows.append(LedgerRow(tenant, "month_spend", usage.month, usage.month_spend))
        self._changed.clear()
        return rows

    @staticmethod
    def _tpm_retry_after(usage: TenantUsage, total: int, tpm: int, now: float) -> float:
        for when, n in usage.tokens:
            total -= n
            if total < tpm:
                return max(0.001, when + _MINUTE - now)
        return _MINUTE
