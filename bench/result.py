"""The versioned result of a run, with summary accessors for scripts."""

from __future__ import annotations

import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

import msgspec

from bench.config import REDACTED, LoadConfig
from bench.metrics import FORMULAS, Stats, Summary
from bench.prom import PromSummary

__all__ = [
    "SCHEMA_VERSION",
    "ClientCeiling",
    "RunMeta",
    "RunResult",
    "ceiling_cache_path",
    "load_cached_ceiling",
    "load_result",
    "run_meta",
]

SCHEMA_VERSION = 1


class ClientCeiling(msgspec.Struct, kw_only=True):
    """The most load this client sustains on this host before its own timing degrades."""

    max_requests_per_s: float
    max_events_per_s: float
    lag_threshold_ms: float
    host: str
    cpus: int
    measured_at: str
    method: str


def ceiling_cache_path() -> Path:
    """Where ``bench ceiling`` caches this host's ceiling."""
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "bench" / f"ceiling-{platform.node()}-{os.cpu_count()}.json"


def load_cached_ceiling() -> ClientCeiling | None:
    path = ceiling_cache_path()
    try:
        return msgspec.json.decode(path.read_bytes(), type=ClientCeiling)
    except (OSError, msgspec.DecodeError):
        return None


class RunMeta(msgspec.Struct, kw_only=True):
    command: list[str]
    seed: int
    started_at: str
    host: dict[str, str | int]
    versions: dict[str, str]
    event_loop: str


class RunResult(msgspec.Struct, kw_only=True):
    """Everything a run produced except the per-request records (those are in ``records_path``)."""

    schema_version: int = SCHEMA_VERSION
    meta: RunMeta
    config: LoadConfig
    summary: Summary
    formulas: dict[str, str] = msgspec.field(default_factory=lambda: dict(FORMULAS))
    warnings: list[str] = msgspec.field(default_factory=list)
    ceiling: ClientCeiling | None = None
    prometheus: PromSummary | None = None
    schedule_digest: str | None = None
    target_rate: float | None = None
    records_path: str | None = None

    def stat(self, metric: str, stat: str = "p50") -> float | None:
        """e.g. ``stat("ttft_ms", "p99")``; None when the run has no samples of it."""
        s: Stats | None = self.summary.latency.get(metric)
        return None if s is None else s.get(stat)

    @property
    def output_tokens_per_s(self) -> float:
        return self.summary.output_tokens_per_s

    @property
    def requests_per_s(self) -> float:
        return self.summary.requests_per_s

    @property
    def ttft_p50_ms(self) -> float | None:
        return self.stat("ttft_ms", "p50")

    @property
    def ttft_p99_ms(self) -> float | None:
        return self.stat("ttft_ms", "p99")

    @property
    def itl_p50_ms(self) -> float | None:
        return self.stat("itl_ms", "p50")

    @property
    def itl_p99_ms(self) -> float | None:
        return self.stat("itl_ms", "p99")

    @property
    def e2e_p99_ms(self) -> float | None:
        return self.stat("e2e_ms", "p99")

    def to_json(self) -> bytes:
        return msgspec.json.format(msgspec.json.encode(self), indent=2)


def load_result(path: Path) -> RunResult:
    return msgspec.json.decode(path.read_bytes(), type=RunResult)


def _version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "absent"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().split("\n"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_meta(seed: int, loop_name: str, *, secrets: tuple[str, ...] = ()) -> RunMeta:
    """The run's context; any of ``secrets`` in the command line (``--api-key K``) is redacted."""
    command = list(sys.argv)
    for secret in filter(None, secrets):
        command = [arg.replace(secret, REDACTED) for arg in command]
    return RunMeta(
        command=command,
        seed=seed,
        started_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        host={
            "name": platform.node(),
            "platform": platform.platform(),
            "cpus": os.cpu_count() or 0,
            "cpu_model": _cpu_model(),
        },
        versions={
            "bench": _version("bastion"),
            "python": platform.python_version(),
            "msgspec": _version("msgspec"),
            "numpy": _version("numpy"),
            "uvloop": _version("uvloop"),
        },
        event_loop=loop_name,
    )
