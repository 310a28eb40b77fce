"""bench's accuracy against ``bench mock`` on loopback, concurrency 1 to 256.

The mock logs when each request arrived, when each write was due and when it
actually left (same CLOCK_MONOTONIC as the client). That splits every measured
latency into the mock's part and the client's part:

- every token-bearing event, as the client timed it, must be within 1 ms (p50 and
  p99) of the instant the mock's write carrying it left: the client's own error;
- when the mock kept its deadlines, ITL (token-normalised) p50/p99 must also be
  within 1 ms of the injected ITL (constant injections, concurrency 1 and 16), and
  at concurrency 1 TTFT of the injected TTFT.

At 64 and 256 the latencies are drawn from distributions: with constants, a
closed-loop start makes every write of every stream fall due at the same instant,
a synchronized burst no server produces, which queues in the mock (some 30 us of
Python per write) and in any client. A level is tried up to five times, since a
scheduler tick on two shared cores can stall either side by a millisecond.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import msgspec
import numpy as np
import pytest

from bench.cli import run_async
from bench.config import decode_config
from bench.records import read_records
from bench.result import RunResult
from bench.runner import run_load

TTFT_MS, ITL_MS = 60.0, 30.0
TOLERANCE_MS = 1.0
EVENTS_PER_WRITE = 2
MOCK_LATE_LIMIT_NS = 300_000


class _Log(msgspec.Struct):
    n: int
    head: str
    t_arrival: int
    deadlines: list[int]
    sent: list[int]


def _log(log: Path) -> dict[int, _Log]:
    dec = msgspec.json.Decoder(_Log)
    return {int(ln.head): ln for ln in (dec.decode(x) for x in log.read_bytes().splitlines() if x)}


def _mock_late(lines: dict[int, _Log]) -> bool:
    return any(
        s - d > MOCK_LATE_LIMIT_NS
        for ln in lines.values()
        for s, d in zip(ln.sent, ln.deadlines, strict=True)
    )


async def _level(url: str, c: int, records: Path) -> RunResult:
    cfg = decode_config(
        {
            "url": url,
            "concurrency": c,
            "num_requests": max(c, 8),
            "workload": {"input_len": 8, "output_len": 6},
        }
    )
    return await run_load(cfg, records_path=records)


def _misses(
    res: RunResult, lines: dict[int, _Log], level: tuple[int, str, str], *, on_time: bool
) -> list[str]:
    """What of the accuracy claim one run misses (empty: within 1 ms everywhere).

    Always: every token-bearing event's arrival, as the client timed it, against the
    instant the mock's write carrying it left (the ground truth, from the mock's log).
    When the mock kept its deadlines, also the summary ITL (constant injections) and,
    at concurrency 1, TTFT against the injected values.
    """
    concurrency, _, itl_spec = level
    s = res.summary
    misses: list[str] = []
    recs = list(read_records(Path(res.records_path or "")))
    event_err = np.array(
        [
            (r.t_send + off - lines[r.index].sent[i // EVENTS_PER_WRITE]) / 1e6
            for r in recs
            for i, off in enumerate(r.event_ns)
        ]
    )
    p50, p99 = np.percentile(event_err, [50, 99])
    if p50 >= TOLERANCE_MS or p99 >= TOLERANCE_MS:
        misses.append(f"client error per event p50 {p50:.3f} ms, p99 {p99:.3f} ms")
    if not on_time:
        return misses
    if itl_spec == str(ITL_MS):
        itl = s.latency["itl_ms"]
        if abs(itl.p50 - ITL_MS) >= TOLERANCE_MS or abs(itl.p99 - ITL_MS) >= TOLERANCE_MS:
            misses.append(f"ITL {itl}")
    if concurrency == 1:
        # From the client's send; the mock's injected TTFT starts at its read of the request,
        # which under a burst of new connections (not at 1) comes later: that gap is real
        # latency, not a measuring error, and the ground truth above covers every level.
        ttft = s.latency["ttft_ms"]
        if abs(ttft.p50 - TTFT_MS) >= TOLERANCE_MS or abs(ttft.p99 - TTFT_MS) >= TOLERANCE_MS:
            misses.append(f"TTFT {ttft}")
    return misses


# Constant latencies at 1 and 16. At 64 and 256 a closed-loop start with constant latencies
# makes every write of every stream fall due at the same instants: a synchronized burst that
# no server produces and that queues in any client (and in the mock, ~30 us of Python per
# write on two shared cores); there the latencies are drawn from distributions, as real ones are.
LEVELS = [
    (1, str(TTFT_MS), str(ITL_MS)),
    (16, str(TTFT_MS), str(ITL_MS)),
    (64, f"normal:{TTFT_MS}:10", f"normal:{ITL_MS}:3"),
    (256, f"normal:{TTFT_MS}:10", f"normal:{ITL_MS}:3"),
]


@pytest.mark.parametrize("level", LEVELS, ids=[str(c) for c, _, _ in LEVELS])
async def test_ttft_and_itl_within_1ms(
    level: tuple[int, str, str], mock: Callable[..., AbstractContextManager[str]], tmp_path: Path
) -> None:
    """Within 1 ms of the truth. Two shared cores stall the mock and the client now and
    then (a 1 ms hiccup is one scheduler tick), so a level is tried up to five times and
    fails if no run is within 1 ms. A run whose mock missed its own deadlines is held to
    the ground truth in the mock's log only."""
    concurrency, ttft_spec, itl_spec = level
    misses: list[str] = []
    for attempt in range(5):
        log = tmp_path / f"mock-{attempt}.jsonl"
        with mock(
            "--ttft",
            ttft_spec,
            "--itl",
            itl_spec,
            "--tokens-per-event",
            "2",
            "--events-per-write",
            str(EVENTS_PER_WRITE),
            "--log",
            str(log),
        ) as url:
            # on its own uvloop, in a thread, as the CLI runs it (bench.cli.run_async)
            res = await asyncio.to_thread(
                run_async, _level(url, concurrency, tmp_path / f"records-{attempt}.jsonl")
            )
        lines = _log(log)
        # whatever the timing, nothing is lost or miscounted
        s = res.summary
        assert s.failed == 0 and s.succeeded == max(concurrency, 8)
        recs = list(read_records(Path(res.records_path or "")))
        assert all(r.completion_tokens == 6 and r.event_tokens == [2, 2, 2] for r in recs)
        assert s.output_tokens_total == 6 * len(recs)
        # never before the byte could have arrived
        assert min((r.t_first or 0) - lines[r.index].sent[0] for r in recs) >= 0
        misses = _misses(res, lines, level, on_time=not _mock_late(lines))
        if not misses:
            return
    pytest.fail(f"no run within {TOLERANCE_MS} ms in 5; the last missed: {misses}")
