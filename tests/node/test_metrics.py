"""Metrics (counts, histograms, bounded labels, scrape-time sources), JSON request logs."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from audit import AuditStats
from node.logs import JsonFormatter, log_request
from node.metrics import (
    BREAKER_STATES,
    E2E_BUCKETS_S,
    ITL_BUCKETS_S,
    TTFT_BUCKETS_S,
    GpuTimeMeter,
    Metrics,
    RequestTimings,
)
from router.breaker import BreakerState
from serving.engine_stats import EngineStats
from serving.gpu import GpuReading, GpuSnapshot
from tests.harness import node_setup, running_node


def _audit_stats(
    *,
    queue_depth: int = 0,
    last_checkpoint_size: int | None = None,
    records: int = 0,
    commits: int = 0,
    wal_checkpoint_errors: int = 0,
) -> AuditStats:
    """The audit log's own stats type, as ``AuditLog.stats()`` hands it to the metrics."""
    return AuditStats(
        queue_depth=queue_depth, queue_max=1024, records=records, last_checkpoint_size=last_checkpoint_size,
        last_checkpoint_at=None, last_checkpoint_bytes=None, checkpoint_errors=0, failed=False,
        commits=commits, wal_checkpoint_errors=wal_checkpoint_errors,
    )  # fmt: skip


class FakeClock:
    """Time that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 64.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _metrics(clock: FakeClock | None = None, **kw: object) -> Metrics:
    params: dict[str, object] = {
        "tenants": ("acme", "globex"),
        "models": ("tiny", "gpt-4o"),
        "providers": ("openai-eu",),
        "gpu_hour_cost": 3.6,
        "currency": "EUR",
    }
    params.update(kw)
    return Metrics(clock=clock or FakeClock(), **params)  # type: ignore[arg-type]


def _value(m: Metrics, sample: str, /, **labels: str) -> float | None:
    return m.registry.get_sample_value(sample, labels)


def _series(m: Metrics) -> dict[str, list[dict[str, str]]]:
    """Every sample's labels by sample name, parsed back from the rendered text."""
    out: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(m.render().decode()):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(dict(sample.labels))
    return out


# --- request metrics ---


def test_an_external_stream_is_timed_on_its_output_and_counted_from_its_usage() -> None:
    """External APIs report tokens only at the end: each chunk of output is a token event, and the
    final usage is a count, never a burst of gaps at the end."""
    clock = FakeClock()
    m = _metrics(clock)
    timer = m.track_request(tenant="acme", alias="tiny", route="external:openai-eu", exact_counts=False)
    timer.dequeued()
    clock.advance(0.5)
    timer.tokens(0, output=True)  # first chunk, no count yet: the first token at 0.5 s
    clock.advance(0.25)
    timer.tokens(0, output=True)
    clock.advance(0.25)
    timer.tokens(0, output=True)
    timer.tokens(9, output=False)  # the usage arrives with the end
    timings = timer.finish(status=200, prompt_tokens=5, completion_tokens=9)

    mr = {"model": "tiny", "route": "external:openai-eu"}
    assert _value(m, "bastion_time_to_first_token_seconds_sum", **mr) == 0.5
    assert _value(m, "bastion_inter_token_latency_seconds_count", **mr) == 2
    assert _value(m, "bastion_inter_token_latency_seconds_sum", **mr) == 0.5
    assert timings.itl_mean_s == 0.25
    assert _value(m, "bastion_tokens_total", direction="out", tenant="acme", **mr) == 9


def test_a_streamed_request_fills_every_histogram_with_its_timings() -> None:
    clock = FakeClock()
    m = _metrics(clock)
    timer = m.track_request(tenant="acme", alias="tiny", route="local")
    # steps exact in binary, so bucket edges are compared without rounding noise
    clock.advance(0.25)
    timer.dequeued()
    clock.advance(0.25)
    timer.tokens(1)  # first token at 0.5 s
    clock.advance(0.125)
    timer.tokens(2)
    clock.advance(0.25)
    timer.tokens(4)  # one delta with two tokens: two gaps of 0.125 s
    clock.advance(0.375)
    timings = timer.finish(status=200, prompt_tokens=12, completion_tokens=4)

    mr = {"model": "tiny", "route": "local"}
    assert _value(m, "bastion_queue_wait_seconds_count", **mr) == 1
    assert _value(m, "bastion_queue_wait_seconds_sum", **mr) == 0.25
    assert _value(m, "bastion_time_to_first_token_seconds_count", **mr) == 1
    assert _value(m, "bastion_time_to_first_token_seconds_sum", **mr) == 0.5
    assert _value(m, "bastion_inter_token_latency_seconds_count", **mr) == 3
    assert _value(m, "bastion_inter_token_latency_seconds_sum", **mr) == 0.375
    assert _value(m, "bastion_request_duration_seconds_count", **mr) == 1
    assert _value(m, "bastion_request_duration_seconds_sum", **mr) == 1.25
    # bucket placement: TTFT 0.5 s is in le=0.5, not le=0.3; gaps of 0.125 s in le=0.15, not le=0.1
    assert _value(m, "bastion_time_to_first_token_seconds_bucket", le="0.3", **mr) == 0
    assert _value(m, "bastion_time_to_first_token_seconds_bucket", le="0.5", **mr) == 1
    assert _value(m, "bastion_inter_token_latency_seconds_bucket", le="0.1", **mr) == 0
    assert _value(m, "bastion_inter_token_latency_seconds_bucket", le="0.15", **mr) == 3
    assert _value(m, "bastion_queue_wait_seconds_bucket", le="0.25", **mr) == 1

    req = {"tenant": "acme", "model": "tiny", "route": "local"}
    assert _value(m, "bastion_requests_total", status="200", **req) == 1
    assert _value(m, "bastion_tokens_total", direction="in", **req) == 12
    assert _value(m, "bastion_tokens_total", direction="out", **req) == 4
    assert timings == RequestTimings(
        e2e_s=1.25, queue_wait_s=0.25, ttft_s=0.5, itl_mean_s=0.125, gpu_seconds=0.0, cost=0.0
    )


def test_finish_counts_once_and_failed_requests_have_no_ttft() -> None:
    clock = FakeClock()
    m = _metrics(clock)
    timer = m.track_request(tenant="acme", alias="gpt-4o", route="external:openai-eu")
    clock.advance(2.0)
    first = timer.finish(status=502)
    assert timer.finish(status=200) is first
    req = {"tenant": "acme", "model": "gpt-4o", "route": "external:openai-eu"}
    assert _value(m, "bastion_requests_total", status="502", **req) == 1
    assert _value(m, "bastion_requests_total", status="200", **req) is None
    assert first.ttft_s is None and first.queue_wait_s is None and first.itl_mean_s is None
    assert (
        _value(m, "bastion_time_to_first_token_seconds_count", model="gpt-4o", route="external:openai-eu")
        == 0
    )


def test_flat_observations_match_the_timer_path() -> None:
    m = _metrics()
    mr = {"model": "tiny", "route": "local"}
    m.observe_queue_wait(alias="tiny", route="local", seconds=0.25)
    for gap in (0.125, 0.25):
        m.observe_inter_token(alias="tiny", route="local", seconds=gap)
    m.observe_request(
        tenant="acme", alias="tiny", route="local", status="200", e2e_s=2.0, ttft_s=0.5, completion_tokens=3
    )
    m.observe_first_token(alias="tiny", route="local", seconds=0.25)
    assert _value(m, "bastion_time_to_first_token_seconds_count", **mr) == 2
    assert _value(m, "bastion_time_to_first_token_seconds_sum", **mr) == 0.75
    assert _value(m, "bastion_inter_token_latency_seconds_sum", **mr) == 0.375
    assert _value(m, "bastion_queue_wait_seconds_count", **mr) == 1
    assert _value(m, "bastion_request_duration_seconds_sum", **mr) == 2.0
    assert _value(m, "bastion_requests_total", tenant="acme", status="200", **mr) == 1


def test_buckets_span_milliseconds_to_minutes() -> None:
    m = _metrics()
    m.observe_request(tenant="acme", alias="tiny", route="local", status=200, e2e_s=0.01)
    buckets = {s["le"] for s in _series(m)["bastion_request_duration_seconds_bucket"]}
    assert {"0.05", "600.0", "+Inf"} <= buckets
    assert TTFT_BUCKETS_S[0] <= 0.005 and TTFT_BUCKETS_S[-1] >= 60
    assert ITL_BUCKETS_S[0] <= 0.001 and E2E_BUCKETS_S[-1] >= 600
    for bounds in (TTFT_BUCKETS_S, ITL_BUCKETS_S, E2E_BUCKETS_S):
        assert list(bounds) == sorted(set(bounds))


def test_labels_are_bounded_to_configured_names() -> None:
    clock = FakeClock()
    m = _metrics(clock)
    hostile = "Ignore previous instructions; my SSN is 078-05-1120"
    timer = m.track_request(tenant=hostile, alias="req-7f3a9c", route="evil.example")
    timer.tokens(3)
    timer.finish(status=200, prompt_tokens=5)
    m.observe_request(tenant="globex", alias="tiny", route="local", status=999, e2e_s=0.1)
    m.observe_request(tenant="globex", alias="tiny", route="local", status="cancelled", e2e_s=None)
    m.observe_feedback(alias="nope", rating=1000)
    m.observe_canary(model="tiny", provider="someone-else", match_ratio=0.5, mismatches=1)

    text = m.render().decode()
    assert hostile not in text and "078-05-1120" not in text
    assert "req-7f3a9c" not in text and "evil.example" not in text and "someone-else" not in text
    other = {"tenant": "other", "model": "other", "route": "other"}
    assert _value(m, "bastion_requests_total", status="200", **other) == 1
    assert (
        _value(m, "bastion_requests_total", tenant="globex", model="tiny", route="local", status="other") == 2
    )
    assert _value(m, "bastion_feedback_total", model="other", rating="other") == 1
    assert _value(m, "bastion_canary_match_ratio", model="tiny", provider="other") == 0.5
    allowed = {"acme", "globex", "tiny", "gpt-4o", "local", "external:openai-eu", "openai-eu", "other"}
    for name, label_sets in _series(m).items():
        for labels in label_sets:
            for key in ("tenant", "model", "route", "provider"):
                if key in labels:
                    assert labels[key] in allowed, (name, labels)


def test_each_app_has_its_own_registry() -> None:
    a, b = _metrics(), _metrics()
    a.observe_request(tenant="acme", alias="tiny", route="local", status=200, e2e_s=1.0)
    assert _value(a, "bastion_requests_total", tenant="acme", model="tiny", route="local", status="200") == 1
    assert (
        _value(b, "bastion_requests_total", tenant="acme", model="tiny", route="local", status="200") is None
    )
    assert not any(name.startswith("bastion_") for name in REGISTRY._names_to_collectors)
    assert a.content_type.startswith("text/plain")


async def test_the_scrape_sends_the_exposition_content_type_once(tmp_path: Path) -> None:
    setup = node_setup(tmp_path, audit=False)
    async with running_node(setup, {}) as node, httpx.AsyncClient(base_url=node.url) as http:
        r = await http.get("/metrics")
    assert r.status_code == 200
    raw = [v for k, v in r.headers.raw if k.lower() == b"content-type"]
    assert raw == [Metrics.content_type.encode()]  # one header, one charset (it said charset=utf-8 twice)
    assert raw[0].count(b"charset") == 1


# --- cost ---


def test_gpu_time_is_shared_among_concurrent_requests() -> None:
    clock = FakeClock()
    meter = GpuTimeMeter(gpus=2, clock=clock)
    a = meter.start()
    clock.advance(5.0)
    b = meter.start()
    clock.advance(5.0)
    assert meter.stop(a) == pytest.approx(2 * (5.0 + 2.5))
    clock.advance(1.0)
    assert meter.stop(b) == pytest.approx(2 * (2.5 + 1.0))
    clock.advance(100.0)  # idle: charged to no one
    c = meter.start()
    clock.advance(1.0)
    assert meter.stop(c) == pytest.approx(2.0)


def test_local_gpu_time_and_external_tokens_are_priced_on_one_scale() -> None:
    clock = FakeClock()
    m = _metrics(clock)  # 3.6 EUR per GPU-hour: 0.001 per GPU-second
    meter = GpuTimeMeter(clock=clock)
    local = m.track_request(tenant="acme", alias="tiny", route="local", gpu_meter=meter)
    local.dequeued()
    clock.advance(10.0)
    t_local = local.finish(status=200, prompt_tokens=100, completion_tokens=50)
    external = m.track_request(tenant="acme", alias="gpt-4o", route="external:openai-eu")
    t_ext = external.finish(status=200, external_cost=0.02)

    assert t_local.gpu_seconds == pytest.approx(10.0) and t_local.cost == pytest.approx(0.01)
    assert t_ext.cost == pytest.approx(0.02) and t_ext.gpu_seconds == 0.0
    assert _value(
        m, "bastion_cost_total", tenant="acme", model="tiny", route="local", source="local_gpu"
    ) == pytest.approx(0.01)
    assert _value(
        m,
        "bastion_cost_total",
        tenant="acme",
        model="gpt-4o",
        route="external:openai-eu",
        source="external_tokens",
    ) == pytest.approx(0.02)
    assert _value(
        m, "bastion_gpu_seconds_total", tenant="acme", model="tiny", route="local"
    ) == pytest.approx(10)
    assert _value(m, "bastion_cost_currency", currency="EUR") == 1
    assert _value(m, "bastion_gpu_hour_cost") == pytest.approx(3.6)


# --- scrape-time sources ---


def _reading(index: int, **kw: object) -> GpuReading:
    base: dict[str, object] = {
        "index": index,
        "name": "NVIDIA H100",
        "uuid": f"GPU-{index}",
        "gpu_utilization_pct": 87,
        "memory_utilization_pct": 40,
        "memory_used_bytes": 2**30,
        "memory_total_bytes": 80 * 2**30,
        "temperature_c": 85,
        "power_w": 650.5,
        "power_limit_w": 700.0,
        "sm_clock_mhz": 1410,
        "throttle_reasons": ("sw_thermal_slowdown",),
        "ecc_corrected_volatile": 2,
        "ecc_uncorrected_volatile": 0,
        "xid_events_total": 1,
        "last_xid": 79,
    }
    base.update(kw)
    return GpuReading(**base)  # type: ignore[arg-type]


def test_gpu_gauges_come_from_the_sampler_snapshot() -> None:
    m = _metrics()
    snapshots = [
        GpuSnapshot(
            available=True,
            devices=(_reading(0), _reading(1, power_w=None, throttle_reasons=None, xid_events_total=None)),
            sampled_at_s=1.0,
        )
    ]
    m.add_gpu_source(lambda: snapshots[-1])
    assert _value(m, "bastion_gpu_available") == 1
    assert _value(m, "bastion_gpu_info", gpu="0", name="NVIDIA H100", uuid="GPU-0") == 1
    assert _value(m, "bastion_gpu_utilization_ratio", gpu="0") == pytest.approx(0.87)
    assert _value(m, "bastion_gpu_memory_total_bytes", gpu="0") == 80 * 2**30
    assert _value(m, "bastion_gpu_temperature_celsius", gpu="0") == 85
    assert _value(m, "bastion_gpu_power_watts", gpu="0") == pytest.approx(650.5)
    assert _value(m, "bastion_gpu_power_limit_watts", gpu="1") == pytest.approx(700.0)
    assert _value(m, "bastion_gpu_sm_clock_hertz", gpu="0") == pytest.approx(1.41e9)
    assert _value(m, "bastion_gpu_throttle_reason", gpu="0", reason="sw_thermal_slowdown") == 1
    assert _value(m, "bastion_gpu_throttle_reason", gpu="0", reason="hw_slowdown") == 0
    assert _value(m, "bastion_gpu_ecc_errors_volatile", gpu="0", type="corrected") == 2
    assert _value(m, "bastion_gpu_xid_events_total", gpu="0") == 1
    assert _value(m, "bastion_gpu_last_xid", gpu="0") == 79
    # fields the device does not report are absent, not zero
    assert _value(m, "bastion_gpu_power_watts", gpu="1") is None
    assert _value(m, "bastion_gpu_throttle_reason", gpu="1", reason="hw_slowdown") is None
    assert _value(m, "bastion_gpu_xid_events_total", gpu="1") is None

    snapshots.append(GpuSnapshot(available=False, detail="NVML found no GPU"))
    assert _value(m, "bastion_gpu_available") == 0
    assert "bastion_gpu_temperature_celsius" not in m.render().decode()


def test_engine_breaker_and_audit_sources_are_read_at_scrape() -> None:
    m = _metrics()
    states = {"openai-eu": "half-open", "unconfigured": "open"}
    m.add_engine_source(
        lambda: {
            "tiny": EngineStats(
                waiting=3,
                running=5,
                kv_cache_usage=0.42,
                prefix_cache_queries=1000,
                prefix_cache_hits=900,
                preemptions=7,
            ),
            "fresh": EngineStats(),
        }
    )
    m.add_breaker_source(lambda: states)
    m.add_audit_source(
        lambda: _audit_stats(
            queue_depth=12, last_checkpoint_size=4096, records=5000, commits=40, wal_checkpoint_errors=1
        )
    )
    assert _value(m, "bastion_engine_requests_waiting", model="tiny") == 3
    assert _value(m, "bastion_engine_requests_running", model="tiny") == 5
    assert _value(m, "bastion_engine_kv_cache_usage_ratio", model="tiny") == pytest.approx(0.42)
    assert _value(m, "bastion_engine_prefix_cache_hit_ratio", model="tiny") == pytest.approx(0.9)
    assert _value(m, "bastion_engine_preemptions_total", model="tiny") == 7
    assert _value(m, "bastion_engine_prefix_cache_hits_total", model="tiny") == 900
    # an engine that has seen no prompt has no hit ratio rather than a ratio of 0
    assert _value(m, "bastion_engine_requests_waiting", model="other") == 0
    assert _value(m, "bastion_engine_prefix_cache_hit_ratio", model="other") is None
    assert _value(m, "bastion_breaker_state", provider="openai-eu") == 1
    assert _value(m, "bastion_breaker_state", provider="other") == 2
    assert _value(m, "bastion_audit_queue_depth") == 12
    assert _value(m, "bastion_audit_last_checkpoint_size") == 4096
    assert _value(m, "bastion_audit_records") == 5000
    assert _value(m, "bastion_audit_commits_total") == 40
    assert _value(m, "bastion_audit_wal_checkpoint_errors_total") == 1
    states["openai-eu"] = "open"
    assert _value(m, "bastion_breaker_state", provider="openai-eu") == 2


def test_breaker_states_are_spelled_as_the_router_spells_them() -> None:
    assert set(BREAKER_STATES) == {state.value for state in BreakerState}


def test_a_failing_source_drops_its_families_not_the_scrape(caplog: pytest.LogCaptureFixture) -> None:
    m = _metrics()

    def broken() -> AuditStats:
        raise RuntimeError("audit writer gone")

    m.add_audit_source(broken)
    m.add_breaker_source(lambda: {"openai-eu": "closed"})
    with caplog.at_level(logging.ERROR, logger="bastion.metrics"):
        text = m.render().decode()
    assert "bastion_audit_queue_depth" not in text
    assert _value(m, "bastion_breaker_state", provider="openai-eu") == 0
    assert _value(m, "bastion_metrics_source_errors_total", source="audit") is not None
    assert any(r.name == "bastion.metrics" for r in caplog.records)


# --- JSON request logs ---


def _capture_logger(name: str) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(name)
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, stream


def test_request_log_is_one_json_line_without_text() -> None:
    logger, stream = _capture_logger("test.bastion.requests")
    timings = RequestTimings(
        e2e_s=1.5, queue_wait_s=0.002, ttft_s=0.25, itl_mean_s=0.0125, gpu_seconds=0.7, cost=0.001
    )
    log_request(
        logger,
        request_id="chatcmpl-\u2028abc",
        tenant="acme",
        alias="tiny",
        served_model="tiny-local",
        route="local",
        status=200,
        timings=timings,
        endpoint="/v1/chat/completions",
        stream=True,
        prompt_tokens=12,
        completion_tokens=30,
    )
    logger.info(
        "free text",
        extra={
            "fields": {"prompt": "secret prompt", "completion": "secret", "n": 1},
            "messages": ["secret"],
            "k": 2,
        },
    )
    lines = stream.getvalue().split("\n")
    assert lines[-1] == "" and len(lines) == 3  # two records, one line each despite U+2028
    record = json.loads(lines[0])
    assert record["msg"] == "request" and record["level"] == "INFO"
    assert record["request_id"] == "chatcmpl-\u2028abc"
    assert (record["tenant"], record["model"], record["route"], record["status"]) == (
        "acme",
        "tiny",
        "local",
        200,
    )
    assert (record["ttft_ms"], record["e2e_ms"], record["queue_wait_ms"]) == (250.0, 1500.0, 2.0)
    assert record["itl_mean_ms"] == 12.5 and record["completion_tokens"] == 30
    assert record["served_model"] == "tiny-local"  # "model" is the alias the client asked for
    other = json.loads(lines[1])
    assert other["n"] == 1 and other["k"] == 2
    assert "prompt" not in other and "completion" not in other and "messages" not in other
    assert "secret" not in stream.getvalue()


def test_server_errors_log_at_warning() -> None:
    logger, stream = _capture_logger("test.bastion.requests5xx")
    timings = RequestTimings(
        e2e_s=0.1, queue_wait_s=None, ttft_s=None, itl_mean_s=None, gpu_seconds=0.0, cost=0.0
    )
    route = "external:openai-eu"
    log_request(
        logger, request_id="r1", tenant="acme", alias="m", route=route, status=502, timings=timings,
        code="upstream_error",
    )  # fmt: skip
    record = json.loads(stream.getvalue())
    assert record["level"] == "WARNING" and record["code"] == "upstream_error" and record["ttft_ms"] is None


# --- the Grafana dashboard ---


def test_every_metric_the_dashboard_queries_is_exported() -> None:
    import re
    from pathlib import Path

    clock = FakeClock()
    m = _metrics(clock)
    timer = m.track_request(tenant="acme", alias="tiny", route="local", gpu_meter=GpuTimeMeter(clock=clock))
    timer.dequeued()
    clock.advance(1.0)
    timer.tokens(1)
    clock.advance(1.0)
    timer.tokens(2)
    timer.finish(status=200, prompt_tokens=3, external_cost=0.5)
    m.observe_canary(model="tiny", provider="local", match_ratio=1.0, mismatches=0)
    m.observe_feedback(alias="tiny", rating=1)
    m.source_errors.labels("audit")
    m.add_gpu_source(lambda: GpuSnapshot(available=True, devices=(_reading(0),), sampled_at_s=1.0))
    m.add_engine_source(lambda: {"tiny": EngineStats(prefix_cache_queries=10, prefix_cache_hits=5)})
    m.add_breaker_source(lambda: {"openai-eu": "closed"})
    m.add_audit_source(lambda: _audit_stats(queue_depth=0, last_checkpoint_size=10))
    exported = set(_series(m))

    dashboard = json.loads(
        (Path(__file__).resolve().parents[2] / "deploy" / "grafana-bastion.json").read_text()
    )
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [
        v["query"]["query"] for v in dashboard["templating"]["list"] if isinstance(v.get("query"), dict)
    ]
    queried = {name for e in exprs for name in re.findall(r"\bbastion_[a-z_]+", e)}
    assert len(queried) > 30
    assert queried - exported == set()
