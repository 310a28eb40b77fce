"""``bastion status``: a one-screen view of a running node, from its HTTP endpoints only.

It reads ``/healthz``, ``/readyz`` and ``/metrics`` (parsed with
``prometheus_client.parser``), so it shows exactly what a scraper sees and
needs no access to the node's files. Latency percentiles are estimated from
the histogram buckets (linear inside a bucket, as PromQL's
``histogram_quantile``), over everything since the node started.

Exit codes: 0 ready, 1 unreachable or not ready, 2 the metrics endpoint
refused the token.
"""

from __future__ import annotations

import math
import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO

import httpx
from prometheus_client.parser import text_string_to_metric_families

from .metrics import BREAKER_STATES

__all__ = ["NodeSnapshot", "fetch_snapshot", "histogram_quantile", "render_status", "status_command"]

_LATENCY = (
    ("TTFT", "bastion_time_to_first_token_seconds"),
    ("ITL", "bastion_inter_token_latency_seconds"),
    ("E2E", "bastion_request_duration_seconds"),
    ("queue", "bastion_queue_wait_seconds"),
)
_BREAKER = {float(value): state for state, value in BREAKER_STATES.items()}


class StatusError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class NodeSnapshot:
    url: str
    alive: bool
    ready: bool
    engines: dict[str, dict[str, Any]]
    #: metric family name -> its samples as (sample name, labels, value)
    samples: dict[str, list[tuple[str, dict[str, str], float]]] = field(default_factory=dict)

    def values(self, name: str) -> list[tuple[dict[str, str], float]]:
        """Samples named exactly ``name`` (a family's ``_bucket``/``_count`` included)."""
        out: list[tuple[dict[str, str], float]] = []
        for family in self.samples.values():
            out.extend((labels, value) for sample, labels, value in family if sample == name)
        return out

    def value(self, name: str, **labels: str) -> float | None:
        for got, value in self.values(name):
            if all(got.get(k) == v for k, v in labels.items()):
                return value
        return None


def fetch_snapshot(url: str, *, token: str | None, timeout_s: float = 5.0) -> NodeSnapshot:
    """Read the node's endpoints; raises ``StatusError`` with the exit code to use."""
    base = url.rstrip("/")
    headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        with httpx.Client(base_url=base, timeout=timeout_s) as client:
            health = client.get("/healthz")
            ready = client.get("/readyz")
            metrics = client.get("/metrics", headers=headers)
    except httpx.HTTPError as exc:
        raise StatusError(
            f"cannot reach the node at {base}: {type(exc).__name__}: {exc or 'no answer'}", 1
        ) from exc
    if metrics.status_code == 401:
        raise StatusError(f"{base}/metrics refused the request (401): pass its token with --token-env VAR", 2)
    if health.status_code != 200 or metrics.status_code != 200:
        raise StatusError(
            f"{base} does not answer like a Bastion node (/healthz {health.status_code}, "
            f"/metrics {metrics.status_code})",
            1,
        )
    try:
        ready_body = ready.json()
    except ValueError:
        ready_body = {}
    engines = ready_body.get("engines", {}) if isinstance(ready_body, dict) else {}
    snapshot = NodeSnapshot(url=base, alive=True, ready=ready.status_code == 200, engines=dict(engines))
    for family in text_string_to_metric_families(metrics.text):
        snapshot.samples[family.name] = [(s.name, dict(s.labels), float(s.value)) for s in family.samples]
    return snapshot


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """The ``q`` quantile from cumulative ``(upper bound, count)`` buckets; ``None`` when empty.

    Within a bucket the value is interpolated linearly; past the last finite
    bound the answer is that bound (the estimate cannot see further).
    """
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    total = ordered[-1][1]
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def _latency(
    snapshot: NodeSnapshot, metric: str
) -> dict[tuple[str, str], tuple[int, float | None, float | None]]:
    """(model, route) -> (count, p50, p99)."""
    buckets: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for labels, value in snapshot.values(metric + "_bucket"):
        key = (labels.get("model", ""), labels.get("route", ""))
        buckets[key].append((float(labels["le"]), value))
    out: dict[tuple[str, str], tuple[int, float | None, float | None]] = {}
    for key, series in buckets.items():
        count = int(max(v for _, v in series))
        if count:
            out[key] = (count, histogram_quantile(0.5, series), histogram_quantile(0.99, series))
    return out


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f}ms" if seconds < 10 else f"{seconds:.1f}s"


def _bytes(n: float) -> str:
    return f"{n / 2**30:.1f}GiB"


def _lines_models(s: NodeSnapshot) -> list[str]:
    lines = ["Models"]
    if not s.engines:
        lines.append("  no local engines")
    for name, e in sorted(s.engines.items()):
        health = "healthy" if e.get("healthy") else f"UNHEALTHY ({e.get('detail') or 'no detail'})"
        revision = e.get("revision") or "(revision not reported)"
        lines.append(f"  {name}  rev {revision}  engine {health}")
        waiting = s.value("bastion_engine_requests_waiting", model=name)
        running = s.value("bastion_engine_requests_running", model=name)
        kv = s.value("bastion_engine_kv_cache_usage_ratio", model=name)
        hit = s.value("bastion_engine_prefix_cache_hit_ratio", model=name)
        preempt = s.value("bastion_engine_preemptions_total", model=name)
        parts = [
            f"waiting {int(waiting if waiting is not None else e.get('waiting', 0))}",
            f"running {int(running if running is not None else e.get('running', 0))}",
        ]
        if kv is not None:
            parts.append(f"KV cache {kv:.1%}")
        if hit is not None:
            parts.append(f"prefix hits {hit:.1%}")
        if preempt:
            parts.append(f"preemptions {int(preempt)}")
        lines.append("    queue: " + ", ".join(parts))
    return lines


def _lines_latency(s: NodeSnapshot) -> list[str]:
    per_metric = {label: _latency(s, metric) for label, metric in _LATENCY}
    keys = sorted({k for table in per_metric.values() for k in table})
    lines = ["Latency since start (p50 / p99, estimated from histogram buckets)"]
    if not keys:
        return [*lines, "  no requests yet"]
    for model, route in keys:
        # requests: the end-to-end count (ITL counts tokens, not requests)
        count = per_metric["E2E"].get((model, route), (0, None, None))[0]
        cells = []
        for label, _ in _LATENCY:
            _, p50, p99 = per_metric[label].get((model, route), (0, None, None))
            cells.append(f"{label} {_ms(p50)}/{_ms(p99)}")
        lines.append(f"  {model} [{route}] n={count}  " + "  ".join(cells))
    return lines


def _lines_gpu(s: NodeSnapshot) -> list[str]:
    available = s.value("bastion_gpu_available")
    if not available:
        return ["GPU", "  none visible (no NVML or no device)"]
    lines = ["GPU"]
    names = {labels["gpu"]: labels.get("name", "") for labels, _ in s.values("bastion_gpu_info")}
    for gpu in sorted(names, key=lambda g: int(g) if g.isdigit() else 0):

        def v(metric: str, gpu: str = gpu) -> float | None:
            return s.value(metric, gpu=gpu)

        parts = [f"  gpu{gpu} {names[gpu]}"]
        if (util := v("bastion_gpu_utilization_ratio")) is not None:
            parts.append(f"util {util:.0%}")
        used, total = v("bastion_gpu_memory_used_bytes"), v("bastion_gpu_memory_total_bytes")
        if used is not None and total:
            parts.append(f"mem {_bytes(used)}/{_bytes(total)}")
        if (temp := v("bastion_gpu_temperature_celsius")) is not None:
            parts.append(f"{temp:.0f}C")
        power, limit = v("bastion_gpu_power_watts"), v("bastion_gpu_power_limit_watts")
        if power is not None:
            parts.append(f"{power:.0f}W" + (f"/{limit:.0f}W" if limit else ""))
        if (clock := v("bastion_gpu_sm_clock_hertz")) is not None:
            parts.append(f"SM {clock / 1e6:.0f}MHz")
        throttled = [
            labels["reason"]
            for labels, value in s.values("bastion_gpu_throttle_reason")
            if labels.get("gpu") == gpu and value
        ]
        parts.append("throttle: " + (",".join(sorted(throttled)) if throttled else "none"))
        xid = v("bastion_gpu_xid_events_total")
        if xid:
            parts.append(f"XID events {int(xid)}")
        lines.append("  ".join(parts))
    return lines


def _lines_breakers(s: NodeSnapshot) -> list[str]:
    states = sorted(
        (labels.get("provider", "?"), value) for labels, value in s.values("bastion_breaker_state")
    )
    if not states:
        return ["Breakers", "  none"]
    return ["Breakers", "  " + ", ".join(f"{p} {_BREAKER.get(v, 'unknown')}" for p, v in states)]


def _lines_audit(s: NodeSnapshot) -> list[str]:
    depth = s.value("bastion_audit_queue_depth")
    if depth is None:
        return ["Audit", "  not reported (audit log off?)"]
    size = s.value("bastion_audit_last_checkpoint_size")
    checkpoint = "none yet" if size is None else f"at {int(size)} records"
    return ["Audit", f"  queue depth {int(depth)}, last checkpoint {checkpoint}"]


def _lines_traffic(s: NodeSnapshot) -> list[str]:
    by_status: dict[str, float] = defaultdict(float)
    for labels, value in s.values("bastion_requests_total"):
        by_status[labels.get("status", "?")] += value
    if not by_status:
        return []
    return ["Requests", "  " + ", ".join(f"{code}: {int(n)}" for code, n in sorted(by_status.items()))]


def render_status(s: NodeSnapshot) -> str:
    head = f"Bastion node {s.url}: alive, {'ready' if s.ready else 'NOT READY'}"
    sections = [
        [head],
        _lines_models(s),
        _lines_traffic(s),
        _lines_latency(s),
        _lines_gpu(s),
        _lines_breakers(s),
        _lines_audit(s),
    ]
    return "\n".join(line for section in sections for line in section) + "\n"


def status_command(
    url: str, *, token: str | None, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Print the node's status; the exit code says whether it is ready (see the module doc)."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        snapshot = fetch_snapshot(url, token=token)
    except StatusError as exc:
        print(f"bastion status: {exc}", file=err)
        return exc.code
    out.write(render_status(snapshot))
    return 0 if snapshot.ready else 1
