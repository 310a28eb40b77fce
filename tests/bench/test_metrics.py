"""Metric formulas on hand-made records (times in ns)."""

from __future__ import annotations

import numpy as np
import pytest

from bench.metrics import PERCENTILES, Window, arrival_gaps, stats, summarize
from bench.records import RequestRecord

MS = 1_000_000


def rec(
    i: int, sched: int, send: int, events: list[int], tokens: list[int] | None, **kw: object
) -> RequestRecord:
    """events: offsets from send (ms) of token-bearing events."""
    ev = [e * MS for e in events]
    return RequestRecord(
        index=i,
        t_sched=sched * MS,
        t_dispatch=sched * MS,
        t_send=send * MS,
        t_first=send * MS + ev[0] if ev else None,
        t_last=send * MS + ev[-1] if ev else None,
        t_close=send * MS + (ev[-1] if ev else 5 * MS) + MS,
        ok=bool(ev),
        status=200 if ev else 500,
        error=None if ev else "HTTP 500: boom",
        completion_tokens=sum(tokens) if tokens else None,
        event_ns=ev,
        event_tokens=tokens,
        **kw,  # type: ignore[arg-type]
    )


def test_latency_formulas_per_request() -> None:
    # scheduled at 0, sent at 5 (5 ms client queueing), events at +100, +120, +120 (same read), +160
    r = rec(0, 0, 5, [100, 120, 120, 160], [1, 2, 1, 4])
    s = summarize([r], Window(start=0, end=1000 * MS))
    lat = s.latency
    assert lat["ttft_ms"].p50 == pytest.approx(100)
    assert lat["ttft_sched_ms"].p50 == pytest.approx(105)
    assert lat["e2e_ms"].p50 == pytest.approx(160)
    assert lat["e2e_sched_ms"].p50 == pytest.approx(165)
    assert lat["queue_ms"].p50 == pytest.approx(5)
    # TPOT = (E2E - TTFT) / (N - 1) = 60 / 7
    assert lat["tpot_ms"].p50 == pytest.approx(60 / 7)
    # ICL: raw event gaps 20, 0, 40
    assert lat["icl_ms"].n == 3
    assert sorted([lat["icl_ms"].min, lat["icl_ms"].max]) == [0, pytest.approx(40)]
    # token-normalised ITL: read at +120 carries 3 tokens over 20 ms, read at +160 carries 4 over 40 ms
    assert arrival_gaps(r) == [(20 * MS, 3.0), (40 * MS, 4.0)]
    assert lat["itl_ms"].n == 7
    assert lat["itl_ms"].mean == pytest.approx((3 * 20 / 3 + 4 * 10) / 7)
    assert lat["itl_max_ms"].p50 == pytest.approx(40)
    assert s.output_tokens_total == 8


def test_tokens_spread_evenly_without_continuous_usage() -> None:
    r = rec(0, 0, 0, [10, 20, 30], None)
    r.completion_tokens = 6  # only the final usage chunk reported a total
    assert r.tokens_per_event() == [2.0, 2.0, 2.0]
    assert summarize([r], Window(start=0, end=100 * MS)).latency["itl_ms"].p50 == pytest.approx(5)


def test_failures_count_against_goodput_and_stay_out_of_latency() -> None:
    good = rec(0, 0, 0, [50, 60], [1, 1])
    slow = rec(1, 100, 100, [300, 310], [1, 1])
    bad = rec(2, 200, 200, [], None)
    s = summarize([good, slow, bad], Window(start=0, end=1000 * MS), {"ttft_ms": 100.0})
    assert (s.succeeded, s.failed, s.requests_in_window) == (2, 1, 3)
    assert s.latency["ttft_ms"].n == 2
    assert s.slo_attainment == pytest.approx(1 / 3)
    assert s.slo_pass_rates["ttft_ms"] == pytest.approx(1 / 3)
    assert s.goodput_rps == pytest.approx(1 / 1.0)
    assert s.errors == {"HTTP 500": 1}


def test_window_trims_throughput_and_weights_concurrency_by_time() -> None:
    # two requests fully inside [0, 1000 ms]; one scheduled in the cool-down
    a = rec(0, 0, 0, [100, 200, 300], [1, 1, 1])  # in flight 0..301
    b = rec(1, 0, 0, [100, 200, 300], [1, 1, 1])
    c = rec(2, 900, 900, [200, 300], [1, 1])  # events at 1100, 1200: outside the window
    s = summarize([a, b, c], Window(start=0, end=1000 * MS))
    assert s.output_tokens_per_s == pytest.approx(6 / 1.0)
    assert s.requests_per_s == pytest.approx(2 / 1.0)
    # busy: a and b 301 ms each, c 100 ms inside the window
    assert s.concurrency == pytest.approx((301 + 301 + 100) / 1000)
    trimmed = summarize([a, b, c], Window(start=0, end=800 * MS))
    assert trimmed.requests_in_window == 2
    assert trimmed.latency["ttft_ms"].n == 2


def test_percentiles_are_numpy_linear_and_complete() -> None:
    vals = np.random.Generator(np.random.PCG64(1)).exponential(10, 1001)
    st = stats(vals)
    assert st is not None
    assert st.n == 1001
    expect = np.percentile(vals, PERCENTILES)
    assert [st.p50, st.p90, st.p95, st.p99, st.p999] == pytest.approx(list(expect))
    assert (st.min, st.max) == (vals.min(), vals.max())
    assert st.std == pytest.approx(vals.std())
    assert stats([]) is None
