"""Context benchmarks: ingestion throughput and search latency, side by side with Chroma's embedded mode.

    python -m node.context.bench [--sizes 10000,100000] [--queries 200] [--ingest-mb 1] [--no-chroma]

Search: the node's store (``SqliteBackend`` under ``ContextService.search``: the
tenant's file list, BM25 and vector rankings, fusion, decrypting the hits) at
each size, hybrid and vector-only, at concurrency 1 and 16, p50 and p99 per
request; Chroma (``chromadb`` ``PersistentClient``, cosine HNSW, no embedding
function) gets the same vectors, texts and query vectors in the same run, in
alternating blocks. The query's embedding is left out on both sides (the
engine's time, not the store's: ingestion measures it): a query's vector is
given. Chroma has no full-text ranking in embedded mode, so its hybrid column is
empty. Vectors are random unit vectors (``node.context.bench_corpus``).

Ingestion: text files of ``--ingest-mb`` MiB uploaded, chunked (800/400 tokens,
OpenAI's default) and embedded by the tiny embedding engine (``models.toml``),
chunks per second end to end.

Chroma is optional (``pip install .[context-bench]``): without it, or with
``--no-chroma``, its columns say ``-``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from audit.kek import LocalKek
from serving.embedding import EmbeddingRequest, Embeddings, LocalEmbedder
from serving.protocol import Health, ProviderInfo

from .bench_corpus import Corpus, IngestResult, corpus_queries, elapsed, make_corpus, text_files
from .chunking import FileTokenizer
from .fusion import SearchMode
from .records import ContextConfig, StaticChunking
from .service import ContextService
from .sqlite import SqliteBackend

__all__ = ["Latency", "SearchRow", "bench_ingest", "bench_search", "main"]

_TENANT = "bench"
_MODEL = "bench-vectors"
_RESULTS = 10
_MODELS_FILE = Path(__file__).resolve().parents[2] / "models.toml"


class _GivenVectors:
    """The query vectors of a corpus as an ``Embedder``: the benchmark measures the store, so a
    query's embedding is looked up, not computed. Only ``embed`` is used by the service."""

    def __init__(self, queries: Sequence[tuple[str, bytes]]) -> None:
        self._vectors = dict(queries)

    def describe(self) -> ProviderInfo:
        raise NotImplementedError("a benchmark's stand-in for the embedding engine")

    async def health(self) -> Health:
        raise NotImplementedError("a benchmark's stand-in for the embedding engine")

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        texts = request.texts or ()
        return Embeddings(vectors=tuple(self._vectors[t] for t in texts), prompt_tokens=0)


class _WordTokenizer:
    """Whitespace tokens: the search path does not chunk, the service only needs one."""

    def offsets(self, text: str) -> list[tuple[int, int]]:
        return []

    def count(self, text: str) -> int:
        return len(text.split())


@dataclass(frozen=True, slots=True)
class Latency:
    p50_ms: float
    p99_ms: float
    n: int

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Latency:
        ordered = sorted(seconds)
        p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
        return cls(p50_ms=1000 * statistics.median(ordered), p99_ms=1000 * p99, n=len(ordered))


@dataclass(frozen=True, slots=True)
class SearchRow:
    chunks: int
    mode: str
    concurrency: int
    bastion: Latency
    chroma: Latency | None


async def _timed_async(fn: Callable[[int], Awaitable[Any]], n: int, concurrency: int) -> list[float]:
    """``fn(i)`` for i < n by ``concurrency`` workers; each call's wall time."""
    times: list[float] = []
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            start = time.perf_counter()
            await fn(i)
            times.append(elapsed(start))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return times


def _timed_threads(fn: Callable[[int], Any], n: int, concurrency: int) -> list[float]:
    def one(i: int) -> float:
        start = time.perf_counter()
        fn(i)
        return elapsed(start)

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(pool.map(one, range(n)))


class _Chroma:
    """The same chunks in Chroma's embedded mode (cosine HNSW, our vectors, no embedding function)."""

    def __init__(self, folder: Path, corpus: Corpus) -> None:
        import chromadb

        self._client: Any = chromadb.PersistentClient(path=str(folder))
        self._col: Any = self._client.create_collection(
            "bench", configuration={"hnsw": {"space": "cosine"}}, embedding_function=None
        )
        batch = int(self._client.get_max_batch_size())
        rows = [(f"{f}#{c.index}", c) for f, chunks in enumerate(corpus.files) for c in chunks]
        for start in range(0, len(rows), batch):
            part = rows[start : start + batch]
            self._col.add(
                ids=[i for i, _ in part],
                embeddings=np.stack([np.frombuffer(c.vector, dtype=np.float32) for _, c in part]),
                documents=[c.text for _, c in part],
                metadatas=[{"file": i.split("#")[0]} for i, _ in part],
            )
        self._queries = [np.frombuffer(v, dtype=np.float32) for _, v in corpus.queries]

    def search(self, i: int) -> Any:
        return self._col.query(
            query_embeddings=[self._queries[i % len(self._queries)]],
            n_results=_RESULTS,
            include=["documents", "distances", "metadatas"],
        )


async def _bastion(
    folder: Path, corpus: Corpus, warmup: Sequence[tuple[str, bytes]]
) -> tuple[ContextService, str]:
    backend = await SqliteBackend.open(folder / "context.db", LocalKek(os.urandom(32)))
    config = msgspec.convert({"embedding_model": _MODEL}, ContextConfig)
    service = ContextService(
        backend, _GivenVectors([*corpus.queries, *warmup]), _WordTokenizer(), config, embed_max_tokens=8192
    )
    dims = len(corpus.queries[0][1]) // 4
    store = await backend.create_store(
        _TENANT, name="bench", metadata={}, embedding_model=_MODEL, dimensions=dims
    )
    for n, chunks in enumerate(corpus.files):
        f = await backend.put_file(_TENANT, filename=f"{n}.txt", purpose="assistants", content=b"-")
        await backend.attach_file(_TENANT, store.id, f.id, attributes={}, chunking=StaticChunking())
        await backend.write_chunks(_TENANT, store.id, f.id, chunks)
    return service, store.id


def _searcher(
    service: ContextService, store_id: str, queries: Sequence[tuple[str, bytes]], mode: SearchMode
) -> Callable[[int], Awaitable[Any]]:
    async def search(i: int) -> Any:
        text = queries[i % len(queries)][0]
        return await service.search(_TENANT, [store_id], text, max_num_results=_RESULTS, mode=mode)

    return search


async def bench_search(
    sizes: Sequence[int],
    *,
    queries: int,
    rounds: int,
    dims: int,
    words_per_chunk: int,
    chroma: bool,
    report: Callable[[str], None] = print,
) -> list[SearchRow]:
    """Per size, mode and concurrency: both stores' latencies over ``rounds`` alternating blocks of
    ``queries`` searches each."""
    rows: list[SearchRow] = []
    for size in sizes:
        corpus = make_corpus(
            size, dims=dims, words_per_chunk=words_per_chunk, chunks_per_file=1000, queries=queries, seed=size
        )
        warmup = corpus_queries(corpus.files, queries, seed=size + 7)  # for warming only
        with tempfile.TemporaryDirectory(prefix="bastion-ctxbench-") as tmp:
            start = time.perf_counter()
            service, store_id = await _bastion(Path(tmp), corpus, warmup)
            report(f"{size} chunks: bastion store built in {elapsed(start):.1f} s")
            other: _Chroma | None = None
            if chroma:
                start = time.perf_counter()
                other = await asyncio.to_thread(_Chroma, Path(tmp) / "chroma", corpus)
                report(f"{size} chunks: chroma collection built in {elapsed(start):.1f} s")
            try:
                for mode in (SearchMode.HYBRID, SearchMode.VECTOR):
                    ours = _searcher(service, store_id, corpus.queries, mode)

                    # warm, with queries not measured: the vector matrix, FTS pages, and the score lists
                    # of the phrases common enough to be cached (node.context.fulltext_cache)
                    await _timed_async(_searcher(service, store_id, warmup, mode), len(warmup), 1)
                    for concurrency in (1, 16):
                        mine: list[float] = []
                        theirs: list[float] = []
                        for _ in range(rounds):
                            mine += await _timed_async(ours, queries, concurrency)
                            if other is not None and mode is SearchMode.VECTOR:
                                theirs += await asyncio.to_thread(
                                    _timed_threads, other.search, queries, concurrency
                                )
                        row = SearchRow(
                            chunks=size,
                            mode=mode.value,
                            concurrency=concurrency,
                            bastion=Latency.of(mine),
                            chroma=Latency.of(theirs) if theirs else None,
                        )
                        report(_format_row(row))
                        rows.append(row)
            finally:
                await service.backend.aclose()
    return rows


async def bench_ingest(
    megabytes: float, engine: LocalEmbedder, *, file_kb: int = 256, seed: int = 7
) -> IngestResult:
    """Upload, parse, chunk (800/400 tokens), embed with ``engine`` and index ``megabytes`` MiB of
    text files, in a fresh store in a temporary folder."""
    files = text_files(megabytes, file_kb, seed)
    with tempfile.TemporaryDirectory(prefix="bastion-ctxbench-") as tmp:
        backend = await SqliteBackend.open(Path(tmp) / "context.db", LocalKek(os.urandom(32)))
        try:
            service = ContextService(
                backend,
                engine,
                FileTokenizer.of_model(engine.model_dir),
                msgspec.convert({"embedding_model": engine.name}, ContextConfig),
                embed_max_tokens=engine.max_model_len,
            )
            store = await service.create_store(_TENANT, name="ingest")
            chunks = 0
            start = time.perf_counter()
            for n, body in enumerate(files):
                f = await service.upload_file(_TENANT, f"doc-{n}.txt", body)
                chunks += (await service.add_file(_TENANT, store.id, f.id)).chunks
            seconds = elapsed(start)
        finally:
            await backend.aclose()
    return IngestResult(
        megabytes=sum(map(len, files)) / 2**20, files=len(files), chunks=chunks, seconds=seconds
    )


async def _ingest_on_tiny_engine(megabytes: float) -> IngestResult:
    """``bench_ingest`` on the tiny embedding model of ``models.toml``, built in a temporary folder."""
    from serving.model_commands import ensure_model
    from serving.models import load_models_file

    spec = load_models_file(_MODELS_FILE).get("bastion-tiny-embed")
    with tempfile.TemporaryDirectory(prefix="bastion-ctxbench-") as tmp:
        model_dir = await asyncio.to_thread(ensure_model, spec, _MODELS_FILE, Path(tmp))
        engine = LocalEmbedder(spec, model_dir)
        async with engine:
            return await bench_ingest(megabytes, engine)


def _cell(lat: Latency | None) -> str:
    return "-" if lat is None else f"{lat.p50_ms:7.1f} {lat.p99_ms:7.1f}"


def _format_row(row: SearchRow) -> str:
    ratio = "-"
    if row.chroma is not None and row.chroma.p99_ms > 0:
        ratio = f"{row.bastion.p50_ms / row.chroma.p50_ms:.2f} / {row.bastion.p99_ms / row.chroma.p99_ms:.2f}"
    return (
        f"{row.chunks:>7} {row.mode:<7} c={row.concurrency:<3} bastion p50/p99 ms {_cell(row.bastion)}"
        f" | chroma {_cell(row.chroma)} | ratio p50/p99 {ratio}"
    )


def _chroma_installed() -> bool:
    try:
        import chromadb  # noqa: F401
    except ImportError:
        return False
    return True


async def _main(args: argparse.Namespace) -> None:
    chroma = not args.no_chroma and _chroma_installed()
    if not args.no_chroma and not chroma:
        print("chromadb is not installed (pip install .[context-bench]): its columns are '-'")
    print(f"cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}")
    if args.ingest_mb > 0:
        result = await _ingest_on_tiny_engine(args.ingest_mb)
        print(
            f"ingestion: {result.megabytes:.2f} MiB in {result.files} files, {result.chunks} chunks in "
            f"{result.seconds:.1f} s: {result.chunks_per_s:.1f} chunks/s, {result.mb_per_s:.3f} MiB/s"
        )
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if sizes:
        os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
        await bench_search(
            sizes,
            queries=args.queries,
            rounds=args.rounds,
            dims=args.dims,
            words_per_chunk=args.words,
            chroma=chroma,
        )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000", help="chunks per store, comma separated")
    parser.add_argument("--queries", type=int, default=200, help="searches per block")
    parser.add_argument("--rounds", type=int, default=2, help="alternating blocks per cell")
    parser.add_argument("--dims", type=int, default=128, help="vector dimensions (the tiny model: 128)")
    parser.add_argument("--words", type=int, default=60, help="words per chunk")
    parser.add_argument("--ingest-mb", type=float, default=1.0, help="MiB of text to ingest (0: skip)")
    parser.add_argument("--no-chroma", action="store_true", help="leave Chroma out")
    asyncio.run(_main(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
