"""A job the node runs on an interval while it serves (budget flushes, key uses, retention)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

__all__ = ["every"]


@contextlib.asynccontextmanager
async def every(
    interval_s: float, job: Callable[[], Awaitable[None]], *, name: str, final: bool = False
) -> AsyncIterator[None]:
    """Run ``job`` every ``interval_s`` seconds in a task of its own while the block runs, and
    with ``final`` once more after it. ``job`` handles its own errors: one that escapes ends
    the schedule."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(interval_s)
            await job()

    task = asyncio.create_task(loop(), name=name)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if final:
            await job()
