"""Load sweeps: step the load until saturation, or bisect for the highest load meeting SLOs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec

from bench.config import LoadConfig
from bench.result import ClientCeiling, RunResult
from bench.runner import run_load

__all__ = ["SweepPoint", "SweepResult", "is_saturated", "meets_slos", "sweep"]


class SweepPoint(msgspec.Struct, kw_only=True):
    level: float
    output_tokens_per_s: float
    requests_per_s: float
    achieved_rate: float | None
    ttft_sched_p50_ms: float | None
    ttft_sched_p99_ms: float | None
    e2e_sched_p99_ms: float | None
    slo_attainment: float
    failed: int
    result_path: str


class SweepResult(msgspec.Struct, kw_only=True):
    vary: str
    points: list[SweepPoint]
    stopped: str
    max_meeting_slos: float | None = None


def meets_slos(res: RunResult, attainment: float) -> bool:
    return res.summary.requests_in_window > 0 and res.summary.slo_attainment >= attainment


def is_saturated(prev: RunResult | None, cur: RunResult, vary: str) -> str | None:
    """Why the server is saturated at ``cur``, or None.

    Open loop: it completes fewer than 95% of the offered requests/s, or queueing
    (TTFT from schedule) more than doubles while throughput grows under 5%.
    """
    s = cur.summary
    if s.requests_in_window and s.failed / s.requests_in_window > 0.05:
        return "more than 5% of requests failed"
    if vary == "rate" and cur.target_rate and s.requests_per_s < 0.95 * cur.target_rate:
        return f"completed {s.requests_per_s:.2f} req/s of {cur.target_rate:.2f} offered"
    if prev is not None:
        gain = cur.output_tokens_per_s / prev.output_tokens_per_s if prev.output_tokens_per_s else 2.0
        t0, t1 = prev.stat("ttft_sched_ms", "p50"), cur.stat("ttft_sched_ms", "p50")
        if gain < 1.05 and t0 and t1 and t1 > 2 * t0:
            return f"throughput +{(gain - 1):.1%} while TTFT p50 went {t0:.1f} -> {t1:.1f} ms"
    return None


def _at(cfg: LoadConfig, vary: str, level: float) -> LoadConfig:
    if vary == "rate":
        return msgspec.structs.replace(cfg, rate=level)
    return msgspec.structs.replace(cfg, concurrency=max(1, round(level)), rate=None)


async def sweep(
    cfg: LoadConfig,
    levels: list[float],
    out_dir: Path,
    *,
    vary: str = "rate",
    find_max: bool = False,
    attainment: float = 0.99,
    bisect_steps: int = 3,
    ceiling: ClientCeiling | None = None,
    on_result: Callable[[float, RunResult], Awaitable[None] | None] | None = None,
) -> tuple[SweepResult, list[RunResult]]:
    """Run ``levels`` in order, stopping at saturation; with ``find_max``, bisect between
    the highest level meeting the SLOs and the first one missing them."""
    out_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before any load
    results: list[tuple[float, RunResult]] = []
    stopped = "all levels run"

    async def one(level: float) -> RunResult:
        d = out_dir / f"{vary}-{level:g}"
        d.mkdir(exist_ok=True)
        res = await run_load(_at(cfg, vary, level), ceiling=ceiling, records_path=d / "records.jsonl")
        (d / "result.json").write_bytes(res.to_json())
        results.append((level, res))
        if on_result is not None:
            maybe = on_result(level, res)
            if maybe is not None:
                await maybe
        return res

    prev: RunResult | None = None
    best: float | None = None
    fail: float | None = None
    for level in levels:
        res = await one(level)
        if find_max:
            if meets_slos(res, attainment):
                best = level
            else:
                fail = level
                stopped = f"SLOs missed at {vary}={level:g}"
                break
        why = is_saturated(prev, res, vary)
        if why:
            stopped = f"saturated at {vary}={level:g}: {why}"
            if not find_max:
                break
            fail = level if fail is None else fail
            break
        prev = res
    if find_max and best is not None and fail is not None:
        lo, hi = best, fail
        for _ in range(bisect_steps):
            mid = (lo + hi) / 2 if vary == "rate" else float(round((lo + hi) / 2))
            if mid in (lo, hi):
                break
            if meets_slos(await one(mid), attainment):
                lo = mid
            else:
                hi = mid
        best = lo
    results.sort(key=lambda x: x[0])
    points = [
        SweepPoint(
            level=lv,
            output_tokens_per_s=r.output_tokens_per_s,
            requests_per_s=r.requests_per_s,
            achieved_rate=r.summary.achieved_rate,
            ttft_sched_p50_ms=r.stat("ttft_sched_ms", "p50"),
            ttft_sched_p99_ms=r.stat("ttft_sched_ms", "p99"),
            e2e_sched_p99_ms=r.stat("e2e_sched_ms", "p99"),
            slo_attainment=r.summary.slo_attainment,
            failed=r.summary.failed,
            result_path=str(out_dir / f"{vary}-{lv:g}" / "result.json"),
        )
        for lv, r in results
    ]
    return SweepResult(
        vary=vary, points=points, stopped=stopped, max_meeting_slos=best if find_max else None
    ), [r for _, r in results]
