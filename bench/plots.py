"""PNG plots (matplotlib is optional: ``pip install matplotlib``; the rest of bench works without it)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.samples import load_samples

if TYPE_CHECKING:
    from bench.result import RunResult

__all__ = ["plot_run", "plot_sweep"]


def _plt() -> Any | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot_run(res: RunResult, out_dir: Path) -> list[Path]:
    """Latency CDFs and TTFT/ITL over time; [] when matplotlib or the records are missing."""
    plt = _plt()
    if plt is None or not res.records_path or not Path(res.records_path).is_file():
        return []
    s = load_samples(Path(res.records_path))
    written = []
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, names in zip(
        axes, (("ttft_ms", "ttft_sched_ms"), ("e2e_ms", "e2e_sched_ms"), ("itl_ms", "tpot_ms")), strict=True
    ):
        for name in names:
            v = np.sort(s.get(name))
            if len(v):
                ax.plot(v, np.arange(1, len(v) + 1) / len(v), label=name)
        ax.set_xlabel("ms")
        ax.set_ylabel("CDF")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("latency CDFs")
    fig.tight_layout()
    p = out_dir / "latency_cdf.png"
    fig.savefig(p, dpi=100)
    plt.close(fig)
    written.append(p)
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(12, 6), sharex=True)
    a1.scatter(s.cols["t_s"], s.cols["ttft_ms"], s=4, label="ttft_ms")
    a1.scatter(s.cols["t_s"], s.cols["ttft_sched_ms"], s=4, label="ttft_sched_ms", alpha=0.5)
    a1.set_ylabel("TTFT ms")
    a1.legend()
    a2.scatter(s.itl_t_s, s.itl_ms, s=1)
    a2.set_ylabel("ITL ms (per token)")
    a2.set_xlabel("seconds since start")
    for ax in (a1, a2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    p = out_dir / "latency_over_time.png"
    fig.savefig(p, dpi=100)
    plt.close(fig)
    written.append(p)
    return written


def plot_sweep(levels: list[float], results: list[RunResult], vary: str, out_dir: Path) -> list[Path]:
    plt = _plt()
    if plt is None or not results:
        return []
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 4.5))
    for metric in ("ttft_sched_ms", "e2e_sched_ms", "itl_ms"):
        for stat, style in (("p50", "-o"), ("p99", "--x")):
            ys = [r.stat(metric, stat) for r in results]
            a1.plot(levels, [y if y is not None else np.nan for y in ys], style, label=f"{metric} {stat}")
    a1.set_xlabel(vary)
    a1.set_ylabel("ms")
    a1.set_yscale("log")
    a1.legend(fontsize=7)
    a1.grid(alpha=0.3)
    a2.plot(levels, [r.output_tokens_per_s for r in results], "-o")
    a2.set_xlabel(vary)
    a2.set_ylabel("output tokens/s")
    a2.grid(alpha=0.3)
    fig.suptitle("latency and throughput vs load")
    fig.tight_layout()
    p = out_dir / "sweep.png"
    fig.savefig(p, dpi=100)
    plt.close(fig)
    return [p]
