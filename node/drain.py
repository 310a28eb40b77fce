"""Graceful drain: what the node does between SIGTERM and stopping.

``begin`` (the first SIGTERM or SIGINT) turns the node to draining at once:
``/readyz`` answers 503 ``{"status": "draining"}``, a new request gets 503
``draining`` with ``Retry-After`` (recorded as ``request.rejected`` like any
refusal), ``/healthz`` stays 200. Generations in flight continue; ``wait``
returns once the last has ended or ``[server] drain_timeout_s`` has passed,
and then ``cut`` ends the rest: a stream with an error event (no ``[DONE]``),
a non-streamed request with a 503, each recorded. A second signal cuts them at
once. Only then does the server stop accepting, the engines stop and the
audit log flush.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

from serving.errors import DrainingError

__all__ = ["Drain"]

#: what a client refused while the node drains should wait before retrying (another node, or this one
#: once it is back)
RETRY_AFTER_S = 5.0


class Drain:
    """The node's draining state and the generations in flight that a drain waits for."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.draining_since: float | None = None
        self._in_flight: set[asyncio.Task[object]] = set()
        self._cut: set[asyncio.Task[object]] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def draining(self) -> bool:
        return self.draining_since is not None

    def begin(self) -> None:
        if self.draining_since is None:
            self.draining_since = time.monotonic()

    def refuse_if_draining(self) -> None:
        if self.draining:
            raise DrainingError(
                "This node is shutting down and takes no new requests; retry on another node.",
                retry_after_s=RETRY_AFTER_S,
            )

    @contextlib.contextmanager
    def in_flight(self) -> Iterator[None]:
        """Around a generation's run (in the task that runs it): the drain waits for it, then cuts it."""
        task = asyncio.current_task()
        if task is None:
            yield
            return
        self._in_flight.add(task)
        self._idle.clear()
        try:
            yield
        finally:
            self._in_flight.discard(task)
            if not self._in_flight:
                self._idle.set()

    def was_cut(self) -> bool:
        """In a generation's task that caught ``CancelledError``: whether the drain cut it (and, if so,
        the cancellation is consumed: the generation ends with ``DrainingError`` instead)."""
        task = asyncio.current_task()
        if task is None or task not in self._cut:
            return False
        self._cut.discard(task)
        task.uncancel()
        return True

    def cut_error(self) -> DrainingError:
        return DrainingError(
            f"This node is shutting down and its drain timeout ({self.timeout_s:g} s) passed before "
            "the generation finished.",
            retry_after_s=RETRY_AFTER_S,
        )

    async def wait(self) -> None:
        """Until no generation is in flight, or the drain timeout has passed since ``begin``."""
        started = self.draining_since if self.draining_since is not None else time.monotonic()
        left = self.timeout_s - (time.monotonic() - started)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout=max(0.0, left))

    def cut(self) -> int:
        """End every generation still in flight (each records itself and answers an error); how many."""
        for task in self._in_flight - self._cut:
            self._cut.add(task)
            task.cancel()
        return len(self._in_flight)
