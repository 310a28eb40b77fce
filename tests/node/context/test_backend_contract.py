"""The storage Protocol's contract, run on both backends: SQLite in tmp_path and a real PostgreSQL server.

What each backend must do alike: another tenant's ids are not found, filters limit
both rankings, erasure removes a file's or tenant's chunks from both indexes and
spares the rest, a KEK rotation keeps everything readable, the vector ranking is
exact cosine. PostgreSQL-specific: nothing readable in its tables, and two nodes
on one database never search stale vectors.
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import psycopg
import pytest
import pytest_asyncio

from audit.errors import AuditKeyError
from audit.kek import LocalKek
from node.context import ChunkIn, ContextBackend, FileStatus, NotFoundError, SqliteBackend, StaticChunking
from node.context.postgres import PostgresBackend

DIMS = 8


def vec(seed: int) -> bytes:
    rng = random.Random(seed)
    return struct.pack(f"<{DIMS}f", *(rng.uniform(-1, 1) for _ in range(DIMS)))


@pytest.fixture(params=["sqlite", "postgres"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def _open(kind: str, tmp_path: Path, kek: LocalKek, request: pytest.FixtureRequest) -> ContextBackend:
    """A backend of ``kind`` on this test's database (a second call: another node on the same one)."""
    if kind == "sqlite":
        return await SqliteBackend.open(tmp_path / "data" / "context.db", kek)
    return await PostgresBackend.open(request.getfixturevalue("pg_url"), kek)


@pytest_asyncio.fixture(loop_scope="session")
async def store_backend(
    kind: str, tmp_path: Path, kek: LocalKek, request: pytest.FixtureRequest
) -> AsyncIterator[ContextBackend]:
    backend = await _open(kind, tmp_path, kek, request)
    try:
        yield backend
    finally:
        await backend.aclose()


async def _store_with_file(
    backend: ContextBackend,
    tenant: str,
    words: list[str],
    *,
    seed: int = 0,
    attributes: dict[str, str] | None = None,
) -> tuple[str, str]:
    store = await backend.create_store(
        tenant, name="s", metadata={"team": "x"}, embedding_model="m", dimensions=DIMS
    )
    f = await backend.put_file(tenant, filename=f"{tenant}-notes.txt", purpose="assistants", content=b"raw")
    await backend.attach_file(tenant, store.id, f.id, attributes=attributes or {}, chunking=StaticChunking())
    chunks = [
        ChunkIn(index=i, text=w, start_token=i * 10, end_token=i * 10 + 12, vector=vec(seed + i))
        for i, w in enumerate(words)
    ]
    done = await backend.write_chunks(tenant, store.id, f.id, chunks)
    assert done.status is FileStatus.COMPLETED and done.chunks == len(words)
    return store.id, f.id


async def test_another_tenants_ids_are_not_found_everywhere(store_backend: ContextBackend) -> None:
    b = store_backend
    sid, fid = await _store_with_file(b, "acme", ["alpha beta", "gamma"])
    (key,) = [c.key for c in await b.fulltext("acme", sid, ["alpha"], 5, None)]
    calls = [
        b.get_store("globex", sid),
        b.get_file("globex", fid),
        b.file_content("globex", fid),
        b.list_store_files("globex", sid),
        b.store_file("globex", sid, fid),
        b.fulltext("globex", sid, ["alpha"], 5, None),
        b.nearest("globex", sid, vec(0), 5, None),
        b.read_chunks("globex", [(sid, key)]),
        b.detach_file("globex", sid, fid),
        b.delete_file("globex", fid),
        b.delete_store("globex", sid),
        b.attach_file("globex", sid, fid, attributes={}, chunking=StaticChunking()),
        b.create_batch("globex", sid, [fid]),
    ]
    for call in calls:
        with pytest.raises(NotFoundError):
            await call
    assert await b.list_stores("globex") == [] and await b.list_files("globex") == []
    own = await b.create_store("globex", name=None, metadata={}, embedding_model="m", dimensions=DIMS)
    with pytest.raises(NotFoundError):
        await b.attach_file("globex", own.id, fid, attributes={}, chunking=StaticChunking())
    (chunk,) = await b.read_chunks("acme", [(sid, key)])
    assert (chunk.text, chunk.filename, chunk.id) == ("alpha beta", "acme-notes.txt", f"{fid}#0")
    assert await b.file_content("acme", fid) == b"raw"


async def test_filters_limit_both_rankings_and_counts_follow(store_backend: ContextBackend) -> None:
    b = store_backend
    store = await b.create_store("acme", name=None, metadata={}, embedding_model="m", dimensions=DIMS)
    ids = []
    for n in range(3):
        f = await b.put_file("acme", filename=f"{n}.txt", purpose="assistants", content=b"x")
        await b.attach_file("acme", store.id, f.id, attributes={"n": n}, chunking=StaticChunking())
        one = ChunkIn(index=0, text="shared word", start_token=0, end_token=2, vector=vec(n))
        await b.write_chunks("acme", store.id, f.id, [one])
        ids.append(f.id)
    assert len(await b.fulltext("acme", store.id, ["shared"], 10, None)) == 3
    only = await b.fulltext("acme", store.id, ["shared"], 10, [ids[1]])
    near = await b.nearest("acme", store.id, vec(0), 10, [ids[1], ids[2]])
    chunks = await b.read_chunks("acme", [(c.store_id, c.key) for c in only + near])
    assert [c.file_id for c in chunks[:1]] == [ids[1]] and {c.file_id for c in chunks[1:]} == {ids[1], ids[2]}
    assert await b.fulltext("acme", store.id, ["shared"], 10, []) == []
    assert [f.attributes for f in await b.list_store_files("acme", store.id)] == [
        {"n": 0},
        {"n": 1},
        {"n": 2},
    ]
    s = await b.get_store("acme", store.id)
    assert s.file_counts["completed"] == 3 and s.usage_bytes == 3 * len("shared word")
    failed = await b.fail_file("acme", store.id, ids[2], "invalid_file", "too big")
    assert (failed.status, failed.last_error_code) == (FileStatus.FAILED, "invalid_file")
    await b.detach_file("acme", store.id, ids[0])
    assert len(await b.fulltext("acme", store.id, ["shared"], 10, None)) == 2
    await b.delete_store("acme", store.id)
    assert len(await b.list_files("acme")) == 3  # files outlive the store


async def test_fulltext_finds_identifiers_and_ranks_the_denser_chunk_first(
    store_backend: ContextBackend,
) -> None:
    b = store_backend
    sid, _ = await _store_with_file(
        b,
        "acme",
        [
            "the invoice for account DE-4471-0093 is overdue",
            "metoprolol metoprolol twice daily with food",
            "metoprolol is a beta blocker among many other things listed here",
        ],
    )
    (hit,) = await b.fulltext("acme", sid, ["DE-4471-0093"], 5, None)
    ranked = await b.fulltext("acme", sid, ["metoprolol"], 5, None)
    chunks = await b.read_chunks("acme", [(sid, hit.key)] + [(sid, c.key) for c in ranked])
    assert "DE-4471-0093" in chunks[0].text
    assert [c.index for c in chunks[1:]] == [1, 2] and ranked[0].raw < ranked[1].raw


async def test_nearest_is_exact_cosine(store_backend: ContextBackend) -> None:
    b = store_backend
    words = [f"w{i}" for i in range(40)]
    sid, _ = await _store_with_file(b, "acme", words, seed=50)
    matrix = np.stack([np.frombuffer(vec(50 + i), dtype="<f4") for i in range(40)])
    query = np.frombuffer(vec(7), dtype="<f4")
    cos = matrix @ query / (np.linalg.norm(matrix, axis=1) * np.linalg.norm(query))
    found = await b.nearest("acme", sid, vec(7), 5, None)
    chunks = await b.read_chunks("acme", [(sid, c.key) for c in found])
    assert [c.index for c in chunks] == list(np.argsort(-cos)[:5])
    assert [c.raw for c in found] == pytest.approx(sorted(1 - cos)[:5], abs=1e-5)


async def test_erasure_removes_a_file_and_a_tenant_from_both_indexes(store_backend: ContextBackend) -> None:
    b = store_backend
    sid, fid = await _store_with_file(b, "acme", ["zebrafinch quokka", "narwhal"], seed=100)
    keep_sid, keep_fid = await _store_with_file(b, "acme", ["pangolin"], seed=200)
    other_sid, _ = await _store_with_file(b, "globex", ["wombat"], seed=300)
    erased = await b.delete_file("acme", fid)
    assert erased.files == (fid,) and erased.chunks == 2 and erased.keys == 1
    assert await b.fulltext("acme", sid, ["zebrafinch", "narwhal"], 5, None) == []
    assert await b.nearest("acme", sid, vec(100), 5, None) == []
    with pytest.raises(NotFoundError):
        await b.get_file("acme", fid)
    assert (await b.store_file("acme", keep_sid, keep_fid)).chunks == 1
    gone = await b.erase_tenant("acme")
    assert len(gone.stores) == 2 and len(gone.files) == 1 and gone.chunks == 1 and gone.keys == 1
    assert await b.list_stores("acme") == [] and await b.list_files("acme") == []
    assert len(await b.fulltext("globex", other_sid, ["wombat"], 5, None)) == 1


async def test_file_batches_outlive_the_backend_stay_the_tenants_and_go_with_their_files(
    store_backend: ContextBackend, kind: str, tmp_path: Path, kek: LocalKek, request: pytest.FixtureRequest
) -> None:
    b = store_backend
    sid, fid = await _store_with_file(b, "acme", ["alpha"])
    f2 = await b.put_file("acme", filename="two.txt", purpose="assistants", content=b"2")
    await b.attach_file("acme", sid, f2.id, attributes={}, chunking=StaticChunking())
    made = await b.create_batch("acme", sid, [fid, f2.id, fid])
    assert made.id.startswith("vsfb_") and [f.file_id for f in made.files] == [fid, f2.id]
    other_sid, other_fid = await _store_with_file(b, "acme", ["beta"])
    other = await b.create_batch("acme", other_sid, [other_fid])
    second = await _open(kind, tmp_path, kek, request)  # another node (or a restart) on the same data
    try:
        batch = await second.get_batch("acme", sid, made.id)
        assert (batch.id, batch.store_id, batch.created_at) == (made.id, sid, made.created_at)
        assert [(f.file_id, f.status) for f in batch.files] == [
            (fid, FileStatus.COMPLETED),
            (f2.id, FileStatus.IN_PROGRESS),
        ]
        for tenant, store_id in (("globex", sid), ("acme", other_sid)):
            with pytest.raises(NotFoundError):
                await second.get_batch(tenant, store_id, made.id)
        await second.detach_file("acme", sid, f2.id)
        assert [f.file_id for f in (await b.get_batch("acme", sid, made.id)).files] == [fid]
        await second.delete_file("acme", fid)
        assert (await b.get_batch("acme", sid, made.id)).files == ()
        await second.delete_store("acme", sid)
        with pytest.raises(NotFoundError):
            await b.get_batch("acme", sid, made.id)
        await second.erase_tenant("acme")
        with pytest.raises(NotFoundError):
            await b.get_batch("acme", other_sid, other.id)
    finally:
        await second.aclose()
    for table in ("file_batches", "batch_files"):
        assert _rows(kind, tmp_path, request, table) == 0, table


def _rows(kind: str, tmp_path: Path, request: pytest.FixtureRequest, table: str) -> int:
    """How many rows a table holds, read past the backend (``ctx_`` tables on PostgreSQL)."""
    if kind == "sqlite":
        with contextlib.closing(sqlite3.connect(tmp_path / "data" / "context.db")) as db:
            return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    with psycopg.connect(request.getfixturevalue("pg_url")) as conn:
        row = conn.execute(f"SELECT count(*) FROM ctx_{table}").fetchone()
        return int(row[0]) if row else -1


async def test_a_kek_rotation_rewraps_every_data_key(store_backend: ContextBackend) -> None:
    b = store_backend
    sid, fid = await _store_with_file(b, "acme", ["kept text"])
    assert await b.rewrap(LocalKek(os.urandom(32))) == 1
    assert await b.file_content("acme", fid) == b"raw"
    (key,) = [c.key for c in await b.fulltext("acme", sid, ["kept"], 5, None)]
    assert [c.text for c in await b.read_chunks("acme", [(sid, key)])] == ["kept text"]


async def test_postgres_holds_nothing_readable_and_another_kek_cannot_open(
    pg_url: str, kek: LocalKek
) -> None:
    b = await PostgresBackend.open(pg_url, kek)
    try:
        sid, fid = await _store_with_file(b, "acme", ["Patient Jane Roe takes metoprolol"])
    finally:
        await b.aclose()
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT name, content FROM ctx_files").fetchall()
        rows += conn.execute(f"SELECT text, text FROM ctx_chunks_{1}").fetchall()
    raw = b"".join(bytes(v) for row in rows for v in row)
    for secret in (b"Jane Roe", b"acme-notes", b"raw"):
        assert secret not in raw
    other = await PostgresBackend.open(pg_url, LocalKek(os.urandom(32)))
    try:
        with pytest.raises(AuditKeyError):
            await other.file_content("acme", fid)
        assert [s.id for s in await other.list_stores("acme")] == [sid]
    finally:
        await other.aclose()


async def test_two_nodes_on_one_database_never_search_stale_vectors(pg_url: str, kek: LocalKek) -> None:
    a = await PostgresBackend.open(pg_url, kek)
    b = await PostgresBackend.open(pg_url, kek)
    try:
        sid, fid = await _store_with_file(a, "acme", ["one", "two"], seed=10)
        assert len(await b.nearest("acme", sid, vec(10), 10, None)) == 2  # b now holds the matrix
        f = await a.put_file("acme", filename="more.txt", purpose="assistants", content=b"m")
        await a.attach_file("acme", sid, f.id, attributes={}, chunking=StaticChunking())
        new = ChunkIn(index=0, text="three", start_token=0, end_token=1, vector=vec(99))
        await a.write_chunks("acme", sid, f.id, [new])
        (top,) = await b.nearest("acme", sid, vec(99), 1, None)
        assert [c.text for c in await b.read_chunks("acme", [(sid, top.key)])] == ["three"]
        await a.delete_file("acme", fid)
        assert len(await b.nearest("acme", sid, vec(10), 10, None)) == 1
        # a store too large for the matrix budget is streamed and ranks the same
        small = await PostgresBackend.open(pg_url, kek, vector_cache_bytes=0)
        try:
            assert await small.nearest("acme", sid, vec(99), 1, None) == [top]
        finally:
            await small.aclose()
    finally:
        await a.aclose()
        await b.aclose()
