"""Tenant limits shared by a fleet of nodes: the counters live in PostgreSQL.

Each check is one statement, atomic on its row: the request counter of the
tenant's current minute is incremented only while it is below ``rpm`` (and the
minute's tokens below ``tpm``, today's below ``tokens_per_day``), by
``INSERT ... ON CONFLICT DO UPDATE ... WHERE ... RETURNING``. Two nodes can
therefore never both take the tenant's last slot. Windows are fixed: the minute
(UTC) a request arrives in, its day and its month, keyed by tenant and window
start. (The in-process ``Limiter`` uses a sliding minute; a fixed one can admit
up to twice ``rpm`` across a minute boundary, the usual price of one statement.)

Charges (tokens, spend) are queued by ``record``, which must not block a
finishing stream, and written by a background task within milliseconds; a
failed write is kept and retried.

Fail closed: when the server cannot be reached (or answers too slowly), a check
raises ``StateUnavailableError`` (503 ``state_unavailable``); it never admits.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, NamedTuple

import psycopg
from psycopg_pool import AsyncConnectionPool

from router.config import TenantPolicy
from router.limits import until_next_day, until_next_month
from serving.errors import BudgetExceededError, RateLimitedError, StateUnavailableError

__all__ = ["PgLimits"]

_log = logging.getLogger("bastion.limits")

# Forward-only, numbered; applied under one advisory lock, so nodes starting together agree.
_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE bastion_usage (
        tenant text NOT NULL,
        kind text NOT NULL CHECK (kind IN ('rpm', 'tpm', 'day_tokens', 'month_spend')),
        period text NOT NULL,
        value double precision NOT NULL,
        PRIMARY KEY (tenant, kind, period)
    )
    """,
)
_LOCK_ID = 0x0BA5_7105  # pg_advisory_xact_lock key for migrations

_ADMIT = """
WITH used AS (
    SELECT
        COALESCE((SELECT value FROM bastion_usage
                  WHERE tenant = %(tenant)s AND kind = 'tpm' AND period = %(minute)s), 0) AS tpm,
        COALESCE((SELECT value FROM bastion_usage
                  WHERE tenant = %(tenant)s AND kind = 'day_tokens' AND period = %(day)s), 0) AS day
), counted AS (
    INSERT INTO bastion_usage AS u (tenant, kind, period, value)
    SELECT %(tenant)s, 'rpm', %(minute)s, 1 FROM used
    WHERE used.tpm < %(tpm)s AND used.day < %(tokens_per_day)s
    ON CONFLICT (tenant, kind, period) DO UPDATE SET value = u.value + 1 WHERE u.value < %(rpm)s
    RETURNING u.value
)
SELECT used.tpm, used.day, (SELECT value FROM counted) FROM used
"""
_CHARGE = """
INSERT INTO bastion_usage AS u (tenant, kind, period, value) VALUES (%s, %s, %s, %s)
ON CONFLICT (tenant, kind, period) DO UPDATE SET value = u.value + excluded.value
"""
_SPENT = "SELECT value FROM bastion_usage WHERE tenant = %s AND kind = 'month_spend' AND period = %s"
# Minute windows older than the previous minute are never read again.
_PRUNE = "DELETE FROM bastion_usage WHERE kind IN ('rpm', 'tpm') AND period < %s"


#: one counter row: (tenant, kind, period)
_Counter = tuple[str, str, str]


class _Periods(NamedTuple):
    minute: str
    day: str
    month: str
    #: seconds left in the minute
    minute_left: float


def _periods(now_s: float) -> _Periods:
    now = dt.datetime.fromtimestamp(now_s, dt.UTC)
    return _Periods(
        minute=now.strftime("%Y-%m-%dT%H:%M"),
        day=now.strftime("%Y-%m-%d"),
        month=now.strftime("%Y-%m"),
        minute_left=max(0.001, 60.0 - (now_s % 60.0)),
    )


def _limit(value: float | None) -> float:
    return math.inf if value is None else float(value)


class PgLimits:
    """``LimitState`` in PostgreSQL; open with ``async with PgLimits.open(url) as limits``."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        *,
        wall_clock: Callable[[], float] = time.time,
        retry_s: float = 1.0,
    ) -> None:
        self._pool = pool
        self._wall = wall_clock
        self._retry_s = retry_s
        #: charges not yet written, summed per counter row: an outage grows it by tenants x minutes,
        #: not by requests
        self._pending: dict[_Counter, float] = {}
        self._wake = asyncio.Event()
        self._writing = asyncio.Lock()
        self._last_prune = ""

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        url: str,
        *,
        timeout_s: float = 2.0,
        max_connections: int = 10,
        wall_clock: Callable[[], float] = time.time,
    ) -> AsyncIterator[PgLimits]:
        """Connect, migrate, start the charge writer; flush what is queued on exit.

        Raises ``StateUnavailableError`` when the server cannot be reached at start.
        """
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=max_connections,
            timeout=timeout_s,
            open=False,
            check=AsyncConnectionPool.check_connection,
            kwargs={"autocommit": True, "connect_timeout": max(1, math.ceil(timeout_s))},
            name="bastion-limits",
        )
        try:
            await pool.open(wait=True, timeout=timeout_s)
        except Exception as exc:
            await pool.close()
            raise StateUnavailableError(
                f"cannot reach the fleet state store (PostgreSQL): {type(exc).__name__}"
            ) from None
        try:
            limits = cls(pool, wall_clock=wall_clock)
            await limits._migrate()
            writer = asyncio.create_task(limits._write_loop(), name="bastion-limits-writer")
            try:
                yield limits
            finally:
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await writer
                await limits.flush()
                if limits._pending:
                    _log.error("could not save %d counters to PostgreSQL at shutdown", len(limits._pending))
        finally:
            await pool.close()

    async def _migrate(self) -> None:
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
            await conn.execute("CREATE TABLE IF NOT EXISTS bastion_schema (version integer NOT NULL)")
            row = await (await conn.execute("SELECT max(version) FROM bastion_schema")).fetchone()
            version = int(row[0]) if row is not None and row[0] is not None else 0
            for number, sql in enumerate(_MIGRATIONS[version:], start=version + 1):
                await conn.execute(sql)
                await conn.execute("INSERT INTO bastion_schema (version) VALUES (%s)", (number,))

    # -- LimitState -------------------------------------------------------------------------------

    async def admit(self, tenant: str, policy: TenantPolicy) -> None:
        if policy.rpm is None and policy.tpm is None and policy.tokens_per_day is None:
            return  # nothing to count against
        now = self._wall()
        p = _periods(now)
        params = {
            "tenant": tenant,
            "minute": p.minute,
            "day": p.day,
            "rpm": _limit(policy.rpm),
            "tpm": _limit(policy.tpm),
            "tokens_per_day": _limit(policy.tokens_per_day),
        }
        row = await self._fetch(_ADMIT, params)
        if row is None:  # pragma: no cover - the statement always returns one row
            raise StateUnavailableError("the fleet state store gave no answer")
        tpm_used, day_used, counted = row
        if counted is not None:
            return
        if policy.tokens_per_day is not None and day_used >= policy.tokens_per_day:
            raise BudgetExceededError(
                f"tenant {tenant!r} used its {policy.tokens_per_day} tokens for today",
                retry_after_s=until_next_day(now),
                reason="budget-tokens-per-day",
            )
        if policy.tpm is not None and tpm_used >= policy.tpm:
            raise RateLimitedError(
                f"tenant {tenant!r} is over its limit of {policy.tpm} tokens per minute",
                retry_after_s=p.minute_left,
                reason="rate-limit-tpm",
            )
        raise RateLimitedError(
            f"tenant {tenant!r} is over its limit of {policy.rpm} requests per minute",
            retry_after_s=p.minute_left,
            reason="rate-limit-rpm",
        )

    async def spend_left(self, tenant: str, policy: TenantPolicy) -> float | None:
        if policy.spend_per_month is None:
            return None
        row = await self._fetch(_SPENT, (tenant, _periods(self._wall()).month))
        spent = float(row[0]) if row is not None else 0.0
        return policy.spend_per_month - spent

    def record(self, tenant: str, *, tokens: int, spend: float = 0.0) -> None:
        if tokens <= 0 and spend <= 0:
            return
        p = _periods(self._wall())
        if tokens > 0:
            self._add({(tenant, "tpm", p.minute): tokens, (tenant, "day_tokens", p.day): tokens})
        if spend > 0:
            self._add({(tenant, "month_spend", p.month): spend})
        self._wake.set()

    def _add(self, charges: dict[_Counter, float]) -> None:
        for counter, value in charges.items():
            self._pending[counter] = self._pending.get(counter, 0.0) + value

    def until_next_month(self) -> float:
        return until_next_month(self._wall())

    # -- the charge writer ------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Counter rows with charges not yet written."""
        return len(self._pending)

    async def flush(self) -> None:
        """Write every charge queued so far (one transaction); on failure they stay queued."""
        async with self._writing:  # a write in flight finishes first
            await self._write()

    async def _write(self) -> None:
        batch, self._pending = self._pending, {}
        if not batch:
            return
        rows = [(tenant, kind, period, value) for (tenant, kind, period), value in batch.items()]
        try:
            async with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                await cur.executemany(_CHARGE, rows)
                minute = _periods(self._wall()).minute
                if minute != self._last_prune:  # once a minute is plenty
                    await cur.execute(_PRUNE, (_periods(self._wall() - 120).minute,))
                    self._last_prune = minute
        except Exception:
            self._add(batch)
            raise

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
            except Exception as exc:
                _log.error("could not save %d counters to PostgreSQL: %s", len(self._pending), exc)
                await asyncio.sleep(self._retry_s)
                self._wake.set()

    async def _fetch(self, sql: str, params: Any) -> tuple[Any, ...] | None:
        try:
            async with self._pool.connection() as conn:
                cur = await conn.execute(sql, params)
                row: tuple[Any, ...] | None = await cur.fetchone()
                return row
        except (psycopg.Error, OSError) as exc:  # PoolTimeout is a psycopg.OperationalError
            _log.error("fleet state store unavailable: %s", exc)
            raise StateUnavailableError(
                "the fleet state store (PostgreSQL) is unavailable, so this tenant's limits cannot be "
                "checked; the request was refused and not forwarded",
                retry_after_s=1.0,
                reason="state-unavailable",
            ) from None
