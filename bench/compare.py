"""``bench compare A.json B.json``: ratios and whether each difference is significant.

Significance: a two-sided Mann-Whitney U test (normal approximation with tie
correction) on the per-request samples, plus a bootstrap 95% confidence interval of
the ratio of medians. Both need the runs' records files; without them only the
ratios are shown.
"""

from __future__ import annotations

import math
from pathlib import Path

import msgspec
import numpy as np

from bench.result import RunResult, load_result
from bench.samples import Samples, load_samples

__all__ = ["Comparison", "MetricDiff", "bootstrap_ratio_ci", "compare", "format_comparison", "mann_whitney_u"]

_METRICS = ("ttft_ms", "ttft_sched_ms", "e2e_ms", "e2e_sched_ms", "tpot_ms", "itl_ms")


def mann_whitney_u(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(U of ``a``, two-sided p) by the normal approximation with tie correction."""
    n1, n2 = len(a), len(b)
    if n1 == 0 or n2 == 0:
        return float("nan"), float("nan")
    allv = np.concatenate([a, b])
    order = np.argsort(allv, kind="mergesort")
    ranks = np.empty(len(allv))
    sorted_v = allv[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_v, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    u1 = float(ranks[:n1].sum() - n1 * (n1 + 1) / 2)
    n = n1 + n2
    tie = float((counts**3 - counts).sum())
    sigma2 = n1 * n2 / 12.0 * ((n + 1) - tie / (n * (n - 1)))
    if sigma2 <= 0:
        return u1, 1.0
    z = (u1 - n1 * n2 / 2.0) / math.sqrt(sigma2)
    p = math.erfc(abs(z) / math.sqrt(2))
    return u1, p


def bootstrap_ratio_ci(
    a: np.ndarray, b: np.ndarray, iters: int = 1000, seed: int = 0, q: float = 50.0
) -> tuple[float, float]:
    """95% bootstrap CI of percentile_q(b) / percentile_q(a)."""
    if len(a) == 0 or len(b) == 0:
        return float("nan"), float("nan")
    rng = np.random.Generator(np.random.PCG64(seed))
    ia = rng.integers(0, len(a), (iters, len(a)))
    ib = rng.integers(0, len(b), (iters, len(b)))
    ma = np.percentile(a[ia], q, axis=1)
    mb = np.percentile(b[ib], q, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = mb / ma
    lo, hi = np.nanpercentile(r, [2.5, 97.5])
    return float(lo), float(hi)


class MetricDiff(msgspec.Struct, kw_only=True):
    metric: str
    a_p50: float | None
    b_p50: float | None
    ratio_p50: float | None
    a_p99: float | None
    b_p99: float | None
    ratio_p99: float | None
    p_value: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    significant: bool | None = None


class Comparison(msgspec.Struct, kw_only=True):
    a: str
    b: str
    metrics: list[MetricDiff]
    throughput: dict[str, tuple[float, float, float | None]]


def _ratio(a: float | None, b: float | None) -> float | None:
    return b / a if a and b is not None else None


def _samples(res: RunResult, path: Path) -> Samples | None:
    candidates = [Path(res.records_path)] if res.records_path else []
    candidates.append(path.parent / "records.jsonl")
    for c in candidates:
        if c.is_file():
            return load_samples(c)
    return None


def compare(path_a: Path, path_b: Path, alpha: float = 0.05) -> Comparison:
    ra, rb = load_result(path_a), load_result(path_b)
    sa, sb = _samples(ra, path_a), _samples(rb, path_b)
    diffs = []
    for m in _METRICS:
        a50, b50 = ra.stat(m, "p50"), rb.stat(m, "p50")
        a99, b99 = ra.stat(m, "p99"), rb.stat(m, "p99")
        if a50 is None and b50 is None:
            continue
        d = MetricDiff(
            metric=m,
            a_p50=a50,
            b_p50=b50,
            ratio_p50=_ratio(a50, b50),
            a_p99=a99,
            b_p99=b99,
            ratio_p99=_ratio(a99, b99),
        )
        if sa is not None and sb is not None:
            xa, xb = sa.get(m), sb.get(m)
            if len(xa) and len(xb):
                _, p = mann_whitney_u(xa, xb)
                lo, hi = bootstrap_ratio_ci(xa, xb)
                d.p_value, d.ci_low, d.ci_high = p, lo, hi
                d.significant = bool(p < alpha and not lo <= 1.0 <= hi)
        diffs.append(d)
    thr = {
        "output_tokens_per_s": (
            ra.output_tokens_per_s,
            rb.output_tokens_per_s,
            _ratio(ra.output_tokens_per_s, rb.output_tokens_per_s),
        ),
        "requests_per_s": (
            ra.requests_per_s,
            rb.requests_per_s,
            _ratio(ra.requests_per_s, rb.requests_per_s),
        ),
        "slo_attainment": (
            ra.summary.slo_attainment,
            rb.summary.slo_attainment,
            _ratio(ra.summary.slo_attainment, rb.summary.slo_attainment),
        ),
    }
    return Comparison(a=str(path_a), b=str(path_b), metrics=diffs, throughput=thr)


def _f(v: float | None, fmt: str = "{:.3f}") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def format_comparison(c: Comparison) -> str:
    lines = [f"A = {c.a}", f"B = {c.b}", ""]
    head = f"{'metric':<15}{'A p50':>10}{'B p50':>10}{'B/A':>7}{'A p99':>10}{'B p99':>10}{'B/A':>7}"
    head += f"{'MWU p':>9}{'95% CI p50 B/A':>18}  significant"
    lines += [head, "-" * len(head)]
    for d in c.metrics:
        ci = f"[{_f(d.ci_low, '{:.3f}')}, {_f(d.ci_high, '{:.3f}')}]" if d.ci_low is not None else "-"
        sig = "-" if d.significant is None else ("YES" if d.significant else "no")
        lines.append(
            f"{d.metric:<15}{_f(d.a_p50):>10}{_f(d.b_p50):>10}{_f(d.ratio_p50, '{:.2f}'):>7}"
            f"{_f(d.a_p99):>10}{_f(d.b_p99):>10}{_f(d.ratio_p99, '{:.2f}'):>7}"
            f"{_f(d.p_value, '{:.3g}'):>9}{ci:>18}  {sig}"
        )
    lines.append("")
    for k, (a, b, r) in c.throughput.items():
        lines.append(f"{k:<20} A {a:.3f}  B {b:.3f}  B/A {_f(r, '{:.3f}')}")
    lines.append("significant: Mann-Whitney U two-sided p < 0.05 and the bootstrap CI excludes 1")
    return "\n".join(lines)
