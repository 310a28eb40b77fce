"""Run configuration: what load to offer, with which prompts, judged by which SLOs.

Built only by decoding (``decode_config``), so a typo in a field name is an error.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

__all__ = [
    "REDACTED",
    "SLO_METRICS",
    "LoadConfig",
    "PrometheusConfig",
    "WorkloadConfig",
    "decode_config",
]

Positive = Annotated[float, msgspec.Meta(gt=0)]
NonNeg = Annotated[float, msgspec.Meta(ge=0)]
Ratio = Annotated[float, msgspec.Meta(ge=0, lt=1)]
Count = Annotated[int, msgspec.Meta(ge=1)]

# SLO thresholds are in milliseconds and name the metric they bound, so a reader can
# tell whether client queueing counts (the *_sched variants) or not.
SLO_METRICS = ("ttft_ms", "ttft_sched_ms", "e2e_ms", "e2e_sched_ms", "tpot_ms", "itl_max_ms")

#: what stands for the API key in every file a run writes (results get attached to tickets)
REDACTED = "[redacted]"


class WorkloadConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Prompt source and length distributions.

    ``random``: prompts of ``input_len`` words (uniform within +/- ``input_range``),
    ``shared_prefix``: the same plus one of ``num_prefixes`` common prefixes of
    ``prefix_len`` words, ``jsonl``: ``{"prompt": ..., "max_tokens"?: n}`` lines from ``path``.
    ``fixed_output`` asks for exactly ``max_tokens`` (``ignore_eos``, ``min_tokens``).
    """

    kind: Literal["random", "shared_prefix", "jsonl"] = "random"
    input_len: Count = 128
    input_range: Ratio = 0.0
    output_len: Count = 128
    output_range: Ratio = 0.0
    prefix_len: Annotated[int, msgspec.Meta(ge=0)] = 0
    num_prefixes: Count = 1
    path: str | None = None
    fixed_output: bool = True

    def __post_init__(self) -> None:
        if self.kind == "jsonl" and not self.path:
            raise ValueError("workload kind 'jsonl' needs a path")
        if self.kind == "shared_prefix" and self.prefix_len == 0:
            raise ValueError("workload kind 'shared_prefix' needs prefix_len > 0")


class PrometheusConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Scrape a ``/metrics`` URL during the run for GPU utilisation and memory."""

    url: str
    interval_s: Positive = 1.0
    utilization_metric: str = "bastion_gpu_utilization_ratio"
    memory_metric: str = "bastion_gpu_memory_used_bytes"


class LoadConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One load level.

    - ``rate`` unset: closed loop with ``concurrency`` workers.
    - ``rate`` set: open loop on a precomputed absolute schedule (``arrival``:
      ``poisson``, ``gamma`` with shape ``burstiness``, or ``constant``), capped at
      ``concurrency`` in flight when that is set; waiting for the cap is client
      queueing and shows in the ``*_sched`` metrics.
    - Exactly one of ``num_requests`` / ``duration_s`` bounds the run; the measured
      window drops ``warmup_s`` from the start and ``cooldown_s`` from the end.
    """

    url: str
    model: str = "mock"
    endpoint: Literal["completions", "chat"] = "completions"
    api_key: str | None = None
    concurrency: Count | None = None
    rate: Positive | None = None
    arrival: Literal["poisson", "gamma", "constant"] = "poisson"
    burstiness: Positive = 1.0
    num_requests: Count | None = None
    duration_s: Positive | None = None
    warmup_s: NonNeg = 0.0
    cooldown_s: NonNeg = 0.0
    seed: int = 0
    timeout_s: Positive = 600.0
    workload: WorkloadConfig = WorkloadConfig()
    slos: dict[str, Positive] = {}
    include_usage: bool = True
    continuous_usage: bool = True
    tokenizer: str | None = None
    prometheus: PrometheusConfig | None = None
    #: sent as the request's ``response_format`` (chat only), e.g. a ``json_schema`` one
    response_format: dict[str, Any] | None = None
    records_path: str | None = None
    progress: bool = False

    def __post_init__(self) -> None:
        if self.rate is None and self.concurrency is None:
            raise ValueError("set concurrency (closed loop) or rate (open loop)")
        if (self.num_requests is None) == (self.duration_s is None):
            raise ValueError("set exactly one of num_requests and duration_s")
        unknown = set(self.slos) - set(SLO_METRICS)
        if unknown:
            raise ValueError(f"unknown SLO metrics {sorted(unknown)}; known: {list(SLO_METRICS)}")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")
        if self.response_format is not None and self.endpoint != "chat":
            raise ValueError("response_format needs endpoint 'chat'")

    @property
    def closed_loop(self) -> bool:
        return self.rate is None

    def redacted(self) -> LoadConfig:
        """This config as it may be written to a file: the API key replaced by a marker."""
        return msgspec.structs.replace(self, api_key=REDACTED if self.api_key else None)


def decode_config(data: dict[str, Any]) -> LoadConfig:
    """Build a ``LoadConfig`` from plain data (JSON/TOML/CLI), strictly."""
    return msgspec.convert(data, LoadConfig, strict=False)
