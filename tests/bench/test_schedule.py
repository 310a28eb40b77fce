"""Open-loop schedules and workloads are reproducible from a seed and keep their rate."""

from __future__ import annotations

import itertools

import msgspec
import numpy as np
import pytest

from bench.config import decode_config
from bench.schedule import arrival_offsets_ns, schedule_digest
from bench.workload import Workload


@pytest.mark.parametrize("arrival", ["poisson", "gamma", "constant"])
def test_schedule_is_deterministic_and_spans_exactly_n_over_rate(arrival: str) -> None:
    a = arrival_offsets_ns(500, 40.0, arrival, 0.5, seed=7)  # type: ignore[arg-type]
    b = arrival_offsets_ns(500, 40.0, arrival, 0.5, seed=7)  # type: ignore[arg-type]
    assert a == b
    assert schedule_digest(a) == schedule_digest(b)
    assert a[0] == 0
    assert a[-1] == pytest.approx(499 / 40.0 * 1e9, abs=1)
    assert all(x <= y for x, y in itertools.pairwise(a))
    if arrival != "constant":
        assert arrival_offsets_ns(500, 40.0, arrival, 0.5, seed=8) != a  # type: ignore[arg-type]


def test_gamma_burstiness_changes_dispersion() -> None:
    def cv(shape: float) -> float:
        gaps = np.diff(arrival_offsets_ns(5000, 100.0, "gamma", shape, seed=3))
        return float(gaps.std() / gaps.mean())

    assert cv(0.25) > 1.5 > cv(1.0) > 0.8 > cv(4.0)


def test_workload_bodies_are_reproducible_and_fixed_output() -> None:
    cfg = decode_config(
        {
            "url": "http://127.0.0.1:1",
            "concurrency": 1,
            "num_requests": 1,
            "seed": 3,
            "workload": {
                "kind": "shared_prefix",
                "prefix_len": 20,
                "num_prefixes": 2,
                "input_len": 10,
                "output_len": 32,
                "output_range": 0.5,
            },
        }
    )
    w1, w2 = Workload(cfg), Workload(cfg)
    bodies = [w1.request(i) for i in range(6)]
    assert bodies == [w2.request(i) for i in range(6)]
    docs = [msgspec.json.decode(b) for b, _ in bodies]
    for doc, (_, n) in zip(docs, bodies, strict=True):
        assert doc["max_tokens"] == doc["min_tokens"] == n
        assert doc["ignore_eos"] is True
        assert doc["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
        assert 16 <= n <= 48
    prefixes = {" ".join(d["prompt"].split()[:20]) for d in docs}
    assert len(prefixes) == 2


def test_config_rejects_unknown_fields_and_bad_combinations() -> None:
    with pytest.raises(msgspec.ValidationError):
        decode_config({"url": "http://x", "concurrency": 1, "num_requests": 1, "concurency": 2})
    with pytest.raises(msgspec.ValidationError, match="exactly one"):
        decode_config({"url": "http://x", "concurrency": 1})
    with pytest.raises(msgspec.ValidationError, match="unknown SLO"):
        decode_config({"url": "http://x", "concurrency": 1, "num_requests": 1, "slos": {"ttfx_ms": 1}})


def test_a_response_format_is_sent_on_chat_only() -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "t", "schema": {"type": "object"}}}
    base = {"url": "http://127.0.0.1:1", "concurrency": 1, "num_requests": 1}
    body, _ = Workload(decode_config({**base, "endpoint": "chat", "response_format": fmt})).request(0)
    doc = msgspec.json.decode(body)
    assert doc["response_format"] == fmt and doc["messages"][0]["role"] == "user"
    plain, _ = Workload(decode_config({**base, "endpoint": "chat"})).request(0)
    assert "response_format" not in msgspec.json.decode(plain)
    with pytest.raises(msgspec.ValidationError, match="needs endpoint 'chat'"):
        decode_config({**base, "response_format": fmt})
