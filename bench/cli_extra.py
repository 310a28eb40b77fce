"""Subcommands beyond run/mock: sweep, ceiling, compare, report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import msgspec

from bench.cli import config_from_args, run_async

__all__ = ["dispatch"]


def _sweep(a: argparse.Namespace) -> int:
    from bench.ceiling import cached_or_measure
    from bench.plots import plot_sweep
    from bench.sweep import sweep

    try:
        cfg = config_from_args(a)
    except (msgspec.ValidationError, ValueError) as exc:
        print(f"bench: invalid configuration: {exc}", file=sys.stderr)
        return 2
    if a.levels:
        levels = [float(x) for x in a.levels.split(",")]
    elif a.vary == "rate":
        levels = [1, 2, 4, 8, 16, 32, 64, 128]
    else:
        levels = [1, 2, 4, 8, 16, 32, 64, 128, 256]
    ceiling = None if a.no_ceiling else cached_or_measure()

    def show(level: float, res: object) -> None:
        from bench.result import RunResult

        assert isinstance(res, RunResult)
        print(
            f"{a.vary}={level:g}: {res.output_tokens_per_s:.1f} tok/s, "
            f"ttft_sched p50 {res.stat('ttft_sched_ms') or 0:.1f} ms, "
            f"attainment {res.summary.slo_attainment:.1%}",
            file=sys.stderr,
        )

    sr, results = run_async(
        sweep(cfg, levels, a.out, vary=a.vary, find_max=a.find_max, ceiling=ceiling, on_result=show)
    )
    (a.out / "sweep.json").write_bytes(msgspec.json.format(msgspec.json.encode(sr), indent=2))
    if not a.no_plots:
        plot_sweep([p.level for p in sr.points], results, a.vary, a.out)
    print(f"{'level':>8} {'tok/s':>10} {'req/s':>8} {'ttft_sched p99':>15} {'attain':>7}")
    for p in sr.points:
        print(
            f"{p.level:>8g} {p.output_tokens_per_s:>10.1f} {p.requests_per_s:>8.2f} "
            f"{(p.ttft_sched_p99_ms or 0):>15.2f} {p.slo_attainment:>7.1%}"
        )
    print(sr.stopped)
    if sr.max_meeting_slos is not None:
        print(f"highest {a.vary} meeting SLOs: {sr.max_meeting_slos:g}")
    return 0


def _ceiling(a: argparse.Namespace) -> int:
    from bench.ceiling import cache_path, cached_or_measure

    c = cached_or_measure(refresh=True, quick=a.quick)
    print(
        f"client ceiling: {c.max_requests_per_s:.0f} requests/s, {c.max_events_per_s:.0f} events/s "
        f"(cached in {cache_path()})"
    )
    return 0


def _compare(a: argparse.Namespace) -> int:
    from bench.compare import compare, format_comparison

    print(format_comparison(compare(a.a, a.b)))
    return 0


def _report(a: argparse.Namespace) -> int:
    from bench.metrics import summarize
    from bench.records import RecordReader

    slos = {k: float(v) for k, _, v in (s.partition("=") for s in a.slo)}
    s = summarize(RecordReader(Path(a.records)), None, slos)
    print(msgspec.json.format(msgspec.json.encode(s), indent=2).decode())
    return 0


def dispatch(a: argparse.Namespace) -> int:
    return {"sweep": _sweep, "ceiling": _ceiling, "compare": _compare, "report": _report}[a.cmd](a)
