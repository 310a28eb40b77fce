"""Embeddings: Bastion vs vLLM's own OpenAI server on the same tiny embedding model, in one run.

Starts ``python -m vllm.entrypoints.openai.api_server --runner pooling
--convert embed`` and ``bastion serve`` (dev mode: audit log on, the tiny
embedding model beside the chat model) on the same model folder, and drives
each with the same load: ``--requests`` POSTs to ``/v1/embeddings`` at
``--concurrency``, each one string of ``--input-words`` random words,
``encoding_format`` float. Rounds alternate between the servers (both stay up)
so that machine noise hits both. Prints requests/s and latency p50/p99 of each
and the ratios Bastion / vLLM, and where each server's CPU went per request:
its own process (HTTP and request path), vLLM's engine processes, and other
children (Bastion's audit writer).

    python -m bench.embed_compare --model-dir data/models/bastion-tiny-embed

A pure HTTP client like the rest of ``bench``: the servers are subprocesses.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path

import httpx

from .harness import Server, bastion_from_args, cpu_seconds_by_role, vllm_server, wait_ready

__all__ = ["main"]

_WORDS = "the audit log node tenant model token cache engine request vector matrix value key query".split()


@contextmanager
def _vllm_embed(model_dir: Path, args: argparse.Namespace) -> Iterator[Server]:
    with vllm_server(
        model_dir,
        args.model,
        [
            "--runner", "pooling", "--convert", "embed",
            "--dtype", "float32", "--max-model-len", "2048", "--max-num-seqs", str(args.max_num_seqs),
            "--gpu-memory-utilization", "0.5", "--kv-cache-memory-bytes", str(args.kv_cache_bytes),
            "--no-enable-prefix-caching", "--enforce-eager",
        ],
        log_path=Path(args.log_dir) / "vllm-embed.log",
        start_timeout_s=args.start_timeout_s,
    ) as server:  # fmt: skip
        yield server


async def _load(server: Server, args: argparse.Namespace, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    texts = [" ".join(rng.choice(_WORDS) for _ in range(args.input_words)) for _ in range(args.requests)]
    headers = {"authorization": f"Bearer {server.api_key}"} if server.api_key else {}
    latencies: list[float] = []
    failed = 0
    queue = iter(texts)
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    async with httpx.AsyncClient(base_url=server.url, headers=headers, limits=limits, timeout=60) as client:

        async def worker() -> None:
            nonlocal failed
            for text in queue:
                t0 = time.perf_counter()
                r = await client.post(
                    "/v1/embeddings", json={"model": args.model, "input": text, "encoding_format": "float"}
                )
                if r.status_code != 200 or len(r.json()["data"]) != 1:
                    failed += 1
                    continue
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        wall = time.perf_counter() - t0
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else float("nan")
    return {
        "req_s": len(latencies) / wall,
        "p50_ms": statistics.median(latencies) * 1000 if latencies else float("nan"),
        "p99_ms": p99 * 1000,
        "failed": float(failed),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.embed_compare", description=__doc__)
    p.add_argument("--model-dir", default="data/models/bastion-tiny-embed")
    p.add_argument("--data-dir", default="data", help="Bastion dev mode's data folder (holds models/)")
    p.add_argument("--model", default="bastion-tiny-embed")
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--input-words", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per server")
    p.add_argument("--max-num-seqs", type=int, default=32)
    p.add_argument("--kv-cache-bytes", type=int, default=64 * 1024 * 1024)
    p.add_argument("--start-timeout-s", type=float, default=300.0)
    p.add_argument("--log-dir", default=tempfile.gettempdir())
    p.add_argument("--models-file", default="models.toml", help="for bastion-noaudit's generated config")
    p.add_argument(
        "--targets",
        default="vllm,bastion",
        help="comma list of vllm, bastion (dev mode, audit log on), bastion-noaudit (only the embedding "
        "model, [audit] enabled = false); ratios are against vllm",
    )
    args = p.parse_args(argv)
    model_dir = Path(args.model_dir).resolve()
    if not (model_dir / "config.json").exists():
        print(f"no model at {model_dir}: run `bastion models build-dev` first", file=sys.stderr)
        return 2
    starters: dict[str, Callable[[], AbstractContextManager[Server]]] = {
        "vllm": lambda: _vllm_embed(model_dir, args),
        "bastion": lambda: bastion_from_args(args),
        "bastion-noaudit": lambda: bastion_from_args(args, audit=False),
    }
    order = [t.strip() for t in args.targets.split(",") if t.strip()]
    if "vllm" not in order or any(t not in starters for t in order):
        print(f"targets must include vllm and be among {sorted(starters)}", file=sys.stderr)
        return 2
    results: dict[str, list[dict[str, float]]] = {t: [] for t in order}
    with ExitStack() as stack:
        servers = [stack.enter_context(starters[t]()) for t in order]
        for server in servers:
            asyncio.run(_load(server, args, seed=1000))  # warm-up pass
        for rnd in range(args.rounds):
            for server in servers if rnd % 2 == 0 else servers[::-1]:
                wait_ready(server.url, server.proc, server.ready_path, args.start_timeout_s)
                before = cpu_seconds_by_role(server.proc.pid)
                r = asyncio.run(_load(server, args, seed=rnd))
                after = cpu_seconds_by_role(server.proc.pid)
                for role in after:  # CPU ms per request
                    r[f"cpu_{role}_ms"] = (after[role] - before[role]) * 1000 / args.requests
                results[server.name].append(r)
                cpu = ", ".join(f"{role} {r[f'cpu_{role}_ms']:.1f}" for role in after)
                print(f"round {rnd} {server.name:8} {r['req_s']:8.1f} req/s  p50 {r['p50_ms']:7.1f} ms  "
                      f"p99 {r['p99_ms']:7.1f} ms  failed {r['failed']:.0f}  CPU ms/request: {cpu}",
                      flush=True)  # fmt: skip

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    print(f"\n{args.requests} embedding requests of {args.input_words} words, "
          f"concurrency {args.concurrency}, median of {args.rounds} alternating rounds")  # fmt: skip
    print(f"{'':16}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}   CPU ms/request: front, engine, other")
    for name in results:
        print(f"{name:16}{med(name, 'req_s'):9.1f}{med(name, 'p50_ms'):9.1f}{med(name, 'p99_ms'):9.1f}   "
              f"{med(name, 'cpu_front_ms'):.1f}, {med(name, 'cpu_engine_ms'):.1f}, "
              f"{med(name, 'cpu_other_ms'):.1f}")  # fmt: skip
    for name in order:
        if name == "vllm":
            continue
        pairs = zip(results[name], results["vllm"], strict=True)
        ratios = sorted(b["req_s"] / v["req_s"] for b, v in pairs)
        print(f"{name}/vllm req/s per round, paired: median {statistics.median(ratios):.2f} "
              f"(min {ratios[0]:.2f}, max {ratios[-1]:.2f}); p99 ratio of medians "
              f"{med(name, 'p99_ms') / med('vllm', 'p99_ms'):.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
