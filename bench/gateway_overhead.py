"""Latency a gateway adds on the external path, measured side by side in one run.

A zero-latency ``bench mock`` plays the external API. The same streaming load
(16-token streams) goes to it directly and through a ``bastion serve`` node
whose only route falls back to that mock; optionally also through a LiteLLM
proxy (``--litellm-bin``, a ``litellm`` executable from its own venv) pointed at
the same mock. Rounds alternate; medians are printed with the ratios.

    python -m bench.gateway_overhead [--litellm-bin /tmp/litellm-venv/bin/litellm]

A pure HTTP client like the rest of ``bench``: the node and LiteLLM are subprocesses;
the node runs as the ``bastion`` command and is configured through it (``bench.harness``).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from .cli import run_async
from .config import decode_config
from .harness import bastion_command, check_config, create_key, free_port, running
from .mockproc import mock_process
from .runner import run_load

__all__ = ["main"]

MODEL = "mock-model-2024-01-01"


@contextmanager
def _node(mock_url: str, args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    """A node with no local engine, one route falling back to the mock (``bastion serve``), and a
    key for its tenant (``bastion keys create``)."""
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="bastion-gw-"))
    config = work / "node.toml"
    config.write_text(
        f"""
models_file = {json.dumps(str(Path(args.models_file).resolve()))}
data_dir = {json.dumps(str(work / "data"))}
serve = []
[server]
host = "127.0.0.1"
port = {port}
[[providers]]
name = "mock"
kind = "openai"
base_url = {json.dumps(mock_url + "/v1")}
region = "bench"
api_key_env = "BENCH_MOCK_KEY"
[providers.models."{MODEL}"]
input_per_mtok = 1.0
output_per_mtok = 1.0
[[routes]]
alias = "{MODEL}"
fallbacks = [{{ provider = "mock", model = "{MODEL}" }}]
[[tenants]]
name = "bench"
models = ["{MODEL}"]
residency = ["bench"]
redact = {"true" if args.redact else "false"}
[audit]
enabled = false
"""
    )
    env = dict(os.environ, BENCH_MOCK_KEY="not-a-real-key")
    check_config(config, env)
    key = create_key(config, "bench")
    cmd = [*bastion_command(), "serve", "--config", str(config)]
    with running(cmd, port=port, ready_path="/readyz", timeout_s=120, env=env) as (url, _):
        yield url, key


@contextmanager
def _litellm(mock_url: str, binary: str) -> Iterator[tuple[str, str]]:
    """A LiteLLM proxy for the same mock, behind a master key (it refuses to start without one)."""
    port = free_port()
    master = "sk-" + secrets.token_hex(16)
    work = Path(tempfile.mkdtemp(prefix="litellm-gw-"))
    (work / "config.yaml").write_text(
        f"model_list:\n  - model_name: {MODEL}\n    litellm_params:\n      model: openai/{MODEL}\n"
        f"      api_base: {mock_url}/v1\n      api_key: not-a-real-key\n"
    )
    cmd = [binary, "--config", str(work / "config.yaml"), "--port", str(port)]
    env = dict(os.environ, LITELLM_MASTER_KEY=master)
    with running(cmd, port=port, ready_path="/health/liveliness", timeout_s=180, env=env) as (url, _):
        yield url, master


def _measure(
    url: str, key: str | None, concurrency: int, args: argparse.Namespace, seed: int
) -> dict[str, float]:
    cfg = decode_config(
        {
            "url": url,
            "model": MODEL,
            "endpoint": "chat",
            "api_key": key,
            "concurrency": concurrency,
            "num_requests": args.requests * max(1, concurrency // 4),
            "seed": seed,
            "continuous_usage": False,
            # no ignore_eos/min_tokens: an external route refuses them (the mock answers max_tokens anyway)
            "workload": {"kind": "random", "input_len": 16, "output_len": 16, "fixed_output": False},
        }
    )
    result = run_async(run_load(cfg))
    return {
        "p50": result.stat("e2e_ms", "p50") or float("nan"),
        "p99": result.stat("e2e_ms", "p99") or float("nan"),
        "rps": result.requests_per_s,
        "failed": float(result.summary.failed),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gateway_overhead", description=__doc__)
    p.add_argument("--requests", type=int, default=300, help="per level at concurrency 1 (scaled up for 16)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--models-file", default="models.toml")
    p.add_argument("--litellm-bin", default=None)
    p.add_argument("--redact", action="store_true", help="the tenant redacts PII before egress")
    args = p.parse_args(argv)
    levels = (1, 16)
    rows: dict[tuple[str, int], list[dict[str, float]]] = {}
    with ExitStack() as stack:
        mock_url = stack.enter_context(mock_process("--ttft", "0", "--itl", "0"))
        node_url, key = stack.enter_context(_node(mock_url, args))
        targets: list[tuple[str, str, str | None]] = [("direct", mock_url, None), ("bastion", node_url, key)]
        if args.litellm_bin:
            targets.append(("litellm", *stack.enter_context(_litellm(mock_url, args.litellm_bin))))
        for rnd in range(args.rounds):
            for name, url, k in targets if rnd % 2 == 0 else targets[::-1]:
                for c in levels:
                    _measure(url, k, c, argparse.Namespace(requests=20), seed=99)  # warm-up
                    r = _measure(url, k, c, args, seed=rnd)
                    rows.setdefault((name, c), []).append(r)
                    line = f"round {rnd} {name:8} c={c:<3} e2e p50 {r['p50']:7.2f} ms"
                    line += f"  p99 {r['p99']:7.2f} ms  {r['rps']:8.1f} req/s  failed {r['failed']:.0f}"
                    print(line, flush=True)

    def med(name: str, c: int, key: str) -> float:
        return statistics.median(r[key] for r in rows[(name, c)])

    names = [t for t in ("direct", "bastion", "litellm") if (t, 1) in rows]
    print(f"\nzero-latency upstream, 16-token streams, median of {args.rounds} alternating rounds")
    print(f"{'':10}{'c':>4}{'e2e p50 ms':>12}{'e2e p99 ms':>12}{'req/s':>10}{'added p50 ms':>14}")
    for c in levels:
        for name in names:
            added = med(name, c, "p50") - med("direct", c, "p50")
            print(f"{name:10}{c:4}{med(name, c, 'p50'):12.2f}{med(name, c, 'p99'):12.2f}"
                  f"{med(name, c, 'rps'):10.1f}{added:14.2f}")  # fmt: skip
    if "litellm" in names:
        print(f"bastion/litellm req/s at c=16: {med('bastion', 16, 'rps') / med('litellm', 16, 'rps'):.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
