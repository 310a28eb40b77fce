"""Scrape a Prometheus ``/metrics`` endpoint during a run (GPU utilisation and memory)."""

from __future__ import annotations

import asyncio
import math

import httpx
import msgspec

from bench.config import PrometheusConfig

__all__ = ["PromSummary", "PrometheusScraper", "parse_gauge"]


class PromSummary(msgspec.Struct, kw_only=True):
    """What the scrapes saw; utilisation averaged over devices, memory summed over devices."""

    url: str
    samples: int
    failures: int
    utilization_metric: str
    memory_metric: str
    utilization_mean: float | None = None
    utilization_max: float | None = None
    memory_bytes_mean: float | None = None
    memory_bytes_max: float | None = None


def parse_gauge(text: str, name: str) -> list[float]:
    """Values of every series of metric ``name`` in Prometheus text format."""
    out: list[float] = []
    for line in text.split("\n"):
        if not line.startswith(name) or line.startswith("#"):
            continue
        rest = line[len(name) :]
        if rest and rest[0] not in "{ \t":
            continue  # a longer metric name sharing the prefix
        if rest.startswith("{"):
            rest = rest[rest.find("}") + 1 :]
        fields = rest.split()
        if fields:
            try:
                v = float(fields[0])
            except ValueError:
                continue
            if not math.isnan(v):
                out.append(v)
    return out


class PrometheusScraper:
    """Polls the URL every ``interval_s`` until stopped."""

    def __init__(self, cfg: PrometheusConfig) -> None:
        self.cfg = cfg
        self.util: list[float] = []
        self.mem: list[float] = []
        self.samples = 0
        self.failures = 0

    async def run(self, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(timeout=self.cfg.interval_s * 2) as client:
            while not stop.is_set():
                try:
                    resp = await client.get(self.cfg.url)
                    resp.raise_for_status()
                    text = resp.text
                    self.samples += 1
                    u = parse_gauge(text, self.cfg.utilization_metric)
                    m = parse_gauge(text, self.cfg.memory_metric)
                    if u:
                        self.util.append(sum(u) / len(u))
                    if m:
                        self.mem.append(sum(m))
                except (httpx.HTTPError, OSError):
                    self.failures += 1
                try:
                    await asyncio.wait_for(stop.wait(), self.cfg.interval_s)
                except TimeoutError:
                    pass

    def summary(self) -> PromSummary:
        return PromSummary(
            url=self.cfg.url,
            samples=self.samples,
            failures=self.failures,
            utilization_metric=self.cfg.utilization_metric,
            memory_metric=self.cfg.memory_metric,
            utilization_mean=sum(self.util) / len(self.util) if self.util else None,
            utilization_max=max(self.util) if self.util else None,
            memory_bytes_mean=sum(self.mem) / len(self.mem) if self.mem else None,
            memory_bytes_max=max(self.mem) if self.mem else None,
        )
