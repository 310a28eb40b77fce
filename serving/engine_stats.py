"""Engine statistics read from vLLM's stat-logger hook.

vLLM hands every scheduler step's stats to its stat loggers. Bastion passes one
logger that takes the place of vLLM's Prometheus logger (so vLLM registers and
updates no Prometheus metrics of its own in our process); it keeps the latest queue and KV-cache
figures and running totals for the prefix cache and preemptions.
``SchedulerStats``/``IterationStats`` are not a stable vLLM interface, so every
field is read defensively.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["EngineStats", "StatsSink"]


class EngineStats(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of one engine's scheduler, as of its last step."""

    #: requests queued in the scheduler, not yet running (as of its last step)
    waiting: int = 0
    #: requests in the running batch (as of its last step: scheduler figures only
    #: arrive with engine outputs, so after an abort they stay stale until the next step)
    running: int = 0
    #: fraction of KV-cache blocks in use, 0..1
    kv_cache_usage: float = 0.0
    #: prompt tokens looked up in the prefix cache, since start
    prefix_cache_queries: int = 0
    #: of those, tokens found in the cache
    prefix_cache_hits: int = 0
    #: requests preempted (KV cache evicted and recomputed), since start
    preemptions: int = 0
    #: client requests the frontend still tracks (queued, running or streaming out;
    #: health probes excluded); up to date at once, aborts included
    unfinished: int = 0

    @property
    def prefix_cache_hit_rate(self) -> float:
        return self.prefix_cache_hits / self.prefix_cache_queries if self.prefix_cache_queries else 0.0


class StatsSink:
    """Where the engine's stat logger writes; read by ``LocalEngine.stats()``.

    Only touched from the event loop thread (vLLM calls loggers from its
    output handler task), so no lock.
    """

    def __init__(self) -> None:
        self.waiting = 0
        self.running = 0
        self.kv_cache_usage = 0.0
        self.prefix_cache_queries = 0
        self.prefix_cache_hits = 0
        self.preemptions = 0
        self.steps = 0

    def logger_factory(self) -> type[Any]:
        """A vLLM stat-logger class bound to this sink, to pass in ``stat_loggers``.

        vLLM adds its own ``PrometheusStatLogger`` beside custom loggers unless
        one of them is a ``PrometheusStatLogger``; that one registers vLLM's
        metrics in the process-global registry and updates them on every step
        (about 7% of the node's CPU when streaming). This class is one in name
        only: it registers nothing and hands each step to the sink. vLLM is
        imported here, not at module import, so the engine can set its no-egress
        environment before any vLLM code runs.
        """
        from vllm.v1.metrics.loggers import PrometheusStatLogger

        sink = self

        class _SinkLogger(PrometheusStatLogger):
            def __init__(self, vllm_config: Any, engine_indexes: list[int] | None = None) -> None:
                # deliberately not PrometheusStatLogger.__init__: no metrics are registered
                self.engine_indexes = engine_indexes or [0]

            def record(
                self,
                scheduler_stats: Any,
                iteration_stats: Any,
                mm_cache_stats: Any = None,
                engine_idx: int = 0,
            ) -> None:
                sink.record(scheduler_stats, iteration_stats)

            def record_sleep_state(self, *args: Any, **kwargs: Any) -> None:
                return None

            def record_admission_rejection(self, *args: Any, **kwargs: Any) -> None:
                return None

            def log(self) -> None:
                return None

            def log_engine_initialized(self) -> None:
                return None

        return _SinkLogger

    def record(self, scheduler_stats: Any, iteration_stats: Any) -> None:
        self.steps += 1
        if scheduler_stats is not None:
            self.running = int(getattr(scheduler_stats, "num_running_reqs", 0))
            self.waiting = int(getattr(scheduler_stats, "num_waiting_reqs", 0)) + int(
                getattr(scheduler_stats, "num_skipped_waiting_reqs", 0)
            )
            self.kv_cache_usage = float(getattr(scheduler_stats, "kv_cache_usage", 0.0))
            prefix = getattr(scheduler_stats, "prefix_cache_stats", None)
            if prefix is not None:
                self.prefix_cache_queries += int(getattr(prefix, "queries", 0))
                self.prefix_cache_hits += int(getattr(prefix, "hits", 0))
        if iteration_stats is not None:
            self.preemptions += int(getattr(iteration_stats, "num_preempted_reqs", 0))

    def snapshot(self, unfinished: int) -> EngineStats:
        return EngineStats(
            waiting=self.waiting,
            running=self.running,
            kv_cache_usage=self.kv_cache_usage,
            prefix_cache_queries=self.prefix_cache_queries,
            prefix_cache_hits=self.prefix_cache_hits,
            preemptions=self.preemptions,
            unfinished=unfinished,
        )
