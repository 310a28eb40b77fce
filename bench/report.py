"""Console table, CSV and the output directory layout of a run."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from bench.metrics import FORMULAS
from bench.result import RunResult

__all__ = ["format_table", "summary_rows", "write_csv", "write_outputs"]

_STATS = ("n", "mean", "std", "min", "p50", "p90", "p95", "p99", "p999", "max")
_ORDER = (
    "ttft_ms",
    "ttft_sched_ms",
    "e2e_ms",
    "e2e_sched_ms",
    "tpot_ms",
    "itl_ms",
    "icl_ms",
    "itl_max_ms",
    "queue_ms",
    "dispatch_lag_ms",
)


def summary_rows(res: RunResult) -> list[list[str]]:
    rows = []
    for name in _ORDER:
        s = res.summary.latency.get(name)
        if s is None:
            continue
        rows.append([name] + [str(s.n)] + [f"{s.get(k):.3f}" for k in _STATS[1:]])
    return rows


def format_table(res: RunResult) -> str:
    s = res.summary
    out = io.StringIO()
    cfg = res.config
    mode = f"open loop {cfg.rate}/s {cfg.arrival}" if cfg.rate else f"closed loop x{cfg.concurrency}"
    if cfg.rate and cfg.concurrency:
        mode += f" cap {cfg.concurrency}"
    out.write(f"bench {res.meta.versions.get('bench')}  {cfg.url}  {mode}  seed {cfg.seed}\n")
    header = ["metric (ms)", *_STATS]
    rows = summary_rows(res)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(
        h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(header, widths, strict=True))
    )
    out.write(line + "\n" + "-" * len(line) + "\n")
    for r in rows:
        out.write(
            "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        )
        out.write("\n")
    out.write("\n")
    ach = f"{s.achieved_rate:.2f}/s" if s.achieved_rate else "-"
    pairs = [
        ("window", f"{s.window_s:.2f} s"),
        (
            "requests",
            f"{s.requests_in_window} in window ({s.requests_total} total), "
            f"{s.succeeded} ok, {s.failed} failed",
        ),
        ("achieved send rate", ach + (f" (target {res.target_rate:.2f}/s)" if res.target_rate else "")),
        ("output tokens/s", f"{s.output_tokens_per_s:.1f}"),
        ("requests/s", f"{s.requests_per_s:.2f}"),
        ("concurrency (time-weighted)", f"{s.concurrency:.2f}"),
        (
            "output tokens",
            f"{s.output_tokens_total} (server usage)"
            + (f", client tokenizer {s.client_tokens_total}" if s.client_tokens_total else ""),
        ),
    ]
    if res.config.slos:
        pairs.append(("goodput", f"{s.goodput_rps:.2f} req/s, SLO attainment {s.slo_attainment:.1%}"))
        for k, v in s.slo_pass_rates.items():
            pairs.append((f"  {k} <= {res.config.slos[k]:g}", f"{v:.1%}"))
    if s.errors:
        pairs.append(("errors", ", ".join(f"{k}: {v}" for k, v in s.errors.items())))
    if res.prometheus is not None:
        p = res.prometheus
        util = (
            f"{p.utilization_mean:.1%} mean, {p.utilization_max:.1%} max"
            if p.utilization_mean is not None
            else "-"
        )
        mem = f"{(p.memory_bytes_max or 0) / 2**30:.2f} GiB max" if p.memory_bytes_max is not None else "-"
        pairs.append(("GPU (scraped)", f"util {util}; memory {mem}; {p.samples} scrapes"))
    if res.ceiling is not None:
        c = res.ceiling
        pairs.append(
            ("client ceiling", f"{c.max_requests_per_s:.0f} req/s, {c.max_events_per_s:.0f} events/s")
        )
    w = max(len(k) for k, _ in pairs)
    for k, text in pairs:
        out.write(f"{k.ljust(w)}  {text}\n")
    out.write("\nformulas:\n")
    for k, text in FORMULAS.items():
        out.write(f"  {k}: {text}\n")
    for warn in res.warnings:
        out.write(f"WARNING: {warn}\n")
    return out.getvalue()


def write_csv(res: RunResult, path: Path) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["metric", *_STATS])
        for r in summary_rows(res):
            w.writerow(r)
        s = res.summary
        for k, v in (
            ("output_tokens_per_s", s.output_tokens_per_s),
            ("requests_per_s", s.requests_per_s),
            ("concurrency", s.concurrency),
            ("goodput_rps", s.goodput_rps),
            ("slo_attainment", s.slo_attainment),
            ("failed", s.failed),
        ):
            w.writerow([k, "", f"{v}"])


def write_outputs(res: RunResult, out_dir: Path, plots: bool = True) -> list[Path]:
    """``result.json``, ``summary.csv``, plots; records are already in ``res.records_path``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "result.json", out_dir / "summary.csv"]
    written[0].write_bytes(res.to_json())
    write_csv(res, written[1])
    if plots:
        from bench.plots import plot_run

        written.extend(plot_run(res, out_dir))
    return written
