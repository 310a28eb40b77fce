"""Metrics from per-request records, each with the formula the report prints.

Everything here is a pure function of ``RequestRecord`` values, so the JSONL file a
run writes is enough to recompute every number.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec
import numpy as np

from bench.records import RequestRecord

__all__ = [
    "FORMULAS",
    "PERCENTILES",
    "Stats",
    "Summary",
    "Window",
    "arrival_gaps",
    "full_window",
    "stats",
    "summarize",
]

PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)

FORMULAS: dict[str, str] = {
    "ttft_ms": "t_first - t_send  (first token-bearing event; role-only/empty events ignored)",
    "ttft_sched_ms": "t_first - t_sched  (includes client queueing: coordinated-omission safe)",
    "e2e_ms": "t_last - t_send  (last token-bearing event)",
    "e2e_sched_ms": "t_last - t_sched",
    "queue_ms": "t_send - t_sched  (client-side wait: dispatch lag + concurrency cap)",
    "dispatch_lag_ms": "t_dispatch - t_sched  (scheduler lateness)",
    "tpot_ms": "(e2e - ttft) / (output_tokens - 1), per request with output_tokens > 1",
    "icl_ms": "gap between consecutive token-bearing SSE events, pooled (0 for events in one read)",
    "itl_ms": "gap between consecutive reads / tokens in the later read, one sample per token, pooled",
    "itl_max_ms": "largest inter-read gap within a request (stall), per request",
    "output_tokens_per_s": "tokens of events arriving inside the window / window length",
    "requests_per_s": "successful requests closing inside the window / window length",
    "concurrency": (
        "time-weighted mean of requests in flight: sum(overlap([t_send, t_close], window)) / window"
    ),
    "goodput_rps": "requests scheduled in the window that succeeded and met every SLO / window length",
    "slo_attainment": "(succeeded and met every SLO) / requests scheduled in the window (failures violate)",
    "percentiles": "numpy linear interpolation (type 7)",
}


class Stats(msgspec.Struct, frozen=True, kw_only=True):
    n: int
    mean: float
    std: float
    min: float
    max: float
    p50: float
    p90: float
    p95: float
    p99: float
    p999: float

    def get(self, name: str) -> float:
        return float(getattr(self, name))


def stats(values: Iterable[float] | np.ndarray[Any, Any]) -> Stats | None:
    arr = np.asarray(values if isinstance(values, np.ndarray) else list(values), dtype=np.float64)
    if arr.size == 0:
        return None
    q = np.percentile(arr, PERCENTILES)
    return Stats(
        n=int(arr.size),
        mean=float(arr.mean()),
        std=float(arr.std()),
        min=float(arr.min()),
        max=float(arr.max()),
        p50=float(q[0]),
        p90=float(q[1]),
        p95=float(q[2]),
        p99=float(q[3]),
        p999=float(q[4]),
    )


class Window(msgspec.Struct, frozen=True, kw_only=True):
    """The measured window in monotonic ns: warm-up and cool-down excluded."""

    start: int
    end: int

    @property
    def seconds(self) -> float:
        return max(0, self.end - self.start) / 1e9


class Summary(msgspec.Struct, kw_only=True):
    """Aggregate metrics of one run (all latencies in ms)."""

    window_s: float
    requests_total: int
    requests_in_window: int
    succeeded: int
    failed: int
    errors: dict[str, int]
    latency: dict[str, Stats]
    output_tokens_total: int
    prompt_tokens_total: int
    output_tokens_per_s: float
    requests_per_s: float
    concurrency: float
    achieved_rate: float | None
    goodput_rps: float
    slo_attainment: float
    slo_pass_rates: dict[str, float]
    client_tokens_total: int | None = None
    token_mismatch: float | None = None
    events_total: int = 0


def arrival_gaps(rec: RequestRecord) -> list[tuple[int, float]]:
    """(gap ns, tokens) for each read after the first; events in one read are merged."""
    out: list[tuple[int, float]] = []
    per_event = rec.tokens_per_event()
    prev: int | None = None
    cur_t: int | None = None
    cur_tok = 0.0
    for t, tok in zip(rec.event_ns, per_event, strict=True):
        if t == cur_t:
            cur_tok += tok
            continue
        if cur_t is not None and prev is not None:
            out.append((cur_t - prev, cur_tok))
        prev, cur_t, cur_tok = cur_t, t, tok
    if cur_t is not None and prev is not None:
        out.append((cur_t - prev, cur_tok))
    return out


def _error_kind(err: str) -> str:
    return err.split(":", 1)[0][:60]


def full_window(records: Iterable[RequestRecord]) -> Window:
    """From the first scheduled send to the last close."""
    lo: int | None = None
    hi = 0
    for r in records:
        lo = r.t_sched if lo is None else min(lo, r.t_sched)
        hi = max(hi, r.t_close, r.t_send)
    return Window(start=lo or 0, end=hi)


def summarize(
    records: Iterable[RequestRecord], window: Window | None = None, slos: dict[str, float] | None = None
) -> Summary:
    """Streaming pass over the records (re-iterable, e.g. a ``RecordReader``, when ``window`` is None).

    Per-request scalars are kept as float lists only; the records themselves are not.
    """
    slos = slos or {}
    cols: dict[str, list[float]] = {
        k: []
        for k in (
            "ttft_ms",
            "ttft_sched_ms",
            "e2e_ms",
            "e2e_sched_ms",
            "queue_ms",
            "dispatch_lag_ms",
            "tpot_ms",
            "itl_max_ms",
        )
    }
    icl: list[float] = []
    itl: list[float] = []
    errors: dict[str, int] = {}
    sends: list[int] = []
    total = in_win = ok = failed = good = 0
    slo_pass = dict.fromkeys(slos, 0)
    out_tok_total = prompt_tot = 0
    client_tot: int | None = None
    server_for_client = 0
    win_tokens = 0.0
    win_requests = 0
    busy_ns = 0
    events = 0
    if window is None:
        window = full_window(records)
    lo, hi = window.start, window.end
    for r in records:
        total += 1
        sends.append(r.t_send)
        _accumulate(r, lo, hi, cols, icl, itl, errors, slos, slo_pass)
        in_sched = lo <= r.t_sched <= hi
        out_n = r.output_tokens()
        out_tok_total += out_n if r.ok else 0
        prompt_tot += (r.prompt_tokens or 0) if r.ok else 0
        if r.client_tokens is not None and r.ok:
            client_tot = (client_tot or 0) + r.client_tokens
            server_for_client += out_n
        events += len(r.event_ns)
        for t, tok in zip(r.event_ns, r.tokens_per_event(), strict=True):
            if lo <= r.t_send + t <= hi:
                win_tokens += tok
        if r.ok and lo <= r.t_close <= hi:
            win_requests += 1
        a, b = max(r.t_send, lo), min(r.t_close or r.t_send, hi)
        if b > a:
            busy_ns += b - a
        if in_sched:
            in_win += 1
            if r.ok:
                ok += 1
                if all(_meets(r, k, v) for k, v in slos.items()):
                    good += 1
            else:
                failed += 1
    win_s = max(hi - lo, 1) / 1e9
    sends.sort()
    achieved = None
    if len(sends) > 1 and sends[-1] > sends[0]:
        achieved = (len(sends) - 1) / ((sends[-1] - sends[0]) / 1e9)
    latency = {k: s for k, v in cols.items() if (s := stats(v)) is not None}
    for name, vals in (("icl_ms", icl), ("itl_ms", itl)):
        if (s := stats(vals)) is not None:
            latency[name] = s
    mismatch = None
    if client_tot is not None and server_for_client:
        mismatch = abs(client_tot - server_for_client) / server_for_client
    return Summary(
        window_s=win_s,
        requests_total=total,
        requests_in_window=in_win,
        succeeded=ok,
        failed=failed,
        errors=errors,
        latency=latency,
        output_tokens_total=out_tok_total,
        prompt_tokens_total=prompt_tot,
        output_tokens_per_s=win_tokens / win_s,
        requests_per_s=win_requests / win_s,
        concurrency=busy_ns / (win_s * 1e9),
        achieved_rate=achieved,
        goodput_rps=good / win_s,
        slo_attainment=good / in_win if in_win else 0.0,
        slo_pass_rates={k: v / in_win if in_win else 0.0 for k, v in slo_pass.items()},
        client_tokens_total=client_tot,
        token_mismatch=mismatch,
        events_total=events,
    )


def _metric(r: RequestRecord, name: str) -> float | None:
    if r.t_first is None or r.t_last is None:
        return None
    if name == "ttft_ms":
        return (r.t_first - r.t_send) / 1e6
    if name == "ttft_sched_ms":
        return (r.t_first - r.t_sched) / 1e6
    if name == "e2e_ms":
        return (r.t_last - r.t_send) / 1e6
    if name == "e2e_sched_ms":
        return (r.t_last - r.t_sched) / 1e6
    if name == "tpot_ms":
        n = r.output_tokens()
        return (r.t_last - r.t_first) / 1e6 / (n - 1) if n > 1 else None
    if name == "itl_max_ms":
        gaps = [b - a for a, b in zip(r.event_ns, r.event_ns[1:], strict=False)]
        return max(gaps) / 1e6 if gaps else 0.0
    raise KeyError(name)


def _meets(r: RequestRecord, name: str, limit: float) -> bool:
    v = _metric(r, name)
    return (v is None and name == "tpot_ms") or (v is not None and v <= limit)


def _accumulate(
    r: RequestRecord,
    lo: int,
    hi: int,
    cols: dict[str, list[float]],
    icl: list[float],
    itl: list[float],
    errors: dict[str, int],
    slos: dict[str, float],
    slo_pass: dict[str, int],
) -> None:
    if not lo <= r.t_sched <= hi:
        return
    if not r.ok:
        kind = _error_kind(r.error or "unknown")
        errors[kind] = errors.get(kind, 0) + 1
        return
    for k, v in slos.items():
        if _meets(r, k, v):
            slo_pass[k] += 1
    cols["queue_ms"].append((r.t_send - r.t_sched) / 1e6)
    if r.t_dispatch:
        cols["dispatch_lag_ms"].append((r.t_dispatch - r.t_sched) / 1e6)
    for name in ("ttft_ms", "ttft_sched_ms", "e2e_ms", "e2e_sched_ms", "tpot_ms", "itl_max_ms"):
        m = _metric(r, name)
        if m is not None:
            cols[name].append(m)
    icl.extend((b - a) / 1e6 for a, b in zip(r.event_ns, r.event_ns[1:], strict=False))
    for gap, tok in arrival_gaps(r):
        if tok > 0:
            itl.extend([gap / tok / 1e6] * max(1, round(tok)))
