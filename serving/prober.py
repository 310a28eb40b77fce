"""The probe state machine: when to run a one-token forward pass, and what its result means.

``Prober`` owns an engine's ``HealthState`` and decides it from probes: a probe
that finishes in time makes the engine ready; one that misses its deadline while
generations progressed meanwhile is slow, not wedged; ``wedge_after_misses``
misses in a row with nothing generating mark it wedged (one miss only brings the
next probe forward); a probe that fails marks it wedged, or dead when the engine
process died. In the background it probes every ``interval_s``, or every
``retry_interval_s`` after a miss or while wedged.

It knows nothing of vLLM: the engine hands it the forward pass (an async
callable that returns once the pass finished, or raises), a test of whether the
engine process died, and what to do when the engine stops being ready (end the
requests in flight). The clock is injectable so a test can run the state machine
with a plain coroutine as the forward pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from serving.health import HealthState

__all__ = ["ProbeSettings", "Prober"]


@dataclass(frozen=True, kw_only=True)
class ProbeSettings:
    """How often and how patiently an engine is probed."""

    #: between probes while the engine is ready
    interval_s: float = 15.0
    #: a probe's deadline
    timeout_s: float = 10.0
    #: the first probe's deadline: the first forward pass may warm up or compile
    start_timeout_s: float = 120.0
    #: between probes after a miss or while wedged: a wedge is confirmed, or a wedged engine
    #: serves again, within seconds rather than a whole interval
    retry_interval_s: float = 2.0
    #: missed probes in a row (nothing generating) that mark the engine wedged
    wedge_after_misses: int = 2

    def normalised(self) -> ProbeSettings:
        """The settings with their bounds applied (retry no slower than the interval, and so on)."""
        return ProbeSettings(
            interval_s=self.interval_s,
            timeout_s=self.timeout_s,
            start_timeout_s=max(self.start_timeout_s, self.timeout_s),
            retry_interval_s=min(self.retry_interval_s, self.interval_s),
            wedge_after_misses=max(1, self.wedge_after_misses),
        )


class Prober:
    """Runs an engine's probes and keeps its ``HealthState``. Start the loop with ``start()``."""

    def __init__(
        self,
        name: str,
        settings: ProbeSettings,
        *,
        forward: Callable[[], Awaitable[None]],
        errored: Callable[[], bool],
        on_unready: Callable[[], Awaitable[None]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.settings = settings.normalised()
        self.health = HealthState(name, clock=clock)
        self._forward = forward
        self._errored = errored
        self._on_unready = on_unready
        self._clock = clock
        self._missed = 0
        #: clock time of the last output any generation received (progress, for the probe)
        self._last_output_s = float("-inf")
        #: probes running now (the engine leaves them out of its request counts)
        self.inflight = 0
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def note_output(self) -> None:
        """A generation received output: the engine is computing."""
        self._last_output_s = self._clock()

    def check_alive(self) -> None:
        """Mark the engine dead if its process died (no forward pass)."""
        if not self.health.terminal and self._errored():
            self.health.dead("engine process died")

    async def first_probe(self) -> None:
        """The start-up probe, with its longer deadline."""
        async with self._lock:
            await self._probe_once(self.settings.start_timeout_s)

    async def probe(self) -> None:
        """Probe now (waits for a probe already running)."""
        async with self._lock:
            await self._probe_once(self.settings.timeout_s)

    def start(self) -> None:
        """Probe in the background until the engine is dead or stopped, or ``aclose()``."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=f"probe:{self.name}")

    async def aclose(self) -> None:
        """Stop the background probes (the state is left as it is)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _probe_once(self, timeout_s: float) -> None:
        self.check_alive()
        if self.health.terminal:
            return
        t0 = self._clock()
        self.inflight += 1
        try:
            async with asyncio.timeout(timeout_s):
                await self._forward()
        except TimeoutError:
            self._timed_out(t0, timeout_s)
        except Exception as exc:
            self.check_alive()
            self.health.wedged(f"probe failed: {type(exc).__name__}: {exc}")
        else:
            self._missed = 0
            self.health.probe_ok(self._clock() - t0)
        finally:
            self.inflight -= 1
        if not self.health.ready:
            if self.health.state == "wedged":
                self._wake.set()
            await self._on_unready()

    def _timed_out(self, t0: float, timeout_s: float) -> None:
        if self._last_output_s >= t0:
            # Queued behind a busy batch, but the engine computed while the probe waited:
            # not wedged. (A stall that begins during this window is caught by the next probe.)
            self._missed = 0
            self.health.probe_slow(
                f"probe took over {timeout_s:g} s, but generations were progressing meanwhile"
            )
            return
        self._missed += 1
        detail = f"probe did not finish within {timeout_s:g} s, no generation progressing"
        if self._missed >= self.settings.wedge_after_misses:
            self.health.wedged(f"{detail} ({self._missed} probes in a row)")
        else:
            self.health.probe_missed(detail, self.settings.retry_interval_s)
            self._wake.set()

    async def _loop(self) -> None:
        s = self.settings
        while not self.health.terminal:
            soon = self._missed > 0 or self.health.state == "wedged"
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), s.retry_interval_s if soon else s.interval_s)
                continue  # an on-demand probe missed or found the engine wedged: probe again soon
            except TimeoutError:
                pass
            await self.probe()
