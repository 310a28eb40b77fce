"""The embedded context backend: one SQLite file per node (sqlite-vec + FTS5), encrypted at rest.

One thread owns the connection and runs every operation in turn (writes are
few and short; a search at a few thousand chunks takes milliseconds), so the
event loop never blocks on SQLite. Tenant isolation is structural: every
statement resolves the store or file with ``tenant = ?`` first, and a search
reads only ``fts_<n>``/``vec_<n>`` of the stores it was given, tables that hold
nothing but their store's chunks.

Erasure (a file, a store, a tenant) deletes the encrypted rows, the index
entries and the vectors (each vector overwritten with zeros before its row is
deleted, as sqlite-vec leaves a deleted vector's bytes in its chunk blob), then
merges the FTS5 index (``optimize``: no segment keeps a deleted token) and
truncates the WAL; ``secure_delete`` zeroes the freed pages; the data keys'
rows go too, so a backup of the file taken earlier cannot be read either.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import apsw
import msgspec
import numpy as np

from audit.kek import KeyEncryptionKey
from serving.errors import NotFoundError

from .fulltext_cache import FulltextCache
from .records import (
    AttributeValue,
    Candidate,
    Chunk,
    ChunkIn,
    Erased,
    FileBatch,
    FileObject,
    FileStatus,
    StaticChunking,
    StoreFile,
    VectorStore,
    store_file_of,
)
from .sealing import (
    FileKey,
    SealedChunk,
    chunk_aad,
    content_aad,
    name_aad,
    new_file_key,
    open_chunks,
    open_file_key,
    rewrap_file_key,
)
from .sqlite_erase import drop_store, erase_chunks, settle
from .sqlite_schema import create_store_tables, open_database, transaction
from .vector_cache import Matrix, VectorCache, rank

__all__ = ["SqliteBackend"]

_T = TypeVar("_T")
_json = msgspec.json.encode
_STORE_COLS = "pk, id, tenant, name, metadata, created_at, embedding_model, dimensions"
_SF_COLS = (
    ", ".join(
        (
            "s.id",
            "f.id",
            "sf.status",
            "sf.attributes",
            "sf.chunking",
            "sf.created_at",
            "sf.usage_bytes",
            "sf.chunks",
        )
    )
    + ", sf.last_error, sf.last_error_code"
)
#: a store's (first parameter) chunk keys of some files (second: their ids, a JSON list)
_KEYS_OF_FILES = (
    "SELECT c.key FROM chunks c JOIN files f ON f.pk = c.file_pk"
    " WHERE c.store_pk = ? AND f.id IN (SELECT value FROM json_each(?))"
)
_SF_FROM = "store_files sf JOIN stores s ON s.pk = sf.store_pk JOIN files f ON f.pk = sf.file_pk"


def _fts_query(terms: Sequence[str]) -> str:
    """Any of the terms, each a quoted FTS5 string (no query syntax from the caller)."""
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)


class SqliteBackend:
    """``ContextBackend`` on one SQLite database. Open with ``await SqliteBackend.open(path, kek)``."""

    def __init__(
        self,
        conn: apsw.Connection,
        kek: KeyEncryptionKey,
        pool: ThreadPoolExecutor,
        vector_cache_bytes: int,
        fulltext_cache_bytes: int,
    ) -> None:
        self._conn = conn
        self._kek = kek
        self._pool = pool
        self._vectors = VectorCache(vector_cache_bytes)
        self._fulltext = FulltextCache(fulltext_cache_bytes)
        self._rankers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="bastion-context-rank")

    @classmethod
    async def open(
        cls,
        path: str | Path,
        kek: KeyEncryptionKey,
        *,
        vector_cache_bytes: int = 256 * 2**20,
        fulltext_cache_bytes: int = 64 * 2**20,
    ) -> SqliteBackend:
        """``vector_cache_bytes``: memory for stores' vectors as matrices (``node.context.vector_cache``);
        0 searches every store with vec0. ``fulltext_cache_bytes``: memory for phrases' BM25 score
        lists (``node.context.fulltext_cache``); 0 ranks every full-text search in FTS5."""
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bastion-context")
        try:
            conn = await asyncio.get_running_loop().run_in_executor(pool, open_database, Path(path))
        except BaseException:
            pool.shutdown(wait=False)
            raise
        return cls(conn, kek, pool, vector_cache_bytes, fulltext_cache_bytes)

    async def aclose(self) -> None:
        self._vectors.clear()
        self._fulltext.clear()
        await self._run(self._conn.close)
        self._pool.shutdown(wait=True)
        self._rankers.shutdown(wait=True)

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args))

    def _all(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        """Rows as plain tuples of ``Any`` (the columns' types are the schema's)."""
        return [tuple(r) for r in self._conn.execute(sql, args)]

    def _one(self, sql: str, args: Sequence[Any], what: str) -> tuple[Any, ...]:
        row: Any = self._conn.execute(sql, args).fetchone()
        if row is None:
            raise NotFoundError(f"No such {what}.")
        return tuple(row)

    # -- files ------------------------------------------------------------------------------------

    async def put_file(self, tenant: str, *, filename: str, purpose: str, content: bytes) -> FileObject:
        return await self._run(self._put_file, tenant, filename, purpose, content)

    def _put_file(self, tenant: str, filename: str, purpose: str, content: bytes) -> FileObject:
        file_id = "file-" + secrets.token_hex(12)
        key = new_file_key(self._kek, tenant, file_id)
        now = int(time.time())
        name = key.seal(filename.encode(), name_aad(tenant, file_id))
        body = key.seal(content, content_aad(tenant, file_id))
        with transaction(self._conn):
            self._conn.execute(
                "INSERT INTO files (id, tenant, purpose, bytes, created_at, name, content)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (file_id, tenant, purpose, len(content), now, name, body),
            )
            pk = self._conn.last_insert_rowid()
            self._conn.execute("INSERT INTO file_keys VALUES (?, ?, ?)", (pk, key.kid, key.wrapped))
        return FileObject(
            id=file_id, tenant=tenant, filename=filename, bytes=len(content), purpose=purpose, created_at=now
        )

    def _file_key(self, tenant: str, file_id: str, file_pk: int) -> FileKey:
        kid, wrapped = self._one("SELECT kid, wrapped FROM file_keys WHERE file_pk = ?", (file_pk,), "file")
        return open_file_key(self._kek, tenant, file_id, bytes(kid), bytes(wrapped))

    def _file_row(self, tenant: str, file_id: str) -> tuple[Any, ...]:
        return self._one(
            "SELECT pk, id, purpose, bytes, created_at, name FROM files WHERE tenant = ? AND id = ?",
            (tenant, file_id),
            f"file '{file_id}'",
        )

    def _file_object(self, tenant: str, row: tuple[Any, ...]) -> FileObject:
        pk, file_id, purpose, size, created, name = row
        filename = self._file_key(tenant, file_id, pk).open(bytes(name), name_aad(tenant, file_id)).decode()
        return FileObject(
            id=file_id, tenant=tenant, filename=filename, bytes=size, purpose=purpose, created_at=created
        )

    async def get_file(self, tenant: str, file_id: str) -> FileObject:
        return await self._run(lambda: self._file_object(tenant, self._file_row(tenant, file_id)))

    async def list_files(self, tenant: str, *, purpose: str | None = None) -> list[FileObject]:
        def go() -> list[FileObject]:
            rows = self._all(
                "SELECT pk, id, purpose, bytes, created_at, name FROM files WHERE tenant = ?"
                " AND (? IS NULL OR purpose = ?) ORDER BY pk",
                (tenant, purpose, purpose),
            )
            return [self._file_object(tenant, tuple(r)) for r in rows]

        return await self._run(go)

    async def file_content(self, tenant: str, file_id: str) -> bytes:
        def go() -> bytes:
            pk, body = self._one(
                "SELECT pk, content FROM files WHERE tenant = ? AND id = ?",
                (tenant, file_id),
                f"file '{file_id}'",
            )
            return self._file_key(tenant, file_id, pk).open(bytes(body), content_aad(tenant, file_id))

        return await self._run(go)

    async def delete_file(self, tenant: str, file_id: str) -> Erased:
        def go() -> Erased:
            pk = self._file_row(tenant, file_id)[0]
            with transaction(self._conn):
                stores = self._all(
                    "SELECT s.pk, s.dimensions FROM store_files sf JOIN stores s ON s.pk = sf.store_pk"
                    " WHERE sf.file_pk = ?",
                    (pk,),
                )
                chunks = sum(self._erase_chunks(s, d, pk) for s, d in stores)
                self._conn.execute("DELETE FROM store_files WHERE file_pk = ?", (pk,))
                self._conn.execute("DELETE FROM batch_files WHERE file_pk = ?", (pk,))
                self._conn.execute("DELETE FROM file_keys WHERE file_pk = ?", (pk,))
                self._conn.execute("DELETE FROM files WHERE pk = ?", (pk,))
            settle(self._conn, [s for s, _ in stores])
            return Erased(files=(file_id,), chunks=chunks, keys=1)

        return await self._run(go)

    # -- stores -----------------------------------------------------------------------------------

    async def create_store(
        self,
        tenant: str,
        *,
        name: str | None,
        metadata: Mapping[str, str],
        embedding_model: str,
        dimensions: int,
    ) -> VectorStore:
        def go() -> VectorStore:
            store_id = "vs_" + secrets.token_hex(12)
            with transaction(self._conn):
                self._conn.execute(
                    "INSERT INTO stores (id, tenant, name, metadata, created_at, embedding_model, dimensions)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        store_id,
                        tenant,
                        name,
                        _json(dict(metadata)),
                        int(time.time()),
                        embedding_model,
                        dimensions,
                    ),
                )
                create_store_tables(self._conn, self._conn.last_insert_rowid(), dimensions)
            return self._store(tenant, store_id)

        return await self._run(go)

    def _store_row(self, tenant: str, store_id: str) -> tuple[Any, ...]:
        return self._one(
            f"SELECT {_STORE_COLS} FROM stores WHERE tenant = ? AND id = ?",  # noqa: S608
            (tenant, store_id),
            f"vector store '{store_id}'",
        )

    def _store(self, tenant: str, store_id: str, row: tuple[Any, ...] | None = None) -> VectorStore:
        pk, sid, _, name, metadata, created, model, dims = row or self._store_row(tenant, store_id)
        counts = {s.value: 0 for s in FileStatus}
        usage = 0
        for status, n, used in self._conn.execute(
            "SELECT status, count(*), sum(usage_bytes) FROM store_files WHERE store_pk = ? GROUP BY status",
            (pk,),
        ):
            counts[status] = n
            usage += used or 0
        return VectorStore(
            id=sid,
            tenant=tenant,
            name=name,
            metadata=msgspec.json.decode(metadata, type=dict[str, str]),
            created_at=created,
            embedding_model=model,
            dimensions=dims,
            file_counts=counts,
            usage_bytes=usage,
        )

    async def get_store(self, tenant: str, store_id: str) -> VectorStore:
        return await self._run(self._store, tenant, store_id)

    async def list_stores(self, tenant: str) -> list[VectorStore]:
        def go() -> list[VectorStore]:
            rows = self._all(
                f"SELECT {_STORE_COLS} FROM stores WHERE tenant = ? ORDER BY pk",  # noqa: S608
                (tenant,),
            )
            return [self._store(tenant, r[1], tuple(r)) for r in rows]

        return await self._run(go)

    async def delete_store(self, tenant: str, store_id: str) -> Erased:
        def go() -> Erased:
            pk = self._store_row(tenant, store_id)[0]
            with transaction(self._conn):
                chunks = self._drop_store(pk)
            settle(self._conn, [])
            return Erased(stores=(store_id,), chunks=chunks)

        return await self._run(go)

    # -- store files ------------------------------------------------------------------------------

    def _pks(self, tenant: str, store_id: str, file_id: str) -> tuple[int, int, int]:
        """(store pk, its dimensions, file pk), each the tenant's or NotFoundError."""
        store = self._store_row(tenant, store_id)
        return store[0], store[7], self._file_row(tenant, file_id)[0]

    async def attach_file(
        self,
        tenant: str,
        store_id: str,
        file_id: str,
        *,
        attributes: Mapping[str, AttributeValue],
        chunking: StaticChunking,
    ) -> StoreFile:
        def go() -> StoreFile:
            spk, dims, fpk = self._pks(tenant, store_id, file_id)
            with transaction(self._conn):
                self._erase_chunks(spk, dims, fpk)
                self._conn.execute(
                    "INSERT OR REPLACE INTO store_files (store_pk, file_pk, status, attributes, chunking,"
                    " created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        spk,
                        fpk,
                        FileStatus.IN_PROGRESS.value,
                        _json(dict(attributes)),
                        _json(chunking),
                        int(time.time()),
                    ),
                )
            return self._store_file(tenant, store_id, file_id)

        return await self._run(go)

    def _store_file(self, tenant: str, store_id: str, file_id: str) -> StoreFile:
        row = self._one(
            f"SELECT {_SF_COLS} FROM {_SF_FROM} WHERE s.tenant = ? AND s.id = ? AND f.id = ?",  # noqa: S608
            (tenant, store_id, file_id),
            f"file '{file_id}' in vector store '{store_id}'",
        )
        return store_file_of(row)

    async def store_file(self, tenant: str, store_id: str, file_id: str) -> StoreFile:
        return await self._run(self._store_file, tenant, store_id, file_id)

    async def list_store_files(self, tenant: str, store_id: str) -> list[StoreFile]:
        def go() -> list[StoreFile]:
            self._store_row(tenant, store_id)
            rows = self._all(
                f"SELECT {_SF_COLS} FROM {_SF_FROM} WHERE s.tenant = ? AND s.id = ? ORDER BY sf.rowid",  # noqa: S608
                (tenant, store_id),
            )
            return [store_file_of(tuple(r)) for r in rows]

        return await self._run(go)

    async def detach_file(self, tenant: str, store_id: str, file_id: str) -> Erased:
        def go() -> Erased:
            self._store_file(tenant, store_id, file_id)
            spk, dims, fpk = self._pks(tenant, store_id, file_id)
            with transaction(self._conn):
                chunks = self._erase_chunks(spk, dims, fpk)
                self._conn.execute("DELETE FROM store_files WHERE store_pk = ? AND file_pk = ?", (spk, fpk))
                self._conn.execute(
                    "DELETE FROM batch_files WHERE file_pk = ?"
                    " AND batch_pk IN (SELECT pk FROM file_batches WHERE store_pk = ?)",
                    (fpk, spk),
                )
            settle(self._conn, [spk])
            return Erased(files=(file_id,), chunks=chunks)

        return await self._run(go)

    # -- file batches -----------------------------------------------------------------------------

    async def create_batch(self, tenant: str, store_id: str, file_ids: Sequence[str]) -> FileBatch:
        def go() -> FileBatch:
            file_pks = [self._pks(tenant, store_id, file_id)[2] for file_id in file_ids]
            spk, batch_id = self._store_row(tenant, store_id)[0], "vsfb_" + secrets.token_hex(12)
            with transaction(self._conn):
                self._conn.execute(
                    "INSERT INTO file_batches (id, store_pk, created_at) VALUES (?, ?, ?)",
                    (batch_id, spk, int(time.time())),
                )
                bpk = self._conn.last_insert_rowid()
                for fpk in file_pks:
                    self._conn.execute("INSERT OR IGNORE INTO batch_files VALUES (?, ?)", (bpk, fpk))
            return self._batch(tenant, store_id, batch_id)

        return await self._run(go)

    def _batch(self, tenant: str, store_id: str, batch_id: str) -> FileBatch:
        spk = self._store_row(tenant, store_id)[0]
        bpk, created = self._one(
            "SELECT pk, created_at FROM file_batches WHERE id = ? AND store_pk = ?",
            (batch_id, spk),
            f"file batch '{batch_id}'",
        )
        rows = self._all(
            f"SELECT {_SF_COLS} FROM {_SF_FROM} JOIN batch_files b ON b.file_pk = sf.file_pk"  # noqa: S608
            " WHERE b.batch_pk = ? AND sf.store_pk = ? ORDER BY sf.rowid",
            (bpk, spk),
        )
        files = tuple(store_file_of(tuple(r)) for r in rows)
        return FileBatch(id=batch_id, store_id=store_id, created_at=created, files=files)

    async def get_batch(self, tenant: str, store_id: str, batch_id: str) -> FileBatch:
        return await self._run(self._batch, tenant, store_id, batch_id)

    # -- chunks and search -------------------------------------------------------------------------

    async def write_chunks(
        self, tenant: str, store_id: str, file_id: str, chunks: Sequence[ChunkIn]
    ) -> StoreFile:
        def go() -> StoreFile:
            spk, dims, fpk = self._pks(tenant, store_id, file_id)
            self._store_file(tenant, store_id, file_id)
            key = self._file_key(tenant, file_id, fpk)
            usage = 0
            with transaction(self._conn):
                self._erase_chunks(spk, dims, fpk)
                for chunk in chunks:
                    if len(chunk.vector) != 4 * dims:
                        raise ValueError(
                            f"chunk {chunk.index}: a vector of {len(chunk.vector)} bytes, not {4 * dims}"
                        )
                    text = chunk.text.encode()
                    usage += len(text)
                    self._conn.execute(
                        "INSERT INTO chunks (store_pk, file_pk, idx, start_token, end_token, text)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        (
                            spk,
                            fpk,
                            chunk.index,
                            chunk.start_token,
                            chunk.end_token,
                            key.seal(text, chunk_aad(tenant, file_id, store_id, chunk.index)),
                        ),
                    )
                    rowid = self._conn.last_insert_rowid()
                    self._conn.execute(
                        f"INSERT INTO fts_{spk} (rowid, text) VALUES (?, ?)",  # noqa: S608
                        (rowid, chunk.text),
                    )
                    self._conn.execute(
                        f"INSERT INTO vec_{spk} (rowid, embedding) VALUES (?, ?)",  # noqa: S608
                        (rowid, chunk.vector),
                    )
                self._changed(spk)
                self._conn.execute(
                    "UPDATE store_files SET status = ?, usage_bytes = ?, chunks = ?, last_error = NULL,"
                    " last_error_code = NULL"
                    " WHERE store_pk = ? AND file_pk = ?",
                    (FileStatus.COMPLETED.value, usage, len(chunks), spk, fpk),
                )
            return self._store_file(tenant, store_id, file_id)

        return await self._run(go)

    async def fail_file(self, tenant: str, store_id: str, file_id: str, code: str, error: str) -> StoreFile:
        def go() -> StoreFile:
            spk, _, fpk = self._pks(tenant, store_id, file_id)
            self._conn.execute(
                "UPDATE store_files SET status = ?, last_error = ?, last_error_code = ?"
                " WHERE store_pk = ? AND file_pk = ?",
                (FileStatus.FAILED.value, error, code, spk, fpk),
            )
            return self._store_file(tenant, store_id, file_id)

        return await self._run(go)

    def _within(self, spk: int, file_ids: Collection[str] | None) -> tuple[str, tuple[Any, ...]]:
        """A rowid condition limiting a store's index to the chunks of ``file_ids``."""
        if file_ids is None:
            return "", ()
        return f" AND rowid IN ({_KEYS_OF_FILES})", (spk, _json(sorted(file_ids)).decode())

    def _keys_of(self, spk: int, file_ids: Collection[str]) -> list[int]:
        """The store's chunk keys of ``file_ids``, ascending."""
        return [
            r[0]
            for r in self._all(_KEYS_OF_FILES + " ORDER BY c.key", (spk, _json(sorted(file_ids)).decode()))
        ]

    async def fulltext(
        self, tenant: str, store_id: str, terms: Sequence[str], k: int, file_ids: Collection[str] | None
    ) -> list[Candidate]:
        def go() -> list[Candidate]:
            spk = self._store_row(tenant, store_id)[0]
            if not terms:
                return []
            if self._fulltext.enabled:
                allowed = None
                if file_ids is not None:
                    allowed = np.array(self._keys_of(spk, file_ids), dtype=np.int64)
                found = self._fulltext.search(self._conn, spk, [_fts_query([t]) for t in terms], k, allowed)
                return [Candidate(store_id=store_id, key=key, raw=-score) for key, score in found]
            cond, args = self._within(spk, file_ids)
            rows = self._all(
                f"SELECT rowid, bm25(fts_{spk}) FROM fts_{spk} WHERE fts_{spk} MATCH ?{cond}"  # noqa: S608
                " ORDER BY rank LIMIT ?",
                (_fts_query(terms), *args, k),
            )
            return [Candidate(store_id=store_id, key=r[0], raw=r[1]) for r in rows]

        return await self._run(go)

    async def nearest(
        self, tenant: str, store_id: str, vector: bytes, k: int, file_ids: Collection[str] | None
    ) -> list[Candidate]:
        def go() -> tuple[Matrix, set[int] | None] | list[Candidate]:
            store = self._store_row(tenant, store_id)
            spk, dims = store[0], store[7]
            file_pks = None
            if file_ids is not None:
                file_pks = {
                    r[0]
                    for r in self._all(
                        "SELECT pk FROM files WHERE tenant = ? AND id IN (SELECT value FROM json_each(?))",
                        (tenant, _json(sorted(file_ids)).decode()),
                    )
                }
            matrix = self._vectors.matrix(self._conn, spk, dims)
            if matrix is not None:
                return matrix, file_pks
            if file_ids is None:
                sql = f"SELECT rowid, distance FROM vec_{spk} WHERE embedding MATCH ? AND k = ?"  # noqa: S608
                rows = self._all(sql, (vector, min(k, 4096)))
            else:
                cond, args = self._within(spk, file_ids)
                rows = self._all(
                    f"SELECT rowid, vec_distance_cosine(embedding, ?) AS d FROM vec_{spk} WHERE 1{cond}"  # noqa: S608
                    " ORDER BY d LIMIT ?",
                    (vector, *args, k),
                )
            return [Candidate(store_id=store_id, key=r[0], raw=r[1]) for r in rows]

        found = await self._run(go)
        if isinstance(found, list):
            return found
        # ranked off the database's thread (numpy lets go of the GIL): two searches rank at once
        # while the one thread serves the others' reads
        ranked = await asyncio.get_running_loop().run_in_executor(
            self._rankers, rank, found[0], vector, k, found[1]
        )
        return [Candidate(store_id=store_id, key=key, raw=d) for key, d in ranked]

    async def read_chunks(self, tenant: str, keys: Sequence[tuple[str, int]]) -> list[Chunk]:
        def go() -> list[Chunk]:
            for store_id in dict.fromkeys(s for s, _ in keys):
                self._store_row(tenant, store_id)  # NotFoundError: not the tenant's
            rows = self._conn.execute(
                "SELECT s.id, c.key, c.idx, c.start_token, c.end_token, c.text, f.pk, f.id, f.name, k.kid,"
                " k.wrapped, sf.attributes"
                " FROM chunks c JOIN stores s ON s.pk = c.store_pk JOIN files f ON f.pk = c.file_pk"
                " JOIN file_keys k ON k.file_pk = f.pk"
                " JOIN store_files sf ON sf.store_pk = c.store_pk AND sf.file_pk = c.file_pk"
                " WHERE c.key IN (SELECT value FROM json_each(?)) AND s.tenant = ?",
                (_json(sorted({k for _, k in keys})).decode(), tenant),
            )
            return open_chunks(self._kek, tenant, keys, (SealedChunk(*r) for r in rows))

        return await self._run(go)

    # -- erasure ----------------------------------------------------------------------------------

    async def erase_tenant(self, tenant: str) -> Erased:
        def go() -> Erased:
            stores = self._all("SELECT pk, id FROM stores WHERE tenant = ?", (tenant,))
            files = self._all("SELECT pk, id FROM files WHERE tenant = ?", (tenant,))
            with transaction(self._conn):
                chunks = sum(self._drop_store(pk) for pk, _ in stores)
                for pk, _ in files:
                    self._conn.execute("DELETE FROM store_files WHERE file_pk = ?", (pk,))
                    self._conn.execute("DELETE FROM file_keys WHERE file_pk = ?", (pk,))
                self._conn.execute("DELETE FROM files WHERE tenant = ?", (tenant,))
            settle(self._conn, [])
            return Erased(
                stores=tuple(s for _, s in stores),
                files=tuple(f for _, f in files),
                chunks=chunks,
                keys=len(files),
            )

        return await self._run(go)

    async def rewrap(self, new_kek: KeyEncryptionKey) -> int:
        """Every file's data key rewrapped under ``new_kek`` in one transaction (a KEK rotation);
        returns how many. From then on this backend uses ``new_kek``."""

        def go() -> int:
            rows = self._all(
                "SELECT k.file_pk, k.kid, k.wrapped, f.tenant, f.id"
                " FROM file_keys k JOIN files f ON f.pk = k.file_pk"
            )
            with transaction(self._conn):
                for pk, kid, wrapped, tenant, file_id in rows:
                    again = rewrap_file_key(self._kek, new_kek, tenant, file_id, bytes(kid), bytes(wrapped))
                    self._conn.execute("UPDATE file_keys SET wrapped = ? WHERE file_pk = ?", (again, pk))
            settle(self._conn, [])
            self._kek = new_kek
            return len(rows)

        return await self._run(go)

    def _changed(self, store_pk: int) -> None:
        """The store's chunks changed: its cached vectors and score lists go."""
        self._vectors.drop(store_pk)
        self._fulltext.drop(store_pk)

    def _erase_chunks(self, store_pk: int, dimensions: int, file_pk: int) -> int:
        self._changed(store_pk)
        return erase_chunks(self._conn, store_pk, dimensions, file_pk)

    def _drop_store(self, store_pk: int) -> int:
        self._changed(store_pk)
        return drop_store(self._conn, store_pk)
