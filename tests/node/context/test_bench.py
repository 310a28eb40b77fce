"""The context benchmark at tiny sizes: every cell measured, Chroma's column only where it is installed."""

from __future__ import annotations

import importlib.util

import pytest

from node.context.bench import bench_ingest, bench_search
from serving.embedding import LocalEmbedder


async def test_search_benchmark_fills_every_cell_without_chroma() -> None:
    lines: list[str] = []
    rows = await bench_search(
        [300], queries=12, rounds=1, dims=16, words_per_chunk=20, chroma=False, report=lines.append
    )
    assert [(r.mode, r.concurrency) for r in rows] == [
        ("hybrid", 1),
        ("hybrid", 16),
        ("vector", 1),
        ("vector", 16),
    ]
    for row in rows:
        assert row.chunks == 300 and row.chroma is None and row.bastion.n == 12
        assert 0 < row.bastion.p50_ms <= row.bastion.p99_ms
    assert sum("bastion p50/p99" in line for line in lines) == 4


@pytest.mark.skipif(importlib.util.find_spec("chromadb") is None, reason="chromadb (extra context-bench)")
async def test_chroma_answers_the_vector_rows_beside_the_node() -> None:
    rows = await bench_search([300], queries=12, rounds=1, dims=16, words_per_chunk=20, chroma=True)
    assert [r.chroma is not None for r in rows] == [False, False, True, True]
    assert all(r.chroma.n == 12 for r in rows if r.chroma is not None)


async def test_ingestion_embeds_and_indexes_every_chunk(embed_engine: LocalEmbedder) -> None:
    result = await bench_ingest(0.02, embed_engine, file_kb=8)
    assert result.files == 3 and result.chunks >= 3 and result.chunks_per_s > 0
