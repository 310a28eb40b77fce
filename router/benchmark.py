"""Latency the router adds on the external path (run: ``python -m router.benchmark``).

Starts the repository's fake upstream (``python -m tests.fakes.upstream``, so run
from the repository root) in its own process, a zero-latency OpenAI-compatible
server streaming 16-token answers, then measures in one run, at concurrency 1
and 16:

- direct: an httpx client streaming from the fake upstream and parsing its SSE;
- router: ``Router.open`` (limits, policy, optional redaction, provider,
  SSE parse, deltas) in process, to the same upstream;

and prints p50/p99 end-to-end latency, requests/s and the side-by-side ratios.
With ``--litellm-bin PATH`` it also starts a LiteLLM proxy configured for the
same upstream and measures it the same way (client -> proxy -> upstream).
Numbers are for the machine it runs on; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import msgspec

from router.config import RouterConfig, TenantPolicy
from router.router import Router, RouteRequest
from serving.protocol import ChatMessage, GenerationRequest

__all__ = ["main"]

MODEL = "gpt-4o-2024-08-06"
TEXT = " ".join(f"tok{i}" for i in range(16))
PROMPT = "Say sixteen tokens please."
LITELLM_KEY = "sk-bench-" + "0" * 32


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_upstream(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-W",
            "ignore::RuntimeWarning",
            "-m",
            "tests.fakes.upstream",
            "--port",
            str(port),
            "--text",
            TEXT,
        ],
        stdout=subprocess.DEVNULL,
        cwd=Path(__file__).resolve().parent.parent,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("fake upstream did not start")


def _start_litellm(binary: str, upstream: str, port: int, workdir: Path) -> subprocess.Popen[bytes]:
    config = workdir / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: {upstream}/v1\n"
        "      api_key: fake-key\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
    )
    env = {
        **os.environ,
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
        "LITELLM_MASTER_KEY": LITELLM_KEY,
    }
    proc = subprocess.Popen(
        [binary, "--config", str(config), "--port", str(port), "--host", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "litellm.log").open("wb"),
        env=env,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/liveliness", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"LiteLLM proxy did not start; see {workdir / 'litellm.log'}")


def _config(base_url: str) -> RouterConfig:
    toml = f"""
[[providers]]
name = "fake"
kind = "openai"
base_url = "{base_url}/v1"
region = "eu-west"
[providers.models]
"{MODEL}" = {{ input_per_mtok = 2.5, output_per_mtok = 10.0 }}
[[routes]]
alias = "chat"
fallbacks = [{{ provider = "fake", model = "{MODEL}" }}]
"""
    return msgspec.toml.decode(toml.encode(), type=RouterConfig)


async def _direct(client: httpx.AsyncClient, url: str, headers: dict[str, str] | None = None) -> None:
    body = {
        "model": MODEL,
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": PROMPT}],
    }
    async with client.stream("POST", url, json=body, headers=headers) as response:
        response.raise_for_status()
        buffer = b""
        async for chunk in response.aiter_bytes():
            buffer += chunk
        if not buffer.rstrip().endswith(b"data: [DONE]"):
            raise RuntimeError("incomplete stream")


def _routed(router: Router, policy: TenantPolicy) -> Callable[[], Awaitable[None]]:
    counter = 0

    async def one() -> None:
        nonlocal counter
        counter += 1
        generation = GenerationRequest(
            request_id=f"b{counter}", model="chat", messages=(ChatMessage(role="user", content=PROMPT),)
        )
        stream = await router.open(
            RouteRequest(tenant="bench", policy=policy, alias="chat", generation=generation)
        )
        n = 0
        async for delta in stream:
            n += 1 if delta.text else 0
        if n != 16:
            raise RuntimeError(f"expected 16 text deltas, got {n}")

    return one


async def _measure(
    fn: Callable[[], Awaitable[None]], concurrency: int, total: int
) -> tuple[float, float, float]:
    for _ in range(min(50, total)):
        await fn()
    latencies: list[float] = []
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            start = time.perf_counter()
            await fn()
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
    return p50, p99, len(latencies) / elapsed


async def _run(args: argparse.Namespace) -> None:
    port = _free_port()
    proc = _start_upstream(port)
    base = f"http://127.0.0.1:{port}"
    rows: list[tuple[str, int, tuple[float, float, float]]] = []
    litellm: subprocess.Popen[bytes] | None = None
    workdir = Path(tempfile.mkdtemp(prefix="router-bench-"))
    try:
        if args.litellm_bin:
            lite_port = _free_port()
            litellm = _start_litellm(args.litellm_bin, base, lite_port, workdir)
            args.litellm = f"http://127.0.0.1:{lite_port}"
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:
            router = Router(_config(base), local={}, external=None)
            plain = msgspec.json.decode(b'{"residency": ["eu-west"], "redact": false}', type=TenantPolicy)
            redacting = msgspec.json.decode(b'{"residency": ["eu-west"], "redact": true}', type=TenantPolicy)
            variants: list[tuple[str, Callable[[], Awaitable[None]]]] = [
                ("direct (httpx -> upstream)", lambda: _direct(client, base + "/v1/chat/completions")),
                ("router (redact off)", _routed(router, plain)),
                ("router (redact on)", _routed(router, redacting)),
            ]
            if args.litellm:
                lite = args.litellm.rstrip("/") + "/v1/chat/completions"
                auth = {"authorization": f"Bearer {LITELLM_KEY}"}
                variants.append(("litellm proxy", lambda: _direct(client, lite, auth)))
            try:
                for concurrency in (1, 16):
                    scale = 4 if concurrency > 1 else 1
                    for name, fn in variants:
                        # LiteLLM runs at ~1/20 of the rate: fewer requests keep the run short.
                        total = (
                            args.litellm_requests if name.startswith("litellm") else args.requests
                        ) * scale
                        rows.append((name, concurrency, await _measure(fn, concurrency, total)))
            finally:
                await router.aclose()
    finally:
        for p in (proc, litellm):
            if p is not None:
                p.terminate()
                p.wait(timeout=10)
    print(f"fake upstream: 16-token SSE stream, zero latency; cpus={os.cpu_count()}")
    print(f"{'variant':30} {'conc':>4} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'p50 vs direct':>14}")
    direct = {c: r for n, c, r in rows if n.startswith("direct")}
    for name, concurrency, (p50, p99, rps) in rows:
        added = p50 - direct[concurrency][0]
        print(f"{name:30} {concurrency:>4} {p50:8.3f} {p99:8.3f} {rps:8.0f} {added:+13.3f}ms")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=1000, help="requests at concurrency 1 (x4 at 16)")
    parser.add_argument(
        "--litellm-bin", default=None, help="a `litellm` executable: start a proxy to compare"
    )
    parser.add_argument(
        "--litellm-requests", type=int, default=200, help="requests to LiteLLM at concurrency 1"
    )
    parser.add_argument("--litellm", default=None, help=argparse.SUPPRESS)
    asyncio.run(_run(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
