"""Whole runs against ``bench mock``: rates, queueing, failures, token counts, scraping."""

from __future__ import annotations

import random
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from bench.config import decode_config
from bench.records import read_records
from bench.runner import run_load

MockFactory = Callable[..., AbstractContextManager[str]]


async def test_open_loop_keeps_its_rate(mock_fast: str) -> None:
    cfg = decode_config(
        {
            "url": mock_fast,
            "rate": 200.0,
            "arrival": "poisson",
            "num_requests": 400,
            "seed": 5,
            "workload": {"input_len": 4, "output_len": 2},
        }
    )
    res = await run_load(cfg)
    assert res.summary.failed == 0
    assert res.summary.achieved_rate == pytest.approx(200.0, rel=0.01)
    again = await run_load(cfg)
    assert again.schedule_digest == res.schedule_digest


async def test_client_queueing_shows_in_sched_latency(mock: MockFactory) -> None:
    """Rate 20/s (every 50 ms) into a cap of 1 with a 100 ms service: D/D/1 queueing.

    Lindley's recursion gives each request's wait from the one before it,
    W_i = max(0, W_{i-1} + S_{i-1} - a), and for a constant service S the closed form
    W_i = i * (S - a). E2E from the schedule must carry that wait; E2E from the send must not.
    """
    ttft, itl, n_tok = 60.0, 20.0, 3
    service = ttft + (n_tok - 1) * itl
    gap = 50.0
    with mock("--ttft", str(ttft), "--itl", str(itl)) as url:
        cfg = decode_config(
            {
                "url": url,
                "rate": 1000 / gap,
                "arrival": "constant",
                "concurrency": 1,
                "num_requests": 10,
                "workload": {"input_len": 4, "output_len": n_tok},
            }
        )
        res = await run_load(cfg)
    recs = sorted(read_records(Path(res.records_path or "")), key=lambda r: r.index)
    assert all(r.ok for r in recs)
    for i, r in enumerate(recs):
        assert r.t_last is not None
        e2e = (r.t_last - r.t_send) / 1e6
        e2e_sched = (r.t_last - r.t_sched) / 1e6
        queued = (r.t_send - r.t_sched) / 1e6
        # the server's own time only: never less than the mock's sleeps, and short of one queueing
        # step (S - a = 50 ms, the least a leaked wait adds from the second request on), so a busy
        # machine's slack cannot fail it while a wait that leaked in would
        assert service - 1.0 <= e2e < service + (service - gap) / 2
        assert e2e_sched == pytest.approx(e2e + queued, abs=1e-6)
        if i:
            prev = recs[i - 1]
            # Lindley with the measured service: the cap holds request i until i-1 has closed
            backlog = max(0.0, (prev.t_close - r.t_sched) / 1e6)
            assert r.t_send >= prev.t_close
            # what may differ is the hand-over from one request to the next (a loop turn, busy-machine slack)
            assert queued == pytest.approx(backlog, abs=15.0)
            # the closed form with the nominal service is the least it can be (a busy machine
            # only lengthens the measured service, and with it the wait)
            assert queued >= i * (service - gap) - 15.0
    assert res.stat("e2e_sched_ms", "max") >= (service + 9 * (service - gap)) * 0.95
    assert res.stat("e2e_sched_ms", "max") == pytest.approx(
        max((r.t_last - r.t_sched) / 1e6 for r in recs if r.t_last is not None), rel=1e-6
    )
    assert service - 1.0 <= res.stat("e2e_ms", "max") < service + (service - gap) / 2


async def test_failures_are_counted_and_violate_slos(mock: MockFactory) -> None:
    n, seed = 40, 3
    # the mock decides failures per request number from random.Random(f"{seed}:{n}")
    expect_http = expect_mid = 0
    for k in range(n):
        rng = random.Random(f"{seed}:{k}")
        if rng.random() < 0.2:
            expect_http += 1
        elif rng.random() < 0.2:
            expect_mid += 1
    with mock(
        "--ttft",
        "2",
        "--itl",
        "1",
        "--error-rate",
        "0.2",
        "--midstream-error-rate",
        "0.2",
        "--seed",
        str(seed),
    ) as url:
        cfg = decode_config(
            {
                "url": url,
                "concurrency": 4,
                "num_requests": n,
                "slos": {"ttft_ms": 1000.0},
                "workload": {"output_len": 8},
            }
        )
        res = await run_load(cfg)
    s = res.summary
    assert s.failed == expect_http + expect_mid > 0
    assert s.succeeded == n - s.failed
    assert s.errors == {k: v for k, v in (("HTTP 500", expect_http), ("stream error", expect_mid)) if v}
    assert s.latency["ttft_ms"].n == s.succeeded
    assert s.slo_attainment == pytest.approx(s.succeeded / n)
    assert any("failed" in w for w in res.warnings)


async def test_token_counts_exact_with_and_without_server_usage(
    mock: MockFactory, word_tokenizer: str, digit_tokenizer: str
) -> None:
    with mock("--tokens-per-event", "3", "--events-per-write", "2", "--ttft", "1", "--itl", "1") as url:
        base = {"url": url, "concurrency": 2, "num_requests": 6, "workload": {"output_len": 20}}
        res = await run_load(decode_config(base | {"tokenizer": word_tokenizer}))
        recs = list(read_records(Path(res.records_path or "")))
        assert all(r.completion_tokens == 20 == r.client_tokens for r in recs)
        assert all(r.event_tokens == [3, 3, 3, 3, 3, 3, 2] for r in recs)
        assert res.summary.token_mismatch == 0
        wrong = await run_load(decode_config(base | {"tokenizer": digit_tokenizer}))
        assert wrong.summary.token_mismatch is not None and wrong.summary.token_mismatch > 0.01
        assert any("mismatch" in w for w in wrong.warnings)
    with mock("--tokens-per-event", "3", "--no-usage", "--ttft", "1", "--itl", "1") as url:
        res = await run_load(decode_config(base | {"url": url, "tokenizer": word_tokenizer}))
        recs = list(read_records(Path(res.records_path or "")))
        assert all(r.completion_tokens is None and r.output_tokens() == 20 for r in recs)


async def test_duration_run_with_warmup_and_prometheus_scrape(mock_fast: str) -> None:
    cfg = decode_config(
        {
            "url": mock_fast,
            "concurrency": 4,
            "duration_s": 1.0,
            "warmup_s": 0.2,
            "cooldown_s": 0.2,
            "workload": {"output_len": 4},
            "prometheus": {"url": mock_fast + "/metrics", "interval_s": 0.1},
        }
    )
    res = await run_load(cfg)
    s = res.summary
    assert s.requests_total > s.requests_in_window > 0
    assert 0.5 < s.window_s < 1.0
    assert 3.0 < s.concurrency <= 4.0
    p = res.prometheus
    assert p is not None and p.samples >= 3
    assert p.utilization_mean == pytest.approx(0.5)
    assert p.memory_bytes_max == 8 << 30


async def test_timeouts_are_failures(mock: MockFactory) -> None:
    with mock("--ttft", "5000", "--itl", "1") as url:
        cfg = decode_config(
            {"url": url, "concurrency": 2, "num_requests": 2, "timeout_s": 0.3, "slos": {"e2e_ms": 10000.0}}
        )
        res = await run_load(cfg)
    assert res.summary.failed == 2 and res.summary.slo_attainment == 0.0
    assert res.summary.errors == {"timeout after 0.3s": 2}


async def test_library_api_from_the_package(mock_fast: str) -> None:
    import bench

    res = await bench.run_load(
        bench.decode_config(
            {
                "url": mock_fast,
                "concurrency": 2,
                "num_requests": 4,
                "endpoint": "chat",
                "workload": {"output_len": 5},
            }
        )
    )
    assert res.summary.succeeded == 4 and res.summary.output_tokens_total == 20
    assert res.ttft_p50_ms is not None and res.ttft_p99_ms is not None and res.output_tokens_per_s > 0
    assert res.stat("e2e_sched_ms", "p999") is not None
    again = bench.summarize(bench.RecordReader(Path(res.records_path or "")))
    assert again.latency["ttft_ms"] == res.summary.latency["ttft_ms"]
