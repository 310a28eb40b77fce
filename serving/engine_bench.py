"""``bastion engine-bench``: the local engine's own streaming ceiling, in process, no HTTP.

Starts a ``LocalEngine`` on a pinned model (verified as ``bastion serve``
verifies it), prints ``ready``, then for every ``run SEED`` line on stdin
streams ``--requests`` requests at ``--concurrency`` with a fixed output length
straight from the engine and prints one JSON line: output tokens/s, requests/s,
TTFT p50/p99. It exits when stdin closes.

``python -m bench.serve_compare --targets engine,vllm,bastion`` runs it beside
the HTTP servers, alternating rounds: a server's share of this figure is what
its HTTP layer leaves of the engine's throughput on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from pathlib import Path

import msgspec

from .engine import LocalEngine
from .models import load_models_file
from .protocol import GenerationRequest, SamplingOptions

__all__ = ["add_engine_bench_arguments", "main", "run_engine_bench", "run_round"]

_WORDS = (
    "the of and to in is was for on that with as by at from this have are be an which or it not "
    "but all were when we there can more if will one about up their out so what time its into only"
).split()


class RoundResult(msgspec.Struct, frozen=True):
    tok_s: float
    req_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    failed: int


async def run_round(
    engine: LocalEngine, *, seed: int, requests: int, concurrency: int, input_len: int, output_len: int
) -> RoundResult:
    """Closed loop: ``concurrency`` workers stream ``requests`` requests of ``output_len`` tokens."""
    rng = random.Random(seed)
    prompts = [
        # a per-request nonce first, as bench's random workload does: no prefix-cache hits
        f"{seed}-{i} " + " ".join(rng.choice(_WORDS) for _ in range(max(1, input_len - 1)))
        for i in range(requests)
    ]
    sampling = SamplingOptions(max_tokens=output_len, min_tokens=output_len, ignore_eos=True)
    ttfts: list[float] = []
    tokens = failed = 0
    next_index = 0

    async def worker() -> None:
        nonlocal tokens, failed, next_index
        while next_index < requests:
            i = next_index
            next_index += 1
            request = GenerationRequest(
                request_id=f"bench-{seed}-{i}", model=engine.name, prompt=prompts[i], sampling=sampling
            )
            sent = time.perf_counter()
            first: float | None = None
            tokens_now = 0
            try:
                async for delta in engine.stream(request):
                    if first is None and delta.text:
                        first = time.perf_counter()
                    tokens_now = delta.completion_tokens
                tokens += tokens_now
            except Exception:
                failed += 1
                continue
            if first is not None:
                ttfts.append(first - sent)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    qs = statistics.quantiles(ttfts, n=100) if len(ttfts) > 1 else [float("nan")] * 99
    return RoundResult(
        tok_s=tokens / elapsed,
        req_s=(requests - failed) / elapsed,
        ttft_p50_ms=qs[49] * 1000,
        ttft_p99_ms=qs[98] * 1000,
        failed=failed,
    )


async def _until_healthy(engine: LocalEngine, *, deadline_s: float) -> None:
    """Probe until the engine passes (it may have missed a probe while another server was driven)."""
    deadline = time.monotonic() + deadline_s
    while not (health := await engine.health()).healthy:
        if time.monotonic() > deadline or health.detail.startswith(("dead", "stopped")):
            raise RuntimeError(f"engine not healthy: {health.detail}")
        await engine.probe()


async def _serve(args: argparse.Namespace) -> int:
    spec = load_models_file(Path(args.models_file)).get(args.model)
    model_dir = Path(args.data_dir) / "models" / spec.name
    loop = asyncio.get_running_loop()
    async with LocalEngine(spec, model_dir) as engine:
        print("ready", flush=True)
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            command = line.split()
            if command[:1] != ["run"] or len(command) != 2:
                error = {"error": f"unknown command {line.strip()!r}"}
                print(msgspec.json.encode(error).decode(), flush=True)
                continue
            await _until_healthy(engine, deadline_s=120.0)
            result = await run_round(
                engine,
                seed=int(command[1]),
                requests=args.requests,
                concurrency=args.concurrency,
                input_len=args.input_len,
                output_len=args.output_len,
            )
            print(msgspec.json.encode(result).decode(), flush=True)
    return 0


def add_engine_bench_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``bastion engine-bench`` (and ``python -m serving.engine_bench``)."""
    p.add_argument("--models-file", default="models.toml")
    p.add_argument("--model", default="bastion-tiny")
    p.add_argument("--data-dir", default="data", help="holds models/<name>")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--input-len", type=int, default=32)
    p.add_argument("--output-len", type=int, default=64)


def run_engine_bench(args: argparse.Namespace) -> int:
    """Start the engine, then answer ``run SEED`` lines on stdin until it closes."""
    return asyncio.run(_serve(args))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serving.engine_bench", description=__doc__)
    add_engine_bench_arguments(p)
    return run_engine_bench(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
