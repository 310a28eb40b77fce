"""Bastion vs vLLM's own OpenAI server on the same model, the same load, in one run.

Starts ``python -m vllm.entrypoints.openai.api_server`` and ``bastion serve``
(dev mode, audit log on) on the same model folder, one at a time (or all at
once with ``--together``, for many short rounds), and drives each with the same
streaming load (``bench.run_load``), alternating rounds so that machine noise
hits both. ``--loads`` picks what each round sends: plain completions (the
default), plain chat, and chat with a ``json_schema`` response format
(structured outputs; both servers use xgrammar with compact whitespace), every
load in every round, so their ratios come from the same run. Prints output tokens/s, TTFT p50/p99 and the peak
resident memory of each server's process tree, and the ratios Bastion / vLLM.
Target ``engine`` adds the same engine driven in process without HTTP
(``bastion engine-bench``): the ceiling both servers share. With
``--together`` each server is driven only once its health check passes again
(an idle server starved of CPU by the other's round may have missed a probe).

    python -m bench.serve_compare --model-dir data/models/bastion-tiny

A pure HTTP client like the rest of ``bench``: the servers are subprocesses, Bastion
runs as the ``bastion`` command and is configured through it (``bench.harness``).
Peak RSS needs the ``bench`` extra (psutil).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import Any

from .cli import run_async
from .config import decode_config
from .harness import (
    ProcessTreeMemory,
    Server,
    bastion_command,
    bastion_from_args,
    no_egress_env,
    vllm_server,
    wait_ready,
)
from .runner import run_load

__all__ = ["main"]


@contextmanager
def _vllm(model_dir: Path, args: argparse.Namespace) -> Iterator[Server]:
    with vllm_server(
        model_dir,
        args.model,
        [
            "--dtype", "float32", "--max-model-len", "2048", "--max-num-seqs", str(args.max_num_seqs),
            "--gpu-memory-utilization", "0.5", "--kv-cache-memory-bytes", str(args.kv_cache_bytes),
            # as Bastion's engine: xgrammar, compact JSON (no runs of whitespace under a grammar)
            "--structured-outputs-config", '{"backend": "xgrammar", "disable_any_whitespace": true}',
        ],
        log_path=Path(args.log_dir) / "vllm.log",
        start_timeout_s=args.start_timeout_s,
    ) as server:  # fmt: skip
        yield server


@contextmanager
def _engine(args: argparse.Namespace) -> Iterator[Server]:
    """``bastion engine-bench``: the same engine in process, driven without HTTP.

    A subprocess like the servers (bench imports nothing of Bastion's); it prints
    ``ready`` once started, then one JSON line per ``run SEED`` it reads.
    """
    cmd = [
        *bastion_command(), "engine-bench", "--models-file", args.models_file,
        "--model", args.model, "--data-dir", args.data_dir, "--requests", str(args.requests),
        "--concurrency", str(args.concurrency), "--input-len", str(args.input_len),
        "--output-len", str(args.output_len),
    ]  # fmt: skip
    log = open(Path(args.log_dir) / "engine.log", "wb")
    env = no_egress_env()
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                            start_new_session=True)  # fmt: skip
    assert proc.stdout is not None

    def results() -> Iterator[bytes]:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(b"{"):
                yield line
            else:
                log.write(line)  # vLLM logs on stdout too

    try:
        deadline = time.monotonic() + args.start_timeout_s
        for line in proc.stdout:
            if line.strip() == b"ready":
                break
            log.write(line)
            if time.monotonic() > deadline:
                raise TimeoutError("bastion engine-bench not ready")
        else:
            raise RuntimeError(f"bastion engine-bench exited with {proc.wait()} before it was ready")
        yield Server("engine", "", None, proc, lines=results())
    finally:
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _run_engine(server: Server, seed: int) -> dict[str, float]:
    assert server.proc.stdin is not None and server.lines is not None
    server.proc.stdin.write(f"run {seed}\n".encode())
    server.proc.stdin.flush()
    line = next(server.lines, None)
    if line is None:
        raise RuntimeError(f"bastion engine-bench exited with {server.proc.wait()}")
    result = json.loads(line)
    if "error" in result:
        raise RuntimeError(result["error"])
    # JSON has no NaN: a round without two first tokens reports its percentiles as null
    keys = ("tok_s", "req_s", "ttft_p50_ms", "ttft_p99_ms", "failed")
    return {k: float("nan") if result[k] is None else float(result[k]) for k in keys}


#: the ``json_schema`` load's response format: enums, a boolean, a string and a number
TRIAGE_FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {
        "name": "triage",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {
                "severity": {"type": "string", "enum": ["low", "medium", "high", "critical"]},
                "ward": {"enum": ["cardiology", "oncology", "emergency"]},
                "admit": {"type": "boolean"},
                "summary": {"type": "string"},
                "score": {"type": "number"},
            },
            "required": ["severity", "ward", "admit", "summary", "score"],
            "additionalProperties": False,
        },
    },
}

#: what each load sends: (endpoint, response_format)
LOADS: dict[str, tuple[str, dict[str, Any] | None]] = {
    "completions": ("completions", None),
    "chat": ("chat", None),
    "json_schema": ("chat", TRIAGE_FORMAT),
}


def _drive(server: Server, args: argparse.Namespace, seed: int, load: str) -> dict[str, float]:
    if server.lines is not None:
        with ProcessTreeMemory(server.proc.pid) as memory:
            r = _run_engine(server, seed)
        server.peak_rss = memory.peak_rss
        return r
    endpoint, response_format = LOADS[load]
    cfg = decode_config(
        {
            "url": server.url,
            "model": args.model,
            "endpoint": endpoint,
            "response_format": response_format,
            "api_key": server.api_key,
            "concurrency": args.concurrency,
            "num_requests": args.requests,
            "seed": seed,
            "continuous_usage": False,
            "workload": {"kind": "random", "input_len": args.input_len, "output_len": args.output_len},
        }
    )
    with ProcessTreeMemory(server.proc.pid) as memory:
        result = run_async(run_load(cfg))
    server.peak_rss = memory.peak_rss
    return {
        "tok_s": result.output_tokens_per_s,
        "ttft_p50_ms": result.ttft_p50_ms or float("nan"),
        "ttft_p99_ms": result.ttft_p99_ms or float("nan"),
        "failed": float(result.summary.failed),
        "req_s": result.requests_per_s,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.serve_compare", description=__doc__)
    p.add_argument("--model-dir", default="data/models/bastion-tiny")
    p.add_argument("--data-dir", default="data", help="Bastion dev mode's data folder (holds models/)")
    p.add_argument("--model", default="bastion-tiny")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--input-len", type=int, default=32)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds per server")
    p.add_argument(
        "--together",
        action="store_true",
        help="start every server once and alternate many short rounds between them (idle servers "
        "stay up) instead of starting each one alone per round",
    )
    p.add_argument(
        "--loads",
        default="completions",
        help="comma list of completions (plain text), chat (plain chat), json_schema (chat with a "
        "json_schema response_format: enums, a boolean, a string, a number); each round drives "
        "every load on every server, so their ratios come from the same run",
    )
    p.add_argument("--max-num-seqs", type=int, default=32)
    p.add_argument("--kv-cache-bytes", type=int, default=64 * 1024 * 1024)
    p.add_argument("--start-timeout-s", type=float, default=300.0)
    p.add_argument("--log-dir", default=tempfile.gettempdir())
    p.add_argument("--models-file", default="models.toml", help="for bastion-noaudit's generated config")
    p.add_argument(
        "--targets",
        default="vllm,bastion",
        help="comma list of vllm, bastion (dev mode, audit log on), bastion-noaudit, engine (the "
        "same engine driven in process, no HTTP: the ceiling the servers share; completions only); "
        "ratios are against the first",
    )
    args = p.parse_args(argv)
    model_dir = Path(args.model_dir).resolve()
    if not (model_dir / "config.json").exists():
        print(f"no model at {model_dir}: run `bastion models build-dev` first", file=sys.stderr)
        return 2
    order = [t.strip() for t in args.targets.split(",") if t.strip()]
    loads = [x.strip() for x in args.loads.split(",") if x.strip()]
    starters: dict[str, Callable[[], AbstractContextManager[Server]]] = {
        "vllm": lambda: _vllm(model_dir, args),
        "bastion": lambda: bastion_from_args(args),
        "bastion-noaudit": lambda: bastion_from_args(args, audit=False),
        "engine": lambda: _engine(args),
    }
    if unknown := [t for t in order if t not in starters] + [x for x in loads if x not in LOADS]:
        print(f"unknown targets or loads {unknown}", file=sys.stderr)
        return 2
    if "engine" in order and loads != ["completions"]:
        print("target engine drives completions only", file=sys.stderr)
        return 2
    results: dict[tuple[str, str], list[dict[str, float]]] = {(x, t): [] for x in loads for t in order}
    peaks: dict[str, int] = dict.fromkeys(order, 0)

    def measure(rnd: int, server: Server, load: str) -> None:
        if server.url:
            # An idle server starved of CPU while another is driven may have missed a health
            # probe; each is driven only once it says it is ready again (and the wait is shown).
            t0 = time.monotonic()
            wait_ready(server.url, server.proc, server.ready_path, args.start_timeout_s)
            if (waited := time.monotonic() - t0) > 1.0:
                print(f"round {rnd} {server.name:16} waited {waited:.1f} s for {server.ready_path}")
        server.peak_rss = 0
        r = _drive(server, args, seed=rnd, load=load)
        results[load, server.name].append(r)
        peaks[server.name] = max(peaks[server.name], server.peak_rss)
        rss = server.peak_rss / 2**20
        print(f"round {rnd} {load:11} {server.name:16} {r['tok_s']:8.0f} tok/s {r['req_s']:7.2f} req/s  "
              f"TTFT p50 {r['ttft_p50_ms']:7.1f} ms  p99 {r['ttft_p99_ms']:7.1f} ms  "
              f"failed {r['failed']:.0f}  peak RSS {rss:7.0f} MiB", flush=True)  # fmt: skip

    if args.together:
        with ExitStack() as stack:
            servers = {name: stack.enter_context(starters[name]()) for name in order}
            for load in loads:
                for name in order:  # warm-up pass (compile caches, first batches, grammars)
                    _drive(servers[name], args, seed=1000, load=load)
            for rnd in range(args.rounds):
                for load in loads:
                    for name in order if rnd % 2 == 0 else order[::-1]:
                        measure(rnd, servers[name], load)
    else:
        for rnd in range(args.rounds):
            for name in order if rnd % 2 == 0 else order[::-1]:
                with starters[name]() as server:
                    for load in loads:
                        _drive(server, args, seed=1000 + rnd, load=load)  # warm-up pass
                        measure(rnd, server, load)
    for load in loads:
        _summary(load, {t: results[load, t] for t in order}, peaks, args)
    if len(loads) > 1:
        _load_ratios(loads, order, results)
    return 0


def _paired(mine: list[dict[str, float]], theirs: list[dict[str, float]]) -> list[float]:
    """Output tok/s ratios per round (measured back to back): steadier than a ratio of medians."""
    return sorted(a["tok_s"] / b["tok_s"] for a, b in zip(mine, theirs, strict=True))


def _summary(
    load: str, results: dict[str, list[dict[str, float]]], peaks: dict[str, int], args: argparse.Namespace
) -> None:
    order = list(results)

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    print(f"\n{load}: {args.requests} requests x {args.output_len} output tokens, concurrency "
          f"{args.concurrency}, median of {args.rounds} alternating rounds")  # fmt: skip
    print(f"{'':18}{'out tok/s':>11}{'req/s':>9}{'TTFT p50 ms':>13}{'TTFT p99 ms':>13}{'peak RSS MiB':>14}")
    for name in order:
        print(f"{name:18}{med(name, 'tok_s'):11.0f}{med(name, 'req_s'):9.2f}{med(name, 'ttft_p50_ms'):13.1f}"
              f"{med(name, 'ttft_p99_ms'):13.1f}{peaks[name] / 2**20:14.0f}")  # fmt: skip
    base = order[0]
    for i, first in enumerate(order):
        for name in order[i + 1 :]:
            ratios = _paired(results[name], results[first])
            print(f"{name}/{first}: out tok/s per round, paired: median {statistics.median(ratios):.2f}"
                  f" (min {ratios[0]:.2f}, max {ratios[-1]:.2f})")  # fmt: skip
    for name in order[1:]:
        print(f"{name + '/' + base:18}{med(name, 'tok_s') / med(base, 'tok_s'):11.2f}"
              f"{med(name, 'req_s') / med(base, 'req_s'):9.2f}"
              f"{med(name, 'ttft_p50_ms') / med(base, 'ttft_p50_ms'):13.2f}"
              f"{med(name, 'ttft_p99_ms') / med(base, 'ttft_p99_ms'):13.2f}"
              f"{peaks[name] / max(1, peaks[base]):14.2f}")  # fmt: skip


def _load_ratios(
    loads: list[str], order: list[str], results: dict[tuple[str, str], list[dict[str, float]]]
) -> None:
    """Each load's paired ratio against the first target, side by side (same run, same rounds)."""
    base = order[0]
    print()
    for name in order[1:]:
        cells = []
        for load in loads:
            r = _paired(results[load, name], results[load, base])
            cells.append(f"{load} {statistics.median(r):.2f} ({r[0]:.2f}-{r[-1]:.2f})")
        print(f"{name}/{base} out tok/s, paired median (range) by load: " + ", ".join(cells))


if __name__ == "__main__":
    raise SystemExit(main())
