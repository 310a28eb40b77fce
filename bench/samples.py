"""Per-request samples read back from a records file, for plots and comparisons."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from bench.metrics import arrival_gaps
from bench.records import RequestRecord, read_records

__all__ = ["Samples", "load_samples"]


class Samples:
    """Column arrays (ms) of the successful requests, plus pooled token-normalised ITL."""

    def __init__(self, records: Iterable[RequestRecord]) -> None:
        cols: dict[str, list[float]] = {
            k: []
            for k in ("t_s", "ttft_ms", "ttft_sched_ms", "e2e_ms", "e2e_sched_ms", "tpot_ms", "itl_mean_ms")
        }
        itl_t: list[float] = []
        itl: list[float] = []
        t0: int | None = None
        self.failed = 0
        for r in records:
            t0 = r.t_sched if t0 is None else min(t0, r.t_sched)
            if not r.ok or r.t_first is None or r.t_last is None:
                self.failed += 1
                continue
            cols["t_s"].append(float(r.t_send))
            cols["ttft_ms"].append((r.t_first - r.t_send) / 1e6)
            cols["ttft_sched_ms"].append((r.t_first - r.t_sched) / 1e6)
            cols["e2e_ms"].append((r.t_last - r.t_send) / 1e6)
            cols["e2e_sched_ms"].append((r.t_last - r.t_sched) / 1e6)
            n = r.output_tokens()
            cols["tpot_ms"].append((r.t_last - r.t_first) / 1e6 / (n - 1) if n > 1 else float("nan"))
            gaps = arrival_gaps(r)
            tok = sum(t for _, t in gaps)
            cols["itl_mean_ms"].append(sum(g for g, _ in gaps) / tok / 1e6 if tok else float("nan"))
            for (g, k), off in zip(gaps, r.event_ns[1:], strict=False):
                if k > 0:
                    itl.append(g / k / 1e6)
                    itl_t.append(float(r.t_send + off))
        base = float(t0 or 0)
        self.cols = {k: np.asarray(v) for k, v in cols.items()}
        self.cols["t_s"] = (self.cols["t_s"] - base) / 1e9
        self.itl_ms = np.asarray(itl)
        self.itl_t_s = (np.asarray(itl_t) - base) / 1e9

    def get(self, name: str) -> np.ndarray:
        if name == "itl_ms":
            return self.itl_ms
        arr: np.ndarray = self.cols[name]
        kept: np.ndarray = arr[~np.isnan(arr)]
        return kept


def load_samples(path: Path) -> Samples:
    return Samples(read_records(path))
