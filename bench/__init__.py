"""``bench``: a latency profiler for OpenAI-compatible LLM servers.

Layer: a pure HTTP client. Imports nothing of ours except its own package, so it
can profile any server (Bastion, vLLM, TGI, a hosted API).

Library use (from a script; configs are built by decoding, like everywhere else)::

    from bench import decode_config, run_load

    cfg = decode_config({"url": "http://127.0.0.1:8000", "model": "tiny", "concurrency": 16,
                         "num_requests": 200, "workload": {"input_len": 256, "output_len": 128}})
    res = await run_load(cfg)          # RunResult; records streamed to res.records_path
    res.output_tokens_per_s, res.ttft_p50_ms, res.ttft_p99_ms, res.itl_p99_ms
    res.stat("e2e_sched_ms", "p99")    # any metric x {n, mean, std, min, max, p50, p90, p95, p99, p999}

Open loop: ``{"rate": 20.0, "arrival": "poisson", "concurrency": 64}`` (rate with a cap).
Run it under uvloop for the highest ceiling: ``bench.cli.run_async(run_load(cfg))``.
"""

from bench.config import LoadConfig, PrometheusConfig, WorkloadConfig, decode_config
from bench.metrics import FORMULAS, Stats, Summary, summarize
from bench.mockproc import mock_process
from bench.records import RecordReader, RequestRecord, read_records
from bench.result import ClientCeiling, RunResult, load_result
from bench.runner import run_load
from bench.sweep import SweepResult, sweep

__all__ = [
    "FORMULAS",
    "ClientCeiling",
    "LoadConfig",
    "PrometheusConfig",
    "RecordReader",
    "RequestRecord",
    "RunResult",
    "Stats",
    "Summary",
    "SweepResult",
    "WorkloadConfig",
    "decode_config",
    "load_result",
    "mock_process",
    "read_records",
    "run_load",
    "summarize",
    "sweep",
]
