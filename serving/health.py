"""An engine's readiness, as proven by real forward passes.

A process that answers is not an engine that computes: vLLM's own ``/health``
answers 200 while a GPU is wedged. Readiness here is set only by a probe (a
one-token generation) that finished in time. Probes that miss their deadline
with nothing generating mark the engine wedged after ``wedge_after_misses`` in
a row (a single miss, as when the host is starved of CPU for a moment, only
brings the next probe forward); a dead engine stays dead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Literal

__all__ = ["EngineState", "HealthState"]

_log = logging.getLogger("bastion.engine")

EngineState = Literal["starting", "ready", "wedged", "dead", "stopped"]


class HealthState:
    """The engine's state machine: starting -> ready <-> wedged; any -> dead/stopped (terminal)."""

    def __init__(self, name: str = "", *, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self._clock = clock
        self.state: EngineState = "starting"
        self.detail = "engine starting"
        self.last_ok_s: float | None = None
        self.last_probe_s: float | None = None

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def terminal(self) -> bool:
        return self.state in ("dead", "stopped")

    def probe_ok(self, elapsed_s: float) -> None:
        now = self._clock()
        self.last_probe_s = now
        if self.terminal:
            return
        if self.state == "wedged":
            _log.warning("engine %s recovered: probe ok in %.0f ms", self.name, elapsed_s * 1000)
        self.state = "ready"
        self.last_ok_s = now
        self.detail = f"probe ok in {elapsed_s * 1000:.0f} ms"

    def probe_slow(self, detail: str) -> None:
        """The probe missed its deadline while generations progressed: busy, not wedged."""
        self.last_probe_s = self._clock()
        if self.terminal:
            return
        _log.warning("engine %s: %s", self.name, detail)
        self.detail = detail

    def probe_missed(self, detail: str, retry_s: float) -> None:
        """A probe missed its deadline, not yet enough of them in a row to call the engine wedged."""
        self.last_probe_s = self._clock()
        if self.terminal:
            return
        _log.warning("engine %s: %s; probing again in %g s", self.name, detail, retry_s)
        self.detail = detail

    def wedged(self, detail: str) -> None:
        self.last_probe_s = self._clock()
        if self.terminal:
            return
        if self.state != "wedged":
            _log.error("engine %s wedged: %s; in-flight requests are ended with 503", self.name, detail)
        self.state = "wedged"
        self.detail = detail

    def dead(self, detail: str) -> None:
        if self.state == "stopped":
            return
        if self.state != "dead":
            _log.error("engine %s dead: %s", self.name, detail)
        self.state = "dead"
        self.detail = detail

    def stopped(self) -> None:
        self.state = "stopped"
        self.detail = "engine stopped"
