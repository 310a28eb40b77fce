"""Deadline timers with microsecond precision and no busy-waiting.

asyncio and libuv round timer waits to whole milliseconds (``epoll_wait`` takes
ms), so a send meant for ``t`` leaves up to ~1 ms late, and jitter of that size is
exactly what ``bench`` must not add. Spinning until the deadline fixes it on an idle
machine but steals the CPU the other side needs on a busy one. A Linux ``timerfd``
armed with an absolute ``CLOCK_MONOTONIC`` deadline (the clock behind
``time.monotonic_ns``) wakes the event loop through ``epoll`` at the right time
(the approach of aiperf PR #1185). Elsewhere it falls back to ``loop.call_at``.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import heapq
import itertools
import os
import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["DeadlineTimer"]

_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = 0o4000
_TFD_CLOEXEC = 0o2000000
_TFD_TIMER_ABSTIME = 1
_PR_SET_TIMERSLACK = 29


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _libc() -> Any | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        lib.timerfd_create  # noqa: B018 - probe for the symbol
    except (OSError, AttributeError):
        return None
    return lib


class DeadlineTimer:
    """Runs callbacks at absolute ``time.monotonic_ns()`` deadlines on the running loop.

    Callbacks run directly from the timer's readiness callback, in deadline order
    (ties in insertion order), so a batch due together goes out back to back.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._heap: list[tuple[int, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self._armed = 0
        self._lib = _libc()
        self._fd = -1
        self._handle: asyncio.TimerHandle | None = None
        if self._lib is not None:
            fd = self._lib.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
            if fd >= 0:
                self._fd = fd
                self._loop.add_reader(fd, self._on_fd)
                # Linux delays timer wake-ups by up to 50 us of "slack" to batch them; a
                # latency benchmark wants them on time (process-wide, harmless elsewhere).
                self._lib.prctl(_PR_SET_TIMERSLACK, 1, 0, 0, 0)

    @property
    def precise(self) -> bool:
        return self._fd >= 0

    def call_at_ns(self, deadline: int, cb: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self._heap, (deadline, next(self._seq), cb, args))
        if self._armed == 0 or deadline < self._armed:
            self._arm(deadline)

    async def sleep_until(self, deadline: int) -> None:
        if deadline <= time.monotonic_ns():
            return
        fut: asyncio.Future[None] = self._loop.create_future()
        self.call_at_ns(deadline, _resolve, fut)
        await fut

    def _arm(self, deadline: int) -> None:
        self._armed = deadline
        if self._fd >= 0:
            spec = _Itimerspec()
            d = max(1, deadline)
            spec.it_value.tv_sec, spec.it_value.tv_nsec = divmod(d, 1_000_000_000)
            assert self._lib is not None
            self._lib.timerfd_settime(self._fd, _TFD_TIMER_ABSTIME, ctypes.byref(spec), None)
        else:
            if self._handle is not None:
                self._handle.cancel()
            delay = max(0.0, (deadline - time.monotonic_ns()) / 1e9)
            self._handle = self._loop.call_later(delay, self._on_fd)

    def _on_fd(self) -> None:
        if self._fd >= 0:
            try:
                os.read(self._fd, 8)
            except BlockingIOError:
                pass
        self._armed = 0
        heap = self._heap
        now = time.monotonic_ns()
        while heap and heap[0][0] <= now:
            _, _, cb, args = heapq.heappop(heap)
            cb(*args)
            if heap and heap[0][0] > now:
                now = time.monotonic_ns()
        if heap:
            self._arm(heap[0][0])

    def close(self) -> None:
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1
        if self._handle is not None:
            self._handle.cancel()
        self._heap.clear()


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
