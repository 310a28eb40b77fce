"""Full-text search from cached score lists ranks as FTS5's own ``ORDER BY rank`` does.

One real SQLite file, two backends on it: one ranks with the cache
(``node.context.fulltext_cache``), one with FTS5 over every matching row
(``fulltext_cache_bytes = 0``). Corpora have words held by most chunks (left out
of the cached ranking: FTS5 clamps their IDF), rare words and identifiers that
FTS5 reads as phrases.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import apsw
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.kek import LocalKek
from node.context import ChunkIn, SqliteBackend, StaticChunking
from node.context.fulltext_cache import FulltextCache, _Postings, top_k
from node.context.records import Candidate
from node.context.service import query_terms

DIMS = 4
_COMMON = ["patient", "record", "policy", "dose"]
_RARE = [f"w{i}" for i in range(60)]


def _text(rng: random.Random) -> str:
    words = []
    for _ in range(rng.randrange(5, 30)):
        roll = rng.random()
        if roll < 0.5:
            words.append(rng.choice(_COMMON))
        elif roll < 0.95:
            words.append(rng.choice(_RARE[: rng.randrange(1, len(_RARE))]))
        else:
            words.append(f"DE-{rng.randrange(10)}-{rng.randrange(10)}")
    return " ".join(words)


def _same_ranking(cached: list[Candidate], fts: list[Candidate], k: int) -> None:
    """Equal scores rank for rank (within the clamped phrases' 2.2e-6 each), and the same chunks
    wherever the score is not tied with the last one returned; nothing for rows with no evidence."""
    # FTS5 goes on past the evidence with rows holding only words in most chunks (scores ~1e-6)
    assert len(cached) <= len(fts) and all(abs(c.raw) < 1e-4 for c in fts[len(cached) :])
    got = [c.raw for c in cached]
    want = [c.raw for c in fts][: len(got)]
    assert np.allclose(got, want, atol=1e-5), (got, want)
    if len(cached) == k and cached:
        last = cached[-1].raw
        assert {c.key for c in cached if c.raw < last - 1e-5} == {c.key for c in fts if c.raw < last - 1e-5}


async def _corpus(backend: SqliteBackend, rng: random.Random, files: int) -> tuple[str, list[str]]:
    store = await backend.create_store("acme", name=None, metadata={}, embedding_model="m", dimensions=DIMS)
    ids = []
    for n in range(files):
        f = await backend.put_file("acme", filename=f"{n}.txt", purpose="assistants", content=b"-")
        await backend.attach_file("acme", store.id, f.id, attributes={}, chunking=StaticChunking())
        chunks = [
            ChunkIn(index=i, text=_text(rng), start_token=0, end_token=1, vector=_vector(rng))
            for i in range(rng.randrange(20, 60))
        ]
        await backend.write_chunks("acme", store.id, f.id, chunks)
        ids.append(f.id)
    return store.id, ids


def _vector(rng: random.Random) -> bytes:
    return np.array([rng.uniform(-1, 1) for _ in range(DIMS)], dtype="<f4").tobytes()


def _query(rng: random.Random) -> list[str]:
    pool = _COMMON + _RARE + ["DE-1-2", "DE-3-4"]
    return query_terms(" ".join(rng.choice(pool) for _ in range(rng.randrange(1, 5))))


async def test_cached_ranking_is_fts5s_ranking_and_follows_changes(tmp_path: Path) -> None:
    kek = LocalKek(os.urandom(32))
    path = tmp_path / "context.db"
    cached = await SqliteBackend.open(path, kek)
    plain = await SqliteBackend.open(path, kek, fulltext_cache_bytes=0)
    try:
        rng = random.Random(7)
        sid, files = await _corpus(cached, rng, 6)
        for round_ in range(3):
            for _ in range(40):
                terms, k = _query(rng), rng.choice([1, 5, 20, 50])
                subset = rng.choice([None, files[:2]])
                _same_ranking(
                    await cached.fulltext("acme", sid, terms, k, subset),
                    await plain.fulltext("acme", sid, terms, k, subset),
                    k,
                )
            # the store changes: the cached lists must not outlive it
            if round_ == 0:
                await cached.detach_file("acme", sid, files.pop(0))
            else:
                f = await cached.put_file("acme", filename="new.txt", purpose="assistants", content=b"-")
                await cached.attach_file("acme", sid, f.id, attributes={}, chunking=StaticChunking())
                only = [ChunkIn(index=0, text="zebra w1 w1 w1", start_token=0, end_token=1, vector=bytes(16))]
                await cached.write_chunks("acme", sid, f.id, only)
                (top,) = await cached.fulltext("acme", sid, ["zebra"], 1, None)
                assert top.key == (await plain.fulltext("acme", sid, ["zebra"], 1, None))[0].key
    finally:
        await cached.aclose()
        await plain.aclose()


async def test_a_common_word_in_a_large_store_is_no_evidence(tmp_path: Path) -> None:
    """Past ``rare_rows`` rows, a word in half the chunks or more is left out (FTS5 scores it ~1e-6);
    below, it is kept, as FTS5 keeps it."""
    backend = await SqliteBackend.open(tmp_path / "context.db", LocalKek(os.urandom(32)))
    try:
        store = await backend.create_store(
            "acme", name=None, metadata={}, embedding_model="m", dimensions=DIMS
        )
        f = await backend.put_file("acme", filename="a.txt", purpose="assistants", content=b"-")
        await backend.attach_file("acme", store.id, f.id, attributes={}, chunking=StaticChunking())
        texts = ["patient note one", "patient note two", "patient metoprolol", "other"]
        chunks = [
            ChunkIn(index=i, text=t, start_token=0, end_token=1, vector=bytes(16))
            for i, t in enumerate(texts)
        ]
        await backend.write_chunks("acme", store.id, f.id, chunks)
        assert len(await backend.fulltext("acme", store.id, ["patient"], 5, None)) == 3
    finally:
        await backend.aclose()
    conn = apsw.Connection(str(tmp_path / "context.db"))
    try:
        (spk,) = conn.execute("SELECT pk FROM stores").fetchone()
        small = FulltextCache(2**20, rare_rows=2)
        assert small.search(conn, spk, ['"patient"'], 5, None) == []
        ((key, score),) = small.search(conn, spk, ['"patient"', '"metoprolol"'], 5, None)
        (index,) = conn.execute("SELECT idx FROM chunks WHERE key = ?", (key,)).fetchone()
        assert index == 2 and score > 0
    finally:
        conn.close()


_lists = st.lists(
    st.dictionaries(st.integers(0, 3000), st.floats(0.01, 10.0), min_size=0, max_size=2500),
    min_size=1,
    max_size=5,
)


@settings(max_examples=60, deadline=None)
@given(_lists, st.integers(1, 60), st.booleans(), st.sampled_from([1, 50, 2000]))
def test_max_score_top_k_is_the_exhaustive_top_k(
    lists: list[dict[int, float]], k: int, filtered: bool, rare_rows: int
) -> None:
    postings = [
        _Postings(rows=np.array(sorted(d), dtype=np.int64), scores=np.array([d[r] for r in sorted(d)]))
        for d in lists
    ]
    allowed = np.arange(0, 3001, 3, dtype=np.int64) if filtered else None
    totals: dict[int, float] = {}
    for d in lists:
        for row, score in d.items():
            if allowed is None or row % 3 == 0:
                totals[row] = totals.get(row, 0.0) + score
    want = sorted(totals.items(), key=lambda p: (-p[1], p[0]))[:k]
    got = top_k(postings, k, allowed, rare_rows=rare_rows)
    assert [r for r, _ in got] == [r for r, _ in want]
    assert np.allclose([s for _, s in got], [s for _, s in want])


async def test_a_chunk_erased_after_it_was_ranked_is_left_out(tmp_path: Path) -> None:
    backend = await SqliteBackend.open(tmp_path / "context.db", LocalKek(os.urandom(32)))
    try:
        sid, files = await _corpus(backend, random.Random(3), 2)
        ranked = await backend.nearest("acme", sid, np.ones(DIMS, dtype="<f4").tobytes(), 200, None)
        await backend.delete_file("acme", files[0])
        chunks = await backend.read_chunks("acme", [(c.store_id, c.key) for c in ranked])
        assert chunks and {c.file_id for c in chunks} == {files[1]}
        kept = [c.key for c in ranked if c.key in {ch.key for ch in chunks}]
        assert [c.key for c in chunks] == kept  # still in the order asked
    finally:
        await backend.aclose()
