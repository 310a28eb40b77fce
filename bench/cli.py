"""``bench`` command line: run, sweep, mock, ceiling, compare, report."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from bench.config import LoadConfig, decode_config
from bench.mock import MockConfig, parse_dist, serve_mock

__all__ = ["main"]

T = TypeVar("T")

#: read when no key option is given and the config file sets none
_KEY_ENV = "BENCH_API_KEY"


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when installed (lower per-callback overhead, higher client ceiling)."""
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def _add_load_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL (no /v1)")
    p.add_argument("--config", type=Path, help="JSON file with LoadConfig fields; flags override it")
    p.add_argument("--model", default=None)
    p.add_argument("--endpoint", choices=["completions", "chat"], default=None)
    key = p.add_mutually_exclusive_group()
    key.add_argument("--api-key", default=None, help="visible in `ps`: prefer --api-key-env/--api-key-file")
    key.add_argument(
        "--api-key-env", metavar="VAR", help=f"read the API key from $VAR (default: ${_KEY_ENV})"
    )
    key.add_argument("--api-key-file", type=Path, metavar="PATH", help="read the API key from a file")
    p.add_argument("--concurrency", type=int, default=None, help="closed loop; with --rate, a cap")
    p.add_argument("--rate", type=float, default=None, help="open-loop requests/s")
    p.add_argument("--arrival", choices=["poisson", "gamma", "constant"], default=None)
    p.add_argument("--burstiness", type=float, default=None, help="gamma shape (<1 burstier)")
    p.add_argument("--num-requests", "-n", type=int, default=None)
    p.add_argument("--duration", type=float, default=None, help="seconds (instead of -n)")
    p.add_argument("--warmup", type=float, default=None, help="seconds trimmed from the start")
    p.add_argument("--cooldown", type=float, default=None, help="seconds trimmed from the end")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--timeout", type=float, default=None, help="per-request timeout, seconds")
    p.add_argument("--workload", choices=["random", "shared_prefix", "jsonl"], default=None)
    p.add_argument("--input-len", type=int, default=None)
    p.add_argument("--input-range", type=float, default=None, help="uniform +/- ratio")
    p.add_argument("--output-len", type=int, default=None)
    p.add_argument("--output-range", type=float, default=None)
    p.add_argument("--prefix-len", type=int, default=None)
    p.add_argument("--num-prefixes", type=int, default=None)
    p.add_argument("--prompts", default=None, help="JSONL of {prompt, max_tokens?}")
    p.add_argument("--no-fixed-output", action="store_true", help="do not send ignore_eos/min_tokens")
    p.add_argument("--slo", action="append", default=[], help="METRIC=MS, e.g. ttft_ms=200 (repeatable)")
    p.add_argument("--no-usage", action="store_true", help="do not ask for stream_options.include_usage")
    p.add_argument("--no-continuous-usage", action="store_true", help="do not ask for per-chunk usage")
    p.add_argument("--tokenizer", default=None, help="local tokenizer.json or model dir for cross-checks")
    p.add_argument("--prom-url", default=None, help="Prometheus /metrics URL to scrape during the run")
    p.add_argument("--prom-util-metric", default=None)
    p.add_argument("--prom-mem-metric", default=None)
    p.add_argument("--out", type=Path, default=Path("bench-out"), help="output directory")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument(
        "--no-ceiling",
        action="store_true",
        help="do not measure the client ceiling (a cached one is still embedded)",
    )
    p.add_argument("--quiet", "-q", action="store_true")


def _api_key(a: argparse.Namespace) -> str | None:
    """The key from --api-key, --api-key-file or --api-key-env; None when none is given.

    Never persisted: result files carry ``[redacted]`` in its place.
    """
    if a.api_key:
        return str(a.api_key)
    if a.api_key_file is not None:
        path: Path = a.api_key_file
        try:
            key = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"--api-key-file {a.api_key_file}: cannot read it: {exc}") from None
        if not key:
            raise ValueError(f"--api-key-file {a.api_key_file} is empty")
        return key
    if a.api_key_env is not None:
        value = os.environ.get(a.api_key_env, "").strip()
        if not value:
            raise ValueError(f"--api-key-env: environment variable {a.api_key_env} is not set")
        return value
    return None


def config_from_args(a: argparse.Namespace) -> LoadConfig:
    data: dict[str, Any] = msgspec.json.decode(a.config.read_bytes()) if a.config else {}
    data["url"] = a.url if a.url else data.get("url")
    flat = {
        "model": a.model,
        "endpoint": a.endpoint,
        "api_key": _api_key(a),
        "concurrency": a.concurrency,
        "rate": a.rate,
        "arrival": a.arrival,
        "burstiness": a.burstiness,
        "num_requests": a.num_requests,
        "duration_s": a.duration,
        "warmup_s": a.warmup,
        "cooldown_s": a.cooldown,
        "seed": a.seed,
        "timeout_s": a.timeout,
        "tokenizer": a.tokenizer,
    }
    data.update({k: v for k, v in flat.items() if v is not None})
    if "api_key" not in data and (default_key := os.environ.get(_KEY_ENV, "").strip()):
        data["api_key"] = default_key
    wl = dict(data.get("workload", {}))
    wflat = {
        "kind": a.workload,
        "input_len": a.input_len,
        "input_range": a.input_range,
        "output_len": a.output_len,
        "output_range": a.output_range,
        "prefix_len": a.prefix_len,
        "num_prefixes": a.num_prefixes,
        "path": a.prompts,
    }
    wl.update({k: v for k, v in wflat.items() if v is not None})
    if a.prompts and a.workload is None:
        wl["kind"] = "jsonl"
    if a.no_fixed_output:
        wl["fixed_output"] = False
    data["workload"] = wl
    if a.slo:
        data["slos"] = {k: float(v) for k, _, v in (s.partition("=") for s in a.slo)}
    if a.no_usage:
        data["include_usage"] = False
    if a.no_continuous_usage:
        data["continuous_usage"] = False
    if a.prom_url:
        prom: dict[str, Any] = {"url": a.prom_url}
        if a.prom_util_metric:
            prom["utilization_metric"] = a.prom_util_metric
        if a.prom_mem_metric:
            prom["memory_metric"] = a.prom_mem_metric
        data["prometheus"] = prom
    if "num_requests" not in data and "duration_s" not in data:
        data["num_requests"] = 100
    if "concurrency" not in data and "rate" not in data:
        data["concurrency"] = 1
    data["progress"] = not a.quiet
    return decode_config(data)


def _cmd_run(a: argparse.Namespace) -> int:
    from bench.ceiling import cached_or_measure
    from bench.report import format_table, write_outputs
    from bench.runner import run_load

    try:
        cfg = config_from_args(a)
    except (msgspec.ValidationError, ValueError) as exc:
        print(f"bench: invalid configuration: {exc}", file=sys.stderr)
        return 2
    a.out.mkdir(parents=True, exist_ok=True)
    ceiling = None if a.no_ceiling else cached_or_measure()
    res = run_async(run_load(cfg, ceiling=ceiling, records_path=a.out / "records.jsonl"))
    write_outputs(res, a.out, plots=not a.no_plots)
    print(format_table(res))
    print(f"wrote {a.out}/result.json, records.jsonl, summary.csv")
    return 0


def _mock_config(a: argparse.Namespace) -> MockConfig:
    return msgspec.convert(
        {
            "ttft": msgspec.to_builtins(parse_dist(a.ttft)),
            "itl": msgspec.to_builtins(parse_dist(a.itl)),
            "tokens_per_event": a.tokens_per_event,
            "events_per_write": a.events_per_write,
            "usage": not a.no_usage,
            "error_rate": a.error_rate,
            "midstream_error_rate": a.midstream_error_rate,
            "max_concurrency": a.max_concurrency,
            "default_max_tokens": a.default_max_tokens,
            "seed": a.seed,
            "odd_text": not a.plain_text,
        },
        MockConfig,
    )


def add_mock_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    p.add_argument("--ttft", default="20", help="ms: 20, const:20, uniform:10:30, normal:20:5, exp:20")
    p.add_argument("--itl", default="10", help="per-token ms, same forms as --ttft")
    p.add_argument("--tokens-per-event", type=int, default=1)
    p.add_argument("--events-per-write", type=int, default=1)
    p.add_argument("--no-usage", action="store_true", help="ignore stream_options usage requests")
    p.add_argument("--error-rate", type=float, default=0.0, help="fraction answered with HTTP 500")
    p.add_argument("--midstream-error-rate", type=float, default=0.0, help="fraction failing mid-stream")
    p.add_argument("--max-concurrency", type=int, default=None, help="server-side FIFO slots")
    p.add_argument("--default-max-tokens", type=int, default=16)
    p.add_argument("--plain-text", action="store_true", help="no U+2028/NEL in generated text")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log", default=None, help="JSONL of each stream's due and actual write times")


def _cmd_mock(a: argparse.Namespace) -> int:
    cfg = _mock_config(a)

    async def serve() -> None:
        ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        task = asyncio.get_running_loop().create_task(serve_mock(cfg, a.host, a.port, ready, a.log))
        port = await ready
        print(f"bench mock listening on http://{a.host}:{port}", flush=True)
        await task

    try:
        run_async(serve())
    except KeyboardInterrupt:
        pass
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_run = sub.add_parser("run", help="offer one load level and report")
    _add_load_args(p_run)
    p_sweep = sub.add_parser("sweep", help="step the load; stop at saturation or find the max meeting SLOs")
    _add_load_args(p_sweep)
    p_sweep.add_argument("--levels", default=None, help="comma list of rates (or concurrencies)")
    p_sweep.add_argument("--vary", choices=["rate", "concurrency"], default="rate")
    p_sweep.add_argument("--find-max", action="store_true", help="bisect for the highest level meeting SLOs")
    p_mock = sub.add_parser("mock", help="OpenAI-compatible streaming server with injected latencies")
    add_mock_args(p_mock)
    p_ceil = sub.add_parser("ceiling", help="measure this client's ceiling on this host and cache it")
    p_ceil.add_argument("--quick", action="store_true")
    p_cmp = sub.add_parser("compare", help="compare two result.json files")
    p_cmp.add_argument("a", type=Path)
    p_cmp.add_argument("b", type=Path)
    p_rep = sub.add_parser("report", help="recompute a summary from records.jsonl")
    p_rep.add_argument("records", type=Path)
    p_rep.add_argument("--slo", action="append", default=[])
    a = parser.parse_args(argv)
    if a.cmd == "run":
        return _cmd_run(a)
    if a.cmd == "mock":
        return _cmd_mock(a)
    from bench import cli_extra

    return cli_extra.dispatch(a)


if __name__ == "__main__":
    raise SystemExit(main())
