"""The embedded backend on real SQLite files: tenant isolation, encryption at rest, erasure on disk."""

from __future__ import annotations

import os
import random
import stat
import struct
from pathlib import Path

import apsw
import pytest

from audit.crypto import DecryptError
from audit.errors import AuditKeyError
from audit.kek import LocalKek
from node.context import ChunkIn, FileStatus, NotFoundError, SqliteBackend, StaticChunking

DIMS = 8


def vec(seed: int) -> bytes:
    rng = random.Random(seed)
    return struct.pack(f"<{DIMS}f", *(rng.uniform(-1, 1) for _ in range(DIMS)))


async def _store_with_file(
    backend: SqliteBackend, tenant: str, words: list[str], *, seed: int = 0, attributes: dict | None = None
) -> tuple[str, str]:
    store = await backend.create_store(
        tenant, name="s", metadata={"team": "x"}, embedding_model="m", dimensions=DIMS
    )
    f = await backend.put_file(
        tenant, filename=f"{tenant}-notes.txt", purpose="assistants", content=b"raw body"
    )
    await backend.attach_file(tenant, store.id, f.id, attributes=attributes or {}, chunking=StaticChunking())
    chunks = [
        ChunkIn(index=i, text=w, start_token=i * 10, end_token=i * 10 + 12, vector=vec(seed + i))
        for i, w in enumerate(words)
    ]
    done = await backend.write_chunks(tenant, store.id, f.id, chunks)
    assert done.status is FileStatus.COMPLETED and done.chunks == len(words)
    return store.id, f.id


async def test_another_tenants_ids_are_not_found_everywhere(backend: SqliteBackend) -> None:
    sid, fid = await _store_with_file(backend, "acme", ["alpha beta", "gamma"])
    calls = [
        backend.get_store("globex", sid),
        backend.get_file("globex", fid),
        backend.file_content("globex", fid),
        backend.list_store_files("globex", sid),
        backend.store_file("globex", sid, fid),
        backend.fulltext("globex", sid, ["alpha"], 5, None),
        backend.nearest("globex", sid, vec(0), 5, None),
        backend.read_chunks("globex", [(sid, 1)]),
        backend.detach_file("globex", sid, fid),
        backend.delete_file("globex", fid),
        backend.delete_store("globex", sid),
        backend.attach_file("globex", sid, fid, attributes={}, chunking=StaticChunking()),
    ]
    for call in calls:
        with pytest.raises(NotFoundError) as info:
            await call
        assert info.value.status_code == 404
    assert await backend.list_stores("globex") == [] and await backend.list_files("globex") == []
    # a tenant's own store with another tenant's file: still not found
    own = await backend.create_store("globex", name=None, metadata={}, embedding_model="m", dimensions=DIMS)
    with pytest.raises(NotFoundError):
        await backend.attach_file("globex", own.id, fid, attributes={}, chunking=StaticChunking())
    # and everything of acme's is intact
    assert [c.key for c in await backend.fulltext("acme", sid, ["alpha"], 5, None)] == [1]


async def test_text_names_and_contents_are_encrypted_on_disk(tmp_path: Path, backend: SqliteBackend) -> None:
    sentence = "Patient Jane Roe takes metoprolol twice daily"
    store = await backend.create_store("acme", name=None, metadata={}, embedding_model="m", dimensions=DIMS)
    f = await backend.put_file(
        "acme", filename="jane-roe-history.txt", purpose="assistants", content=b"confidential body text 4711"
    )
    await backend.attach_file("acme", store.id, f.id, attributes={}, chunking=StaticChunking())
    await backend.write_chunks(
        "acme", store.id, f.id, [ChunkIn(index=0, text=sentence, start_token=0, end_token=9, vector=vec(1))]
    )
    path = tmp_path / "data" / "context.db"
    raw = path.read_bytes() + path.with_name("context.db-wal").read_bytes()
    for secret in (sentence.encode(), b"jane-roe-history", b"confidential body text"):
        assert secret not in raw
    for p in (path, path.with_name("context.db-wal")):
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert await backend.file_content("acme", f.id) == b"confidential body text 4711"
    (chunk,) = await backend.read_chunks("acme", [(store.id, 1)])
    assert (chunk.text, chunk.filename, chunk.id) == (sentence, "jane-roe-history.txt", f"{f.id}#0")


async def test_a_ciphertext_moved_to_another_chunk_does_not_open(
    tmp_path: Path, backend: SqliteBackend
) -> None:
    sid, _ = await _store_with_file(backend, "acme", ["first chunk", "second chunk"])
    other = apsw.Connection(str(tmp_path / "data" / "context.db"))
    first, second = (bytes(r[0]) for r in other.execute("SELECT text FROM chunks ORDER BY key"))
    other.execute("UPDATE chunks SET text = ? WHERE key = 2", (first,))
    other.close()
    assert first != second
    with pytest.raises(DecryptError):
        await backend.read_chunks("acme", [(sid, 2)])


async def test_another_kek_cannot_open_the_data_keys(tmp_path: Path, backend: SqliteBackend) -> None:
    _, fid = await _store_with_file(backend, "acme", ["x"])
    other = await SqliteBackend.open(tmp_path / "data" / "context.db", LocalKek(os.urandom(32)))
    try:
        with pytest.raises(AuditKeyError):
            await other.file_content("acme", fid)
    finally:
        await other.aclose()


async def test_deleting_a_file_erases_its_tokens_vectors_and_key_from_disk(
    tmp_path: Path, backend: SqliteBackend
) -> None:
    path = tmp_path / "data" / "context.db"
    sid, fid = await _store_with_file(backend, "acme", ["zebrafinch quokka", "narwhal"], seed=100)
    keep_sid, keep_fid = await _store_with_file(backend, "acme", ["pangolin"], seed=200)
    raw = path.read_bytes() + path.with_name("context.db-wal").read_bytes()
    assert b"zebrafinch" in raw and vec(100) in raw  # the index holds tokens and vectors: see README
    erased = await backend.delete_file("acme", fid)
    assert erased.files == (fid,) and erased.chunks == 2 and erased.keys == 1
    raw = path.read_bytes() + path.with_name("context.db-wal").read_bytes()
    assert b"zebrafinch" not in raw and b"quokka" not in raw and vec(100) not in raw and vec(101) not in raw
    assert await backend.fulltext("acme", sid, ["zebrafinch", "narwhal"], 5, None) == []
    assert await backend.nearest("acme", sid, vec(100), 5, None) == []
    with pytest.raises(NotFoundError):
        await backend.get_file("acme", fid)
    # the other file is untouched
    assert [c.key for c in await backend.fulltext("acme", keep_sid, ["pangolin"], 5, None)]
    assert (await backend.store_file("acme", keep_sid, keep_fid)).chunks == 1


async def test_erasing_a_tenant_leaves_no_trace_and_spares_the_others(
    tmp_path: Path, backend: SqliteBackend
) -> None:
    path = tmp_path / "data" / "context.db"
    await _store_with_file(backend, "acme", ["axolotl secret"], seed=300)
    await _store_with_file(backend, "acme", ["capybara"], seed=400)
    other_sid, _ = await _store_with_file(backend, "globex", ["wombat"], seed=500)
    erased = await backend.erase_tenant("acme")
    assert len(erased.stores) == 2 and len(erased.files) == 2 and erased.chunks == 2 and erased.keys == 2
    raw = path.read_bytes() + path.with_name("context.db-wal").read_bytes()
    assert b"axolotl" not in raw and b"capybara" not in raw and vec(300) not in raw and vec(400) not in raw
    assert await backend.list_stores("acme") == [] and await backend.list_files("acme") == []
    assert len(await backend.fulltext("globex", other_sid, ["wombat"], 5, None)) == 1


async def test_file_filters_limit_both_indexes(backend: SqliteBackend) -> None:
    store = await backend.create_store("acme", name=None, metadata={}, embedding_model="m", dimensions=DIMS)
    ids = []
    for n in range(3):
        f = await backend.put_file("acme", filename=f"{n}.txt", purpose="assistants", content=b"x")
        await backend.attach_file("acme", store.id, f.id, attributes={"n": n}, chunking=StaticChunking())
        await backend.write_chunks(
            "acme",
            store.id,
            f.id,
            [ChunkIn(index=0, text="shared word", start_token=0, end_token=2, vector=vec(n))],
        )
        ids.append(f.id)
    assert len(await backend.fulltext("acme", store.id, ["shared"], 10, None)) == 3
    only = await backend.fulltext("acme", store.id, ["shared"], 10, [ids[1]])
    near = await backend.nearest("acme", store.id, vec(0), 10, [ids[1], ids[2]])
    chunks = await backend.read_chunks("acme", [(c.store_id, c.key) for c in only + near])
    assert [c.file_id for c in chunks[:1]] == [ids[1]] and {c.file_id for c in chunks[1:]} == {ids[1], ids[2]}
    assert await backend.fulltext("acme", store.id, ["shared"], 10, []) == []
    files = await backend.list_store_files("acme", store.id)
    assert [f.attributes for f in files] == [{"n": 0}, {"n": 1}, {"n": 2}]
    s = await backend.get_store("acme", store.id)
    assert s.file_counts["completed"] == 3 and s.usage_bytes == 3 * len("shared word")
    await backend.detach_file("acme", store.id, ids[0])
    assert len(await backend.fulltext("acme", store.id, ["shared"], 10, None)) == 2
    await backend.delete_store("acme", store.id)
    assert len(await backend.list_files("acme")) == 3  # files outlive the store


async def test_a_kek_rotation_rewraps_every_data_key(tmp_path: Path, backend: SqliteBackend) -> None:
    sid, fid = await _store_with_file(backend, "acme", ["kept text"])
    new = LocalKek(os.urandom(32))
    assert await backend.rewrap(new) == 1
    assert await backend.file_content("acme", fid) == b"raw body"
    reopened = await SqliteBackend.open(tmp_path / "data" / "context.db", new)
    try:
        (chunk,) = await reopened.read_chunks("acme", [(sid, 1)])
        assert chunk.text == "kept text"
    finally:
        await reopened.aclose()


async def test_the_schema_is_migrated_forward(tmp_path: Path, backend: SqliteBackend) -> None:
    from node.context.sqlite_schema import MIGRATIONS

    conn = apsw.Connection(str(tmp_path / "data" / "context.db"))
    try:
        assert conn.execute("PRAGMA user_version").fetchall()[0][0] == len(MIGRATIONS) == 3
        conn.execute("PRAGMA user_version = 99")
    finally:
        conn.close()
    with pytest.raises(RuntimeError, match="schema 99, newer than this code"):
        await SqliteBackend.open(tmp_path / "data" / "context.db", LocalKek(os.urandom(32)))


async def test_the_vector_cache_ranks_as_vec0_does_and_is_never_stale(
    tmp_path: Path, backend: SqliteBackend, kek: LocalKek
) -> None:
    store = await backend.create_store("acme", name=None, metadata={}, embedding_model="m", dimensions=DIMS)
    files = []
    for n in range(4):
        f = await backend.put_file("acme", filename=f"{n}.txt", purpose="assistants", content=b"x")
        await backend.attach_file("acme", store.id, f.id, attributes={}, chunking=StaticChunking())
        chunks = [
            ChunkIn(index=i, text=f"t{i}", start_token=i, end_token=i + 1, vector=vec(1000 + 10 * n + i))
            for i in range(10)
        ]
        await backend.write_chunks("acme", store.id, f.id, chunks)
        files.append(f.id)
    plain = await SqliteBackend.open(tmp_path / "data" / "context.db", kek, vector_cache_bytes=0)
    try:
        for seed, only in [(1, None), (2, [files[1], files[3]]), (3, [files[2]]), (4, [])]:
            cached = await backend.nearest("acme", store.id, vec(seed), 15, only)
            scanned = await plain.nearest("acme", store.id, vec(seed), 15, only)
            assert [c.key for c in cached] == [c.key for c in scanned]
            assert [c.raw for c in cached] == pytest.approx([c.raw for c in scanned], abs=1e-5)
    finally:
        await plain.aclose()
    # the cache follows every change: a new file, a deleted file, a re-attached one
    before = {c.key for c in await backend.nearest("acme", store.id, vec(9), 100, None)}
    assert len(before) == 40
    extra = await backend.put_file("acme", filename="x.txt", purpose="assistants", content=b"x")
    await backend.attach_file("acme", store.id, extra.id, attributes={}, chunking=StaticChunking())
    await backend.write_chunks(
        "acme", store.id, extra.id, [ChunkIn(index=0, text="new", start_token=0, end_token=1, vector=vec(9))]
    )
    (top,) = await backend.nearest("acme", store.id, vec(9), 1, None)
    assert top.key not in before and top.raw == pytest.approx(0.0, abs=1e-6)
    await backend.delete_file("acme", extra.id)
    assert {c.key for c in await backend.nearest("acme", store.id, vec(9), 100, None)} == before
    await backend.attach_file("acme", store.id, files[0], attributes={}, chunking=StaticChunking())
    assert len(await backend.nearest("acme", store.id, vec(9), 100, None)) == 30
