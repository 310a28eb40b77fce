"""The node's Prometheus metrics, on a registry of its own (one per app, never the global one).

Request metrics (counts, tokens, cost, latency histograms) are observed by the
request path through ``Metrics`` and its per-request ``RequestTimer``. Everything
that other components know (engine queue, GPU readings, breaker states, the
audit queue) is read at scrape time from callables they hand in, so this module
imports neither the router nor the audit log and the request path never waits
on a scrape.

Label values are bounded: tenant, model, route and provider come only from the
configured names (anything else is ``other``), status is an HTTP status code.
On request metrics (and ``bastion_feedback``) the ``model`` label holds the
*alias*, what the client asked for (the parameters say ``alias=``); on engine
metrics and canaries it is the local model that serves.
No request id, user string or prompt text ever becomes a label or a value.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from serving.engine_stats import EngineStats
from serving.gpu import THROTTLE_REASONS, GpuSnapshot

__all__ = [
    "BREAKER_STATES",
    "E2E_BUCKETS_S",
    "ITL_BUCKETS_S",
    "OTHER",
    "QUEUE_BUCKETS_S",
    "TTFT_BUCKETS_S",
    "AuditCounters",
    "GpuTimeMeter",
    "Metrics",
    "RequestTimer",
    "RequestTimings",
]

_log = logging.getLogger("bastion.metrics")

#: the label value of every name that is not configured
OTHER = "other"
#: the API endpoints a request record names (``bastion_endpoint_requests``' ``endpoint`` label)
ENDPOINTS = ("chat", "completions", "responses", "embeddings", "feedback")
#: API features counted by route (``bastion_feature_requests_total``)
FEATURES = ("tools", "tool_calls", "json_object", "json_schema", "logprobs", "choices")

# Bucket bounds for LLM latencies. Time to first token spans a cached short prompt
# (ms) to a long prefill behind a queue (a minute); inter-token latency is ms-scale
# decode steps with a tail for preemption; end-to-end runs to ten-minute generations.
TTFT_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0,
                  5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0)  # fmt: skip
ITL_BUCKETS_S = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1,
                 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)  # fmt: skip
E2E_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
                 90.0, 120.0, 180.0, 300.0, 600.0)  # fmt: skip
QUEUE_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

#: breaker states (``router.breaker.BreakerState`` values, as ``/healthz`` and ``bastion status`` spell
#: them) and the gauge value each is exported as
BREAKER_STATES: Mapping[str, int] = {"closed": 0, "half-open": 1, "open": 2}


class AuditCounters(Protocol):
    """What the metrics read of ``audit.AuditStats`` (``AuditLog.stats()`` satisfies it as it is)."""

    @property
    def queue_depth(self) -> int: ...

    #: tree size of the last signed checkpoint (``None``: none written yet)
    @property
    def last_checkpoint_size(self) -> int | None: ...

    #: records in the log, transactions that committed them, failed WAL checkpoints
    @property
    def records(self) -> int: ...

    @property
    def commits(self) -> int: ...

    @property
    def wal_checkpoint_errors(self) -> int: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestTimings:
    """What a finished request measured, in seconds (``None``: the request never got there)."""

    e2e_s: float
    queue_wait_s: float | None
    ttft_s: float | None
    #: mean gap between output tokens after the first
    itl_mean_s: float | None
    gpu_seconds: float
    cost: float


class GpuTimeMeter:
    """GPU-seconds per request on one engine: its wall time shared among the requests in flight.

    Batched requests run together, so a request's own wall time overstates its GPU
    use; each interval is split equally among the requests active in it (times the
    engine's GPU count). Idle time is charged to no one.
    """

    def __init__(self, *, gpus: int = 1, clock: Callable[[], float] = time.monotonic) -> None:
        if gpus < 1:
            raise ValueError(f"gpus must be >= 1, got {gpus}")
        self._gpus = gpus
        self._clock = clock
        self._active = 0
        # integral over time of gpus / active: what one request accrued since the start
        self._share = 0.0
        self._last = clock()

    @property
    def gpus(self) -> int:
        return self._gpus

    def _advance(self) -> float:
        now = self._clock()
        if self._active:
            self._share += (now - self._last) * self._gpus / self._active
        self._last = now
        return self._share

    def start(self) -> float:
        """A request starts on the engine; keep the mark for ``stop``."""
        mark = self._advance()
        self._active += 1
        return mark

    def stop(self, mark: float) -> float:
        """The request left the engine; its GPU-seconds."""
        share = self._advance()
        self._active = max(0, self._active - 1)
        return share - mark


class _Bound:
    """Maps a label value onto the configured names; anything else is ``other``."""

    def __init__(self, names: Iterable[str]) -> None:
        self._names = frozenset(names)

    def __call__(self, value: str) -> str:
        return value if value in self._names else OTHER


def _status_label(status: int | str) -> str:
    code = int(status) if isinstance(status, int) or status.isdigit() else 0
    return str(code) if 100 <= code <= 599 else OTHER


class RequestTimer:
    """One request's clock: queue wait, first token, token gaps and the end, observed as they happen.

    Create it with ``Metrics.track_request`` when the request is admitted; call
    ``dequeued()`` when it leaves the queue (sent to the engine or upstream),
    ``tokens(total, output=...)`` on every delta with the running completion-token
    total, and ``finish(...)`` once. The histogram children are resolved up front,
    so each call costs a clock read and a bucket increment.

    Latency is timed on the deltas that carry output (text or tool calls): the
    first marks the time to first token, each later one a gap, spread over the
    tokens it carries (at least one: an external API reports no counts until its
    usage arrives at the end). With ``exact_counts`` (a local engine, which
    reports every token as it is generated) a delta whose count rose without
    text (end of sequence, a partial character) is timed too; otherwise a delta
    without output only adds to the count, so an external API's final usage
    never reads as a burst of tokens at the end.
    """

    def __init__(
        self,
        metrics: Metrics,
        *,
        tenant: str,
        alias: str,
        route: str,
        gpu_meter: GpuTimeMeter | None,
        exact_counts: bool = True,
    ) -> None:
        self._metrics = metrics
        #: the provider reports every token as generated (see the class docstring); settable, as a
        #: failover may end on another kind of provider than the first attempt
        self.exact_counts = exact_counts
        self.tenant, self.alias, self.route = metrics.bound_labels(tenant=tenant, alias=alias, route=route)
        self._clock = metrics.clock
        self._ttft = metrics.ttft.labels(self.alias, self.route)
        self._itl = metrics.itl.labels(self.alias, self.route)
        self._queue = metrics.queue_wait.labels(self.alias, self.route)
        self._gpu_meter = gpu_meter
        self._gpu_mark: float | None = None
        self.started_s = self._clock()
        self._dequeued_s: float | None = None
        self._first_token_s: float | None = None
        self._last_token_s: float | None = None
        self._tokens = 0
        self._gaps = 0
        self._gap_sum = 0.0
        self._timings: RequestTimings | None = None

    def dequeued(self) -> None:
        if self._dequeued_s is not None:
            return
        self._dequeued_s = self._clock()
        self._queue.observe(self._dequeued_s - self.started_s)
        if self._gpu_meter is not None:
            self._gpu_mark = self._gpu_meter.start()

    def tokens(self, completion_tokens: int, *, output: bool = True) -> None:
        """A delta arrived; ``completion_tokens`` is the running total so far (0: not reported),
        ``output`` whether it carried text or tool calls."""
        new = completion_tokens - self._tokens
        if not output and (new <= 0 or not self.exact_counts):
            return  # counted at finish
        new = max(1, new)
        now = self._clock()
        if self._first_token_s is None:
            self._first_token_s = now
            self._ttft.observe(now - self.started_s)
            new -= 1
        elif self._last_token_s is not None and new:
            # a delta carrying several tokens spreads its gap over them, as a decode step would
            gap = (now - self._last_token_s) / new
            for _ in range(new):
                self._itl.observe(gap)
            self._gaps += new
            self._gap_sum += gap * new
        self._last_token_s = now
        self._tokens = max(completion_tokens, self._tokens + 1)

    def finish(
        self,
        *,
        status: int,
        prompt_tokens: int = 0,
        completion_tokens: int | None = None,
        external_cost: float = 0.0,
    ) -> RequestTimings:
        """Count the request; idempotent (a second call returns the first result)."""
        if self._timings is not None:
            return self._timings
        if completion_tokens:
            self._tokens = completion_tokens  # the provider's final usage is the count
        end = self._clock()
        gpu_seconds = 0.0
        if self._gpu_meter is not None and self._gpu_mark is not None:
            gpu_seconds = self._gpu_meter.stop(self._gpu_mark)
        e2e = end - self.started_s
        cost = self._metrics.observe_request(
            tenant=self.tenant,
            alias=self.alias,
            route=self.route,
            status=status,
            e2e_s=e2e,
            prompt_tokens=prompt_tokens,
            completion_tokens=self._tokens,
            external_cost=external_cost,
            gpu_seconds=gpu_seconds,
        )
        self._timings = RequestTimings(
            e2e_s=e2e,
            queue_wait_s=None if self._dequeued_s is None else self._dequeued_s - self.started_s,
            ttft_s=None if self._first_token_s is None else self._first_token_s - self.started_s,
            itl_mean_s=self._gap_sum / self._gaps if self._gaps else None,
            gpu_seconds=gpu_seconds,
            cost=cost,
        )
        return self._timings


class Metrics:
    """The node's metrics on its own ``CollectorRegistry``; ``render()`` is the ``/metrics`` body."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(
        self,
        *,
        tenants: Iterable[str] = (),
        models: Iterable[str] = (),
        providers: Iterable[str] = (),
        routes: Iterable[str] = (),
        currency: str = "EUR",
        gpu_hour_cost: float = 0.0,
        audit_enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = CollectorRegistry()
        self.clock = clock
        providers = tuple(providers)
        self._tenant = _Bound(tenants)
        self._model = _Bound(models)
        # the router's route names: "local", "external:<provider>", and "none" (rejected before routing)
        self._route = _Bound({"local", "none", *(f"external:{p}" for p in providers), *routes})
        self._provider = _Bound({"local", *providers})
        self._gpu_second_cost = gpu_hour_cost / 3600.0
        r = self.registry
        req = ("tenant", "model", "route")
        self.requests = Counter(
            "bastion_requests", "Requests finished, by status", [*req, "status"], registry=r
        )
        self.tokens_total = Counter(
            "bastion_tokens", "Tokens in (prompt) and out", [*req, "direction"], registry=r
        )
        self.cost = Counter(
            "bastion_cost",
            f"Cost in {currency}: local GPU time at the GPU-hour price, external API token prices",
            [*req, "source"],
            registry=r,
        )
        self._endpoint = _Bound(ENDPOINTS)
        self.endpoint_requests = Counter(
            "bastion_endpoint_requests",
            "Requests finished, by API endpoint (chat, completions, responses, embeddings, feedback), "
            "route and status",
            ["endpoint", "route", "status"],
            registry=r,
        )
        # reasons are the router's own fixed words and ``unsupported:<field>`` of the contract's fields
        self.route_skips = Counter(
            "bastion_route_skips",
            "Candidates left out of a request's plan, by route and reason (e.g. unsupported:tools)",
            ["route", "reason"],
            registry=r,
        )
        self._feature = _Bound(FEATURES)
        self.feature_requests = Counter(
            "bastion_feature_requests",
            "Finished requests that used an API feature, by feature and route (tools: offered tools; "
            "tool_calls: answered with tool calls; json_object, json_schema: structured outputs; "
            "logprobs; choices: more than one choice)",
            ["feature", "route"],
            registry=r,
        )
        self.gpu_seconds = Counter(
            "bastion_gpu_seconds", "GPU-seconds used by local requests", req, registry=r
        )
        mr = ("model", "route")
        self.ttft = Histogram(
            "bastion_time_to_first_token_seconds", "TTFT", mr, buckets=TTFT_BUCKETS_S, registry=r
        )
        self.itl = Histogram(
            "bastion_inter_token_latency_seconds", "Gap between tokens", mr, buckets=ITL_BUCKETS_S, registry=r
        )
        self.e2e = Histogram(
            "bastion_request_duration_seconds", "End-to-end latency", mr, buckets=E2E_BUCKETS_S, registry=r
        )
        self.queue_wait = Histogram(
            "bastion_queue_wait_seconds", "Admission to dispatch", mr, buckets=QUEUE_BUCKETS_S, registry=r
        )
        self.canary_ratio = Gauge(
            "bastion_canary_match_ratio", "Share of canaries matching their recording", ["model", "provider"],
            registry=r,
        )  # fmt: skip
        self.canary_mismatches = Gauge(
            "bastion_canary_mismatches",
            "Canaries that differed in the last run",
            ["model", "provider"],
            registry=r,
        )
        self.feedback = Counter("bastion_feedback", "Feedback received", ["model", "rating"], registry=r)
        self.source_errors = Counter(
            "bastion_metrics_source_errors", "Stats providers that failed at scrape", ["source"], registry=r
        )
        Gauge("bastion_gpu_hour_cost", "Configured price of a GPU-hour", registry=r).set(gpu_hour_cost)
        audit_doc = "1 when requests are recorded; 0 with [audit] enabled = false"
        Gauge("bastion_audit_enabled", audit_doc, registry=r).set(1 if audit_enabled else 0)
        Gauge("bastion_cost_currency", "Currency of every cost metric", ["currency"], registry=r).labels(
            currency
        ).set(1)

    # --- the request path ---

    def relabel(self, *, tenants: Iterable[str], models: Iterable[str]) -> None:
        """A reload's tenants and model aliases become label values (series already made stay)."""
        self._tenant = _Bound(tenants)
        self._model = _Bound(models)

    def bound_labels(self, *, tenant: str, alias: str, route: str) -> tuple[str, str, str]:
        return self._tenant(tenant), self._model(alias), self._route(route)

    def track_request(
        self,
        *,
        tenant: str,
        alias: str,
        route: str,
        gpu_meter: GpuTimeMeter | None = None,
        exact_counts: bool = True,
    ) -> RequestTimer:
        """Start timing a request at admission. Pass the engine's ``GpuTimeMeter`` on the local path,
        and ``exact_counts=False`` where token counts are only known at the end (external APIs)."""
        return RequestTimer(
            self, tenant=tenant, alias=alias, route=route, gpu_meter=gpu_meter, exact_counts=exact_counts
        )

    def observe_queue_wait(self, *, alias: str, route: str, seconds: float) -> None:
        self.queue_wait.labels(self._model(alias), self._route(route)).observe(seconds)

    def observe_first_token(self, *, alias: str, route: str, seconds: float) -> None:
        self.ttft.labels(self._model(alias), self._route(route)).observe(seconds)

    def observe_inter_token(self, *, alias: str, route: str, seconds: float) -> None:
        self.itl.labels(self._model(alias), self._route(route)).observe(seconds)

    def observe_request(
        self,
        *,
        tenant: str,
        alias: str,
        route: str,
        status: int | str,
        e2e_s: float | None,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        ttft_s: float | None = None,
        external_cost: float = 0.0,
        gpu_seconds: float = 0.0,
    ) -> float:
        """Count one finished request; returns its cost in the configured currency.

        ``status`` is the HTTP status it ended with (a mid-stream error: that error's
        status). ``ttft_s`` is observed here when given; ``RequestTimer`` observes it
        as the first token arrives and passes ``None``. ``e2e_s`` ``None`` leaves the
        duration histogram alone (a request refused before it started).
        """
        tenant, model, route = self.bound_labels(tenant=tenant, alias=alias, route=route)
        self.requests.labels(tenant, model, route, _status_label(status)).inc()
        if e2e_s is not None:
            self.e2e.labels(model, route).observe(e2e_s)
        if ttft_s is not None:
            self.ttft.labels(model, route).observe(ttft_s)
        if prompt_tokens > 0:
            self.tokens_total.labels(tenant, model, route, "in").inc(prompt_tokens)
        if completion_tokens > 0:
            self.tokens_total.labels(tenant, model, route, "out").inc(completion_tokens)
        cost = 0.0
        if gpu_seconds > 0:
            self.gpu_seconds.labels(tenant, model, route).inc(gpu_seconds)
            gpu_cost = gpu_seconds * self._gpu_second_cost
            self.cost.labels(tenant, model, route, "local_gpu").inc(gpu_cost)
            cost += gpu_cost
        if external_cost > 0:
            self.cost.labels(tenant, model, route, "external_tokens").inc(external_cost)
            cost += external_cost
        return cost

    def observe_skips(self, skipped: Iterable[tuple[str, str]]) -> None:
        """Count the candidates one request's plan left out, each with its reason."""
        for route, reason in skipped:
            self.route_skips.labels(self._route(route), reason).inc()

    def observe_features(self, features: Iterable[str], *, route: str) -> None:
        """Count one finished request under each API feature it used."""
        for feature in features:
            self.feature_requests.labels(self._feature(feature), self._route(route)).inc()

    def observe_endpoint(self, *, endpoint: str, route: str, status: int | str) -> None:
        """Count one finished request by its endpoint (``observe_request`` counts it by tenant and model)."""
        self.endpoint_requests.labels(
            self._endpoint(endpoint), self._route(route), _status_label(status)
        ).inc()

    def observe_canary(
        self, *, model: str, provider: str, match_ratio: float | None, mismatches: int
    ) -> None:
        labels = (self._model(model), self._provider(provider))
        if match_ratio is not None:
            self.canary_ratio.labels(*labels).set(match_ratio)
        self.canary_mismatches.labels(*labels).set(mismatches)

    def observe_feedback(self, *, alias: str, rating: int) -> None:
        self.feedback.labels(self._model(alias), str(rating) if -5 <= rating <= 5 else OTHER).inc()

    # --- scrape-time sources ---

    def register_collector(self, collector: Collector) -> None:
        self.registry.register(collector)

    def add_gpu_source(self, snapshot: Callable[[], GpuSnapshot]) -> None:
        """GPU gauges from the sampler's latest snapshot (``GpuSampler.snapshot``)."""
        self.register_collector(_Source("gpu", lambda: _gpu_families(snapshot()), self.source_errors))

    def add_engine_source(self, stats: Callable[[], Mapping[str, EngineStats]]) -> None:
        """Per-model engine scheduler state (``LocalEngine.stats()``), keyed by model name."""
        self.register_collector(
            _Source("engine", lambda: _engine_families(stats(), self._model), self.source_errors)
        )

    def add_breaker_source(self, states: Callable[[], Mapping[str, str]]) -> None:
        """Breaker state per provider: ``closed``, ``half-open`` or ``open``."""
        self.register_collector(
            _Source("breakers", lambda: _breaker_families(states(), self._provider), self.source_errors)
        )

    def add_audit_source(self, stats: Callable[[], AuditCounters]) -> None:
        self.register_collector(_Source("audit", lambda: _audit_families(stats()), self.source_errors))

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class _Source:
    """A collector over a stats callable; a failing callable drops its families, not the scrape."""

    def __init__(self, name: str, families: Callable[[], list[Metric]], errors: Counter) -> None:
        self._name = name
        self._families = families
        self._errors = errors

    def collect(self) -> Iterator[Metric]:
        try:
            families = self._families()
        except Exception:
            self._errors.labels(self._name).inc()
            _log.exception("metrics source %s failed", self._name)
            return
        yield from families


def _gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


def _gpu_families(snap: GpuSnapshot) -> list[Metric]:
    available = _gauge("bastion_gpu_available", "1 when NVML reads at least one GPU")
    available.add_metric([], 1.0 if snap.available else 0.0)
    families: list[Metric] = [available]
    if not snap.available:
        return families
    g = ("gpu",)
    info = _gauge("bastion_gpu_info", "Device name and UUID", ("gpu", "name", "uuid"))
    fields: list[tuple[GaugeMetricFamily, str, float]] = [
        (
            _gauge("bastion_gpu_utilization_ratio", "GPU busy share of the last sample period", g),
            "gpu_util",
            0.01,
        ),
        (_gauge("bastion_gpu_memory_utilization_ratio", "Memory controller busy share", g), "mem_util", 0.01),
        (_gauge("bastion_gpu_memory_used_bytes", "Device memory used", g), "mem_used", 1.0),
        (_gauge("bastion_gpu_memory_total_bytes", "Device memory total", g), "mem_total", 1.0),
        (_gauge("bastion_gpu_temperature_celsius", "GPU core temperature", g), "temp", 1.0),
        (_gauge("bastion_gpu_power_watts", "Power draw", g), "power", 1.0),
        (_gauge("bastion_gpu_power_limit_watts", "Enforced power limit", g), "power_limit", 1.0),
        (_gauge("bastion_gpu_sm_clock_hertz", "SM clock", g), "sm_clock", 1e6),
    ]
    throttle = _gauge(
        "bastion_gpu_throttle_reason", "1 while a clocks-event reason is active", ("gpu", "reason")
    )
    ecc = _gauge("bastion_gpu_ecc_errors_volatile", "ECC errors since the driver loaded", ("gpu", "type"))
    xid = CounterMetricFamily(
        "bastion_gpu_xid_events", "XID critical errors seen by the sampler", labels=["gpu"]
    )
    last_xid = _gauge("bastion_gpu_last_xid", "Code of the last XID error seen", g)
    for d in snap.devices:
        i = str(d.index)
        info.add_metric([i, d.name, d.uuid], 1.0)
        values = {
            "gpu_util": d.gpu_utilization_pct,
            "mem_util": d.memory_utilization_pct,
            "mem_used": d.memory_used_bytes,
            "mem_total": d.memory_total_bytes,
            "temp": d.temperature_c,
            "power": d.power_w,
            "power_limit": d.power_limit_w,
            "sm_clock": d.sm_clock_mhz,
        }
        for family, key, scale in fields:
            value = values[key]
            if value is not None:
                family.add_metric([i], float(value) * scale)
        if d.throttle_reasons is not None:
            for _, reason in (*THROTTLE_REASONS, (0, OTHER)):
                throttle.add_metric([i, reason], 1.0 if reason in d.throttle_reasons else 0.0)
        for kind, count in (
            ("corrected", d.ecc_corrected_volatile),
            ("uncorrected", d.ecc_uncorrected_volatile),
        ):
            if count is not None:
                ecc.add_metric([i, kind], float(count))
        if d.xid_events_total is not None:
            xid.add_metric([i], float(d.xid_events_total))
        if d.last_xid is not None:
            last_xid.add_metric([i], float(d.last_xid))
    return [*families, info, *(f for f, _, _ in fields), throttle, ecc, xid, last_xid]


def _engine_families(stats: Mapping[str, EngineStats], bound: _Bound) -> list[Metric]:
    m = ("model",)
    waiting = _gauge("bastion_engine_requests_waiting", "Requests waiting in the engine", m)
    running = _gauge("bastion_engine_requests_running", "Requests running in the engine", m)
    kv = _gauge("bastion_engine_kv_cache_usage_ratio", "KV cache in use", m)
    hit = _gauge("bastion_engine_prefix_cache_hit_ratio", "Prefix cache hits over queries since start", m)
    # counters too, so a dashboard can show the hit rate over a window rather than since start
    queries = CounterMetricFamily(
        "bastion_engine_prefix_cache_queries", "Prompt tokens looked up", labels=["model"]
    )
    hits = CounterMetricFamily(
        "bastion_engine_prefix_cache_hits", "Prompt tokens found cached", labels=["model"]
    )
    preempt = CounterMetricFamily(
        "bastion_engine_preemptions", "Requests preempted by the engine", labels=["model"]
    )
    seen: set[str] = set()
    for model, s in stats.items():
        label = [bound(model)]
        if label[0] in seen:
            continue  # one series per label; engines are configured models, so this is only "other"
        seen.add(label[0])
        waiting.add_metric(label, float(s.waiting))
        running.add_metric(label, float(s.running))
        kv.add_metric(label, s.kv_cache_usage)
        if s.prefix_cache_queries:
            hit.add_metric(label, s.prefix_cache_hit_rate)
        queries.add_metric(label, float(s.prefix_cache_queries))
        hits.add_metric(label, float(s.prefix_cache_hits))
        preempt.add_metric(label, float(s.preemptions))
    return [waiting, running, kv, hit, queries, hits, preempt]


def _breaker_families(states: Mapping[str, str], bound: _Bound) -> list[Metric]:
    family = _gauge(
        "bastion_breaker_state", "Circuit breaker: 0 closed, 1 half-open, 2 open, -1 unknown", ("provider",)
    )
    worst: dict[str, int] = {}
    for provider, state in states.items():
        label, value = bound(provider), BREAKER_STATES.get(state, -1)
        # unconfigured providers share the "other" series: it shows the worst of them
        worst[label] = max(value, worst.get(label, value))
    for label, value in worst.items():
        family.add_metric([label], float(value))
    return [family]


def _audit_families(stats: AuditCounters) -> list[Metric]:
    depth = _gauge("bastion_audit_queue_depth", "Audit events waiting for the writer")
    depth.add_metric([], float(stats.queue_depth))
    records = _gauge("bastion_audit_records", "Records in the audit log")
    records.add_metric([], float(stats.records))
    commits = CounterMetricFamily(
        "bastion_audit_commits", "Audit log transactions committed (one fsync each) since start"
    )
    commits.add_metric([], float(stats.commits))
    wal_errors = CounterMetricFamily(
        "bastion_audit_wal_checkpoint_errors", "Failed background WAL checkpoints since start"
    )
    wal_errors.add_metric([], float(stats.wal_checkpoint_errors))
    families: list[Metric] = [depth, records, commits, wal_errors]
    if stats.last_checkpoint_size is not None:
        size = _gauge(
            "bastion_audit_last_checkpoint_size", "Tree size (records) of the last signed checkpoint"
        )
        size.add_metric([], float(stats.last_checkpoint_size))
        families.append(size)
    return families
