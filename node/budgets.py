"""Keeps the router's day and month budget counters on disk (``data_dir/budgets.db``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from router.ledger import BudgetLedger
from router.limits import Limiter

__all__ = ["persisted_budgets"]

_log = logging.getLogger("bastion.budgets")


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

        async def loop() -> None:
            while True:
                await asyncio.sleep(interval_s)
                await flush()

        task = asyncio.create_task(loop(), name="bastion-budget-flush")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await flush()
    finally:
        await asyncio.to_thread(ledger.close)
