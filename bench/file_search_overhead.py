"""What the node adds to a Responses request for its ``file_search`` tool, measured in one run.

Starts ``bastion serve`` in dev mode (the tiny chat model, the tiny embedding
model, the context layer on, audit log on), uploads a generated corpus through
``POST /v1/files`` (one short record per document, each with its own reference
code) and makes a vector store of it. Then, at each ``--concurrency`` level,
``--pairs`` pairs: a ``/v1/responses`` request with
``tools=[{"type": "file_search", "vector_store_ids": [...]}]`` asking about one
record, then a plain one whose input (a system message of filler words and the
same question, the shape ``file_search`` gives the model) is padded to the
``usage.input_tokens`` the ``file_search`` answer reported (counted with the
chat model's ``tokenizer.json``, the template's tokens calibrated once), both
with the same ``max_output_tokens`` and temperature 0, and the same
``instructions``, which number the pair: every prompt differs from its first
line, so the engine's prefix cache holds neither side's prompt (the retrieved
chunks alone would repeat: a small corpus ranks the same chunk first for
many questions). Prints p50/p99 of
both, the added time (median of the pairs' differences) and the ratio of p50s,
with the input and output token counts that make the pairs comparable.

The node reports no timing of its own for the search (no header, metric or
audit field), so the added time cannot be split exactly from outside. At
concurrency 1 each pair is followed by the same query on
``POST /v1/embeddings`` and ``POST /v1/vector_stores/{id}/search``: the
approximate split is query embedding, search (the search endpoint less the
embedding) and the rest (packing, prompt assembly, the search's audit record).

    python -m bench.file_search_overhead [--pairs 40] [--concurrency 1,4]

A pure HTTP client like the rest of ``bench``: the node is a subprocess.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from .harness import Server, bastion_from_args
from .tokens import load_token_counter

__all__ = ["main"]

_TOPICS = "invoice ticket shipment contract dosage audit claim refund warranty lease".split()
_WORDS = (
    "the node answers each request from the local model while the ledger keeps a record of what was "
    "asked and when the reviewer signs off on the change the team files a note for the quarterly report "
    "about costs delays suppliers and the payment terms agreed with the customer"
).split()
_FILLER = "the of and to in is it that for on as with was at by from or this be have are not".split()


@dataclass
class Pair:
    fs_ms: float
    plain_ms: float
    fs_in: int
    plain_in: int
    fs_out: int
    plain_out: int
    first_chunk: str
    embed_ms: float = float("nan")
    search_ms: float = float("nan")


def _code(i: int) -> str:
    return f"RC-{4100 + i}-{(i * 7919) % 10000:04d}"


def _document(i: int, words: int, rng: random.Random) -> str:
    topic = _TOPICS[i % len(_TOPICS)]
    body = " ".join(rng.choice(_WORDS) for _ in range(words))
    return f"Record {_code(i)}: {topic}\n\nThe {topic} {_code(i)} concerns {body}.\n"


def _question(i: int) -> str:
    return f"What does record {_code(i)} say about the {_TOPICS[i % len(_TOPICS)]}?"


def _instructions(i: int) -> str:
    """Each pair's own first line, so that no prompt shares a cached prefix with an earlier one
    (the retrieved chunks alone would: a small corpus puts the same chunk first for many questions)."""
    return f"Request {i}: answer briefly."


def _p(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


class _Bench:
    def __init__(self, server: Server, args: argparse.Namespace, count: Callable[[str], int]) -> None:
        self.server = server
        self.args = args
        self.count = count
        self.store_id = ""
        self.template_tokens = 0  # input tokens of a plain request beyond its two texts' own
        #: filler words that are one token alone and after a space
        self.filler = [w for w in _FILLER if count(w) == 1 and count(f"a {w}") == count("a") + 1] or _FILLER

    def client(self, concurrency: int) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        headers = {"authorization": f"Bearer {self.server.api_key}"}
        return httpx.AsyncClient(base_url=self.server.url, headers=headers, limits=limits, timeout=300)

    async def make_store(self, client: httpx.AsyncClient, docs: int) -> int:
        rng = random.Random(7)
        ids = []
        for i in range(docs):
            text = _document(i, self.args.doc_words, rng).encode()
            r = await client.post("/v1/files", files={"file": (f"record-{i}.txt", text, "text/plain")},
                                  data={"purpose": "assistants"})  # fmt: skip
            r.raise_for_status()
            ids.append(r.json()["id"])
        chunking = {
            "max_chunk_size_tokens": self.args.chunk_tokens,
            "chunk_overlap_tokens": self.args.chunk_tokens // 4,
        }
        r = await client.post("/v1/vector_stores", json={"name": "fsbench", "file_ids": ids,
                              "chunking_strategy": {"type": "static", "static": chunking}})  # fmt: skip
        r.raise_for_status()
        self.store_id = r.json()["id"]
        deadline = time.monotonic() + self.args.start_timeout_s
        while time.monotonic() < deadline:
            counts = (await client.get(f"/v1/vector_stores/{self.store_id}")).json()["file_counts"]
            if counts["failed"]:
                raise RuntimeError(f"ingestion failed for {counts['failed']} file(s)")
            if counts["completed"] == docs:
                return docs
            await asyncio.sleep(0.2)
        raise TimeoutError(f"the vector store was not ingested after {self.args.start_timeout_s} s")

    def _body(
        self, i: int, input_: str | list[dict[str, str]], tools: list[dict[str, Any]] | None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.args.model,
            "instructions": _instructions(i),
            "input": input_,
            "temperature": 0,
            "max_output_tokens": self.args.max_output_tokens,
        }
        if tools:
            body["tools"] = tools
        return body

    async def _respond(self, client: httpx.AsyncClient, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        t0 = time.perf_counter()
        r = await client.post("/v1/responses", json=body)
        ms = (time.perf_counter() - t0) * 1000
        if r.status_code != 200:
            raise RuntimeError(f"/v1/responses answered {r.status_code}: {r.text[:300]}")
        return ms, r.json()

    def _plain_input(self, i: int, target: int, question: str) -> list[dict[str, str]]:
        """A system message of filler words and ``question``, ``target`` input tokens in all
        (with request ``i``'s instructions)."""
        rng = random.Random(i)
        want = target - self.template_tokens - self.count(question) - self.count(_instructions(i))
        words: list[str] = []
        for _ in range(8):  # one-token words: each step corrects by the counted difference
            have = self.count(" ".join(words)) if words else 0
            if have == want:
                break
            if have < want:
                words += [rng.choice(self.filler) for _ in range(want - have)]
            else:
                del words[max(0, len(words) - (have - want)) :]
        return [{"role": "system", "content": " ".join(words)}, {"role": "user", "content": question}]

    async def calibrate(self, client: httpx.AsyncClient) -> None:
        """The template's own tokens: a plain request's input tokens less its texts' counts."""
        filler = " ".join(self.filler * 8)
        question = _question(0)
        msgs = [{"role": "system", "content": filler}, {"role": "user", "content": question}]
        _, answer = await self._respond(client, self._body(-1, msgs, None))
        texts = self.count(filler) + self.count(question) + self.count(_instructions(-1))
        self.template_tokens = answer["usage"]["input_tokens"] - texts

    async def pair(self, client: httpx.AsyncClient, i: int, *, split: bool) -> Pair:
        question = _question(i)
        tool = {"type": "file_search", "vector_store_ids": [self.store_id],
                "max_num_results": self.args.max_num_results}  # fmt: skip
        fs_ms, fs = await self._respond(client, self._body(i, question, [tool]))
        message = next(o for o in fs["output"] if o["type"] == "message")
        annotations = message["content"][0]["annotations"]
        plain_input = self._plain_input(i, fs["usage"]["input_tokens"], question)
        plain_ms, plain = await self._respond(client, self._body(i, plain_input, None))
        out = Pair(
            fs_ms=fs_ms,
            plain_ms=plain_ms,
            fs_in=fs["usage"]["input_tokens"],
            plain_in=plain["usage"]["input_tokens"],
            fs_out=fs["usage"]["output_tokens"],
            plain_out=plain["usage"]["output_tokens"],
            first_chunk=annotations[0]["chunk_id"] if annotations else "",
        )
        if split:
            t0 = time.perf_counter()
            r = await client.post("/v1/embeddings", json={"model": self.args.embed_model, "input": question})
            out.embed_ms = (time.perf_counter() - t0) * 1000
            r.raise_for_status()
            t0 = time.perf_counter()
            search = {"query": question, "max_num_results": self.args.max_num_results}
            r = await client.post(f"/v1/vector_stores/{self.store_id}/search", json=search)
            out.search_ms = (time.perf_counter() - t0) * 1000
            r.raise_for_status()
        return out

    async def level(self, concurrency: int, first: int) -> list[Pair]:
        pairs: list[Pair] = []
        queue = iter(range(first, first + self.args.pairs))
        async with self.client(concurrency) as client:

            async def worker() -> None:
                for i in queue:
                    pairs.append(await self.pair(client, i, split=concurrency == 1))

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        return pairs


def _report(c: int, pairs: list[Pair]) -> str:
    fs = [p.fs_ms for p in pairs]
    plain = [p.plain_ms for p in pairs]
    added = statistics.median(p.fs_ms - p.plain_ms for p in pairs)
    dtok = max(abs(p.fs_in - p.plain_in) for p in pairs)
    same_out = sum(p.fs_out == p.plain_out for p in pairs)
    tokens = statistics.median(p.fs_in for p in pairs)
    ratio = statistics.median(fs) / statistics.median(plain)
    return (f"{c:3}{len(pairs):7}{statistics.median(fs):10.1f}{_p(fs, 0.99):10.1f}"
            f"{statistics.median(plain):10.1f}{_p(plain, 0.99):10.1f}{added:10.1f}{ratio:8.2f}"
            f"{tokens:8.0f}{dtok:7}{same_out:6}/{len(pairs)}")  # fmt: skip


def _split(pairs: list[Pair]) -> str:
    embed = statistics.median(p.embed_ms for p in pairs)
    search = statistics.median(p.search_ms for p in pairs)
    added = statistics.median(p.fs_ms - p.plain_ms for p in pairs)
    return (f"split at c=1 (approximate: the node times none of it; from the embeddings endpoint "
            f"{embed:.1f} ms and the search endpoint {search:.1f} ms on the same query): "
            f"embedding {embed:.1f} ms, search {search - embed:.1f} ms, "
            f"rest {added - search:.1f} ms (packing, prompt, audit)")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.file_search_overhead", description=__doc__)
    p.add_argument("--data-dir", default="data", help="dev mode's data folder (holds models/)")
    p.add_argument("--models-file", default="models.toml")
    p.add_argument("--model", default="bastion-tiny")
    p.add_argument("--embed-model", default="bastion-tiny-embed")
    p.add_argument("--pairs", type=int, default=40, help="pairs per concurrency level")
    p.add_argument("--concurrency", default="1,4", help="comma list of levels")
    p.add_argument("--warmup", type=int, default=4, help="pairs before the measured ones, not reported")
    p.add_argument("--docs", type=int, default=0, help="documents in the corpus (0: one per question)")
    p.add_argument("--doc-words", type=int, default=120)
    p.add_argument("--chunk-tokens", type=int, default=200)
    p.add_argument("--max-num-results", type=int, default=6)
    p.add_argument("--max-output-tokens", type=int, default=16)
    p.add_argument("--max-token-gap", type=int, default=4, help="refuse pairs whose input tokens differ more")
    p.add_argument("--start-timeout-s", type=float, default=600.0)
    p.add_argument("--log-dir", default=tempfile.gettempdir())
    args = p.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    questions = args.warmup + args.pairs * len(levels)
    docs = args.docs or questions
    tokenizer = Path(args.data_dir) / "models" / args.model
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    with bastion_from_args(args) as server:
        bench = _Bench(server, args, load_token_counter(str(tokenizer)))

        async def run() -> dict[int, list[Pair]]:
            async with bench.client(1) as client:
                t0 = time.perf_counter()
                await bench.make_store(client, docs)
                print(f"corpus: {docs} documents in {bench.store_id}, ingested in "
                      f"{time.perf_counter() - t0:.1f} s", flush=True)  # fmt: skip
                await bench.calibrate(client)
                for i in range(args.warmup):
                    await bench.pair(client, questions - 1 - i, split=True)
            results, first = {}, 0
            for c in levels:
                results[c] = await bench.level(c, first)
                first += args.pairs
            return results

        results = asyncio.run(run())
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    gap = max(abs(p.fs_in - p.plain_in) for ps in results.values() for p in ps)
    distinct = len({p.first_chunk for ps in results.values() for p in ps})
    print(f"\n{args.model}, max_output_tokens {args.max_output_tokens}, temperature 0, max_num_results "
          f"{args.max_num_results}; {distinct} distinct first chunks "
          f"in {questions - args.warmup} pairs")  # fmt: skip
    print(f"{'c':>3}{'pairs':>7}{'fs p50':>10}{'fs p99':>10}{'pl p50':>10}{'pl p99':>10}{'added':>10}"
          f"{'ratio':>8}{'in tok':>8}{'|dtok|':>7}{'same out':>10}")  # fmt: skip
    for c, pairs in results.items():
        print(_report(c, pairs))
    if 1 in results:
        print(_split(results[1]))
    if gap > args.max_token_gap:
        print(f"input tokens of a pair differ by {gap} (more than {args.max_token_gap}): not comparable")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
