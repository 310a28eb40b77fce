"""Where the router's tenant counters live: this node's memory (day and month budgets kept in
``data_dir/budgets.db``) or, for a fleet, the PostgreSQL database named by ``[state]``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

from router.ledger import BudgetLedger
from router.limits import Limiter, LimitState

from .config import ConfigError, PostgresConfig, StateConfig, resolve
from .periodic import every

__all__ = ["BUDGETS_DB", "open_limits", "persisted_budgets", "postgres_url"]

#: a single node's day and month counters, in ``data_dir``
BUDGETS_DB = "budgets.db"

_log = logging.getLogger("bastion.budgets")


@contextlib.asynccontextmanager
async def open_limits(state: StateConfig, *, config_dir: Path, data_dir: Path) -> AsyncIterator[LimitState]:
    """The counters ``[state]`` names, open for the node's lifetime."""
    if not state.shared:
        limiter = Limiter(clock=time.monotonic, wall_clock=time.time)
        async with persisted_budgets(limiter, data_dir / BUDGETS_DB):
            yield limiter
        return
    from router.pg_limits import PgLimits  # psycopg: only for a fleet

    url = postgres_url(state, config_dir=config_dir)
    async with PgLimits.open(url, timeout_s=state.timeout_s, max_connections=state.max_connections) as pg:
        yield pg


def postgres_url(db: PostgresConfig, *, config_dir: Path, section: str = "[state]") -> str:
    """The URL from the config, its environment variable or its file (never logged); ``section``
    names where ``db`` is configured in the errors."""
    if db.postgres_url is not None:
        return db.postgres_url
    if db.postgres_url_env is not None:
        url = os.environ.get(db.postgres_url_env, "").strip()
        if not url:
            raise ConfigError(
                f"{section} postgres_url_env: environment variable {db.postgres_url_env} is empty"
            )
        return url
    if db.postgres_url_file is None:
        raise ConfigError(f"{section} names no PostgreSQL database")
    path = resolve(config_dir, db.postgres_url_file)
    try:
        url = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{section} postgres_url_file: cannot read {path} ({exc.strerror})") from None
    if not url:
        raise ConfigError(f"{section} postgres_url_file: {path} is empty")
    return url


@contextlib.asynccontextmanager
async def persisted_budgets(limiter: Limiter, path: Path, *, interval_s: float = 1.0) -> AsyncIterator[None]:
    """Restore the counters, flush what changed every ``interval_s`` and once more on exit."""
    ledger = await asyncio.to_thread(BudgetLedger, path)
    try:
        limiter.restore(await asyncio.to_thread(ledger.load))

        async def flush() -> None:
            rows = limiter.take_changes()
            if not rows:
                return
            try:
                await asyncio.to_thread(ledger.save, rows)
            except Exception as exc:
                _log.error("could not save budget counters: %s", exc)
                limiter.mark_changed(row.tenant for row in rows)  # the next flush tries again

        async with every(interval_s, flush, name="bastion-budget-flush", final=True):
            yield
    finally:
        await asyncio.to_thread(ledger.close)
