"""The fleet context backend: the ``ContextBackend`` Protocol on PostgreSQL (the fleet's [state] server).

Same records, same encryption (``node.context.sealing``: a data key per file
under the node's KEK, every ciphertext bound to its tenant, file, store and
chunk), same isolation by structure: every statement resolves the store or file
with ``tenant = %s`` first, and each store's chunks, ``tsvector`` index and
vectors live in a table of their own (``node.context.postgres_schema``).

Full text: ``to_tsvector('english', ...)`` per chunk under a GIN index, each
query term a ``phraseto_tsquery`` (an identifier such as ``AC-1234/7`` stays a
phrase), ranked by ``ts_rank`` (term frequency weighted by the document's length;
not BM25's IDF, so a rare term counts no more than a common one).

Vectors: no vector extension is needed. A store's vectors are ranked exactly in
the node's memory (``node.context.vector_cache``): a store that fits
``vector_cache_bytes`` is loaded as one matrix and reused while the store's
``version`` is unchanged (any node's write bumps it, so no node searches stale
vectors); a larger store is streamed from the server in batches for each query
(correct, but a few hundred ms per million chunks: that size wants pgvector's
approximate indexes, which this module does not use yet).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import msgspec
import psycopg
from psycopg_pool import AsyncConnectionPool

from audit.kek import KeyEncryptionKey
from serving.errors import NotFoundError

from .postgres_rows import STORE_COLS, vector_store_of
from .postgres_schema import chunk_table, create_store_table, migrate, vacuum
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
from .vector_cache import Matrix, rank

__all__ = ["PostgresBackend"]

_Conn = psycopg.AsyncConnection[Any]
_json = msgspec.json.encode
_SF = (
    "SELECT s.id, f.id, sf.status, sf.attributes, sf.chunking, sf.created_at, sf.usage_bytes, sf.chunks,"
    " sf.last_error, sf.last_error_code FROM ctx_store_files sf JOIN ctx_stores s ON s.pk = sf.store_pk"
    " JOIN ctx_files f ON f.pk = sf.file_pk WHERE s.tenant = %s AND s.id = %s"
)
_STREAM_ROWS = 20_000


async def _one(conn: _Conn, sql: str, args: Sequence[Any], what: str) -> tuple[Any, ...]:
    row = await (await conn.execute(sql, args)).fetchone()
    if row is None:
        raise NotFoundError(f"No such {what}.")
    return tuple(row)


async def _all(conn: _Conn, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in await (await conn.execute(sql, args)).fetchall()]


async def _store_row(conn: _Conn, tenant: str, store_id: str) -> tuple[Any, ...]:
    return await _one(
        conn,
        f"SELECT {STORE_COLS} FROM ctx_stores WHERE tenant = %s AND id = %s",  # noqa: S608
        (tenant, store_id),
        f"vector store '{store_id}'",
    )


async def _file_row(conn: _Conn, tenant: str, file_id: str) -> tuple[Any, ...]:
    return await _one(
        conn,
        "SELECT pk, id, purpose, bytes, created_at, name FROM ctx_files WHERE tenant = %s AND id = %s",
        (tenant, file_id),
        f"file '{file_id}'",
    )


class PostgresBackend:
    """``ContextBackend`` on PostgreSQL. Open with ``await PostgresBackend.open(url, kek)``."""

    def __init__(
        self, pool: AsyncConnectionPool[Any], kek: KeyEncryptionKey, vector_cache_bytes: int
    ) -> None:
        self._pool = pool
        self._kek = kek
        self._max_bytes = vector_cache_bytes
        #: store pk -> (version, matrix): the stores whose vectors fit, as of that version
        self._matrices: dict[int, tuple[int, Matrix]] = {}

    @classmethod
    async def open(
        cls,
        url: str,
        kek: KeyEncryptionKey,
        *,
        vector_cache_bytes: int = 256 * 2**20,
        max_connections: int = 8,
    ) -> PostgresBackend:
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=max_connections,
            open=False,
            kwargs={"autocommit": True},
            name="bastion-context",
        )
        await pool.open(wait=True)
        try:
            async with pool.connection() as conn:
                await migrate(conn)
        except BaseException:
            await pool.close()
            raise
        return cls(pool, kek, vector_cache_bytes)

    async def aclose(self) -> None:
        self._matrices.clear()
        await self._pool.close()

    # -- files ------------------------------------------------------------------------------------

    async def put_file(self, tenant: str, *, filename: str, purpose: str, content: bytes) -> FileObject:
        file_id = "file-" + secrets.token_hex(12)
        key = new_file_key(self._kek, tenant, file_id)
        now = int(time.time())
        name = key.seal(filename.encode(), name_aad(tenant, file_id))
        body = key.seal(content, content_aad(tenant, file_id))
        async with self._pool.connection() as conn, conn.transaction():
            (pk,) = await _one(
                conn,
                "INSERT INTO ctx_files (id, tenant, purpose, bytes, created_at, name, content)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING pk",
                (file_id, tenant, purpose, len(content), now, name, body),
                "file",
            )
            await conn.execute("INSERT INTO ctx_file_keys VALUES (%s, %s, %s)", (pk, key.kid, key.wrapped))
        return FileObject(
            id=file_id, tenant=tenant, filename=filename, bytes=len(content), purpose=purpose, created_at=now
        )

    async def _file_key(self, conn: _Conn, tenant: str, file_id: str, file_pk: int) -> FileKey:
        kid, wrapped = await _one(
            conn, "SELECT kid, wrapped FROM ctx_file_keys WHERE file_pk = %s", (file_pk,), "file"
        )
        return open_file_key(self._kek, tenant, file_id, bytes(kid), bytes(wrapped))

    async def _file_object(self, conn: _Conn, tenant: str, row: tuple[Any, ...]) -> FileObject:
        pk, file_id, purpose, size, created, name = row
        key = await self._file_key(conn, tenant, file_id, pk)
        filename = key.open(bytes(name), name_aad(tenant, file_id)).decode()
        return FileObject(
            id=file_id, tenant=tenant, filename=filename, bytes=size, purpose=purpose, created_at=created
        )

    async def get_file(self, tenant: str, file_id: str) -> FileObject:
        async with self._pool.connection() as conn:
            return await self._file_object(conn, tenant, await _file_row(conn, tenant, file_id))

    async def list_files(self, tenant: str, *, purpose: str | None = None) -> list[FileObject]:
        async with self._pool.connection() as conn:
            rows = await _all(
                conn,
                "SELECT pk, id, purpose, bytes, created_at, name FROM ctx_files WHERE tenant = %s"
                " AND (%s::text IS NULL OR purpose = %s) ORDER BY pk",
                (tenant, purpose, purpose),
            )
            return [await self._file_object(conn, tenant, r) for r in rows]

    async def file_content(self, tenant: str, file_id: str) -> bytes:
        async with self._pool.connection() as conn:
            pk, body = await _one(
                conn,
                "SELECT pk, content FROM ctx_files WHERE tenant = %s AND id = %s",
                (tenant, file_id),
                f"file '{file_id}'",
            )
            key = await self._file_key(conn, tenant, file_id, pk)
            return key.open(bytes(body), content_aad(tenant, file_id))

    async def delete_file(self, tenant: str, file_id: str) -> Erased:
        async with self._pool.connection() as conn:
            async with conn.transaction():
                pk = (await _file_row(conn, tenant, file_id))[0]
                stores = [
                    r[0]
                    for r in await _all(
                        conn, "SELECT store_pk FROM ctx_store_files WHERE file_pk = %s", (pk,)
                    )
                ]
                chunks = 0
                for spk in stores:
                    chunks += await self._erase_chunks(conn, spk, pk)
                await conn.execute("DELETE FROM ctx_store_files WHERE file_pk = %s", (pk,))
                await conn.execute("DELETE FROM ctx_batch_files WHERE file_pk = %s", (pk,))
                await conn.execute("DELETE FROM ctx_file_keys WHERE file_pk = %s", (pk,))
                await conn.execute("DELETE FROM ctx_files WHERE pk = %s", (pk,))
            await vacuum(conn, stores)
        return Erased(files=(file_id,), chunks=chunks, keys=1)

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
        store_id = "vs_" + secrets.token_hex(12)
        async with self._pool.connection() as conn:
            async with conn.transaction():
                (pk,) = await _one(
                    conn,
                    "INSERT INTO ctx_stores (id, tenant, name, metadata, created_at, embedding_model,"
                    " dimensions) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING pk",
                    (
                        store_id,
                        tenant,
                        name,
                        _json(dict(metadata)).decode(),
                        int(time.time()),
                        embedding_model,
                        dimensions,
                    ),
                    "store",
                )
                await create_store_table(conn, pk)
            return await self._store(conn, await _store_row(conn, tenant, store_id))

    async def _store(self, conn: _Conn, row: tuple[Any, ...]) -> VectorStore:
        counts = await _all(
            conn,
            "SELECT status, count(*), sum(usage_bytes) FROM ctx_store_files WHERE store_pk = %s"
            " GROUP BY status",
            (row[0],),
        )
        return vector_store_of(row, counts)

    async def get_store(self, tenant: str, store_id: str) -> VectorStore:
        async with self._pool.connection() as conn:
            return await self._store(conn, await _store_row(conn, tenant, store_id))

    async def list_stores(self, tenant: str) -> list[VectorStore]:
        async with self._pool.connection() as conn:
            rows = await _all(
                conn,
                f"SELECT {STORE_COLS} FROM ctx_stores WHERE tenant = %s ORDER BY pk",  # noqa: S608
                (tenant,),
            )
            return [await self._store(conn, r) for r in rows]

    async def delete_store(self, tenant: str, store_id: str) -> Erased:
        async with self._pool.connection() as conn:
            async with conn.transaction():
                pk = (await _store_row(conn, tenant, store_id))[0]
                chunks = await self._drop_store(conn, pk)
            await vacuum(conn, [])
        return Erased(stores=(store_id,), chunks=chunks)

    # -- store files ------------------------------------------------------------------------------

    async def _pks(self, conn: _Conn, tenant: str, store_id: str, file_id: str) -> tuple[int, int]:
        store = await _store_row(conn, tenant, store_id)
        return store[0], (await _file_row(conn, tenant, file_id))[0]

    async def attach_file(
        self,
        tenant: str,
        store_id: str,
        file_id: str,
        *,
        attributes: Mapping[str, AttributeValue],
        chunking: StaticChunking,
    ) -> StoreFile:
        async with self._pool.connection() as conn:
            async with conn.transaction():
                spk, fpk = await self._pks(conn, tenant, store_id, file_id)
                await self._erase_chunks(conn, spk, fpk)
                await conn.execute(
                    "INSERT INTO ctx_store_files (store_pk, file_pk, status, attributes, chunking,"
                    " created_at) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (store_pk, file_pk) DO UPDATE"
                    " SET status = excluded.status, attributes = excluded.attributes,"
                    " chunking = excluded.chunking,"
                    " created_at = excluded.created_at, usage_bytes = 0, chunks = 0, last_error = NULL,"
                    " last_error_code = NULL",
                    (
                        spk,
                        fpk,
                        FileStatus.IN_PROGRESS.value,
                        _json(dict(attributes)).decode(),
                        _json(chunking).decode(),
                        int(time.time()),
                    ),
                )
            return await self._store_file(conn, tenant, store_id, file_id)

    async def _store_file(self, conn: _Conn, tenant: str, store_id: str, file_id: str) -> StoreFile:
        row = await _one(
            conn,
            _SF + " AND f.id = %s",
            (tenant, store_id, file_id),
            f"file '{file_id}' in vector store '{store_id}'",
        )
        return store_file_of(row)

    async def store_file(self, tenant: str, store_id: str, file_id: str) -> StoreFile:
        async with self._pool.connection() as conn:
            return await self._store_file(conn, tenant, store_id, file_id)

    async def list_store_files(self, tenant: str, store_id: str) -> list[StoreFile]:
        async with self._pool.connection() as conn:
            await _store_row(conn, tenant, store_id)
            return [store_file_of(r) for r in await _all(conn, _SF + " ORDER BY sf.seq", (tenant, store_id))]

    async def detach_file(self, tenant: str, store_id: str, file_id: str) -> Erased:
        async with self._pool.connection() as conn:
            async with conn.transaction():
                await self._store_file(conn, tenant, store_id, file_id)
                spk, fpk = await self._pks(conn, tenant, store_id, file_id)
                chunks = await self._erase_chunks(conn, spk, fpk)
                await conn.execute(
                    "DELETE FROM ctx_store_files WHERE store_pk = %s AND file_pk = %s", (spk, fpk)
                )
                await conn.execute(
                    "DELETE FROM ctx_batch_files WHERE file_pk = %s"
                    " AND batch_pk IN (SELECT pk FROM ctx_file_batches WHERE store_pk = %s)",
                    (fpk, spk),
                )
            await vacuum(conn, [spk])
        return Erased(files=(file_id,), chunks=chunks)

    # -- file batches -----------------------------------------------------------------------------

    async def create_batch(self, tenant: str, store_id: str, file_ids: Sequence[str]) -> FileBatch:
        batch_id = "vsfb_" + secrets.token_hex(12)
        async with self._pool.connection() as conn:
            async with conn.transaction():
                file_pks = [(await self._pks(conn, tenant, store_id, f))[1] for f in file_ids]
                spk = (await _store_row(conn, tenant, store_id))[0]
                (bpk,) = await _one(
                    conn,
                    "INSERT INTO ctx_file_batches (id, store_pk, created_at) VALUES (%s, %s, %s)"
                    " RETURNING pk",
                    (batch_id, spk, int(time.time())),
                    "file batch",
                )
                for fpk in file_pks:
                    await conn.execute(
                        "INSERT INTO ctx_batch_files VALUES (%s, %s) ON CONFLICT DO NOTHING", (bpk, fpk)
                    )
            return await self._batch(conn, tenant, store_id, batch_id)

    async def _batch(self, conn: _Conn, tenant: str, store_id: str, batch_id: str) -> FileBatch:
        spk = (await _store_row(conn, tenant, store_id))[0]
        bpk, created = await _one(
            conn,
            "SELECT pk, created_at FROM ctx_file_batches WHERE id = %s AND store_pk = %s",
            (batch_id, spk),
            f"file batch '{batch_id}'",
        )
        rows = await _all(
            conn,
            _SF + " AND sf.file_pk IN (SELECT file_pk FROM ctx_batch_files WHERE batch_pk = %s)"  # noqa: S608
            " ORDER BY sf.seq",
            (tenant, store_id, bpk),
        )
        files = tuple(store_file_of(r) for r in rows)
        return FileBatch(id=batch_id, store_id=store_id, created_at=created, files=files)

    async def get_batch(self, tenant: str, store_id: str, batch_id: str) -> FileBatch:
        async with self._pool.connection() as conn:
            return await self._batch(conn, tenant, store_id, batch_id)

    # -- chunks and search -------------------------------------------------------------------------

    async def write_chunks(
        self, tenant: str, store_id: str, file_id: str, chunks: Sequence[ChunkIn]
    ) -> StoreFile:
        async with self._pool.connection() as conn:
            async with conn.transaction():
                store = await _store_row(conn, tenant, store_id)
                spk, dims = store[0], store[7]
                fpk = (await _file_row(conn, tenant, file_id))[0]
                await self._store_file(conn, tenant, store_id, file_id)
                key = await self._file_key(conn, tenant, file_id, fpk)
                await self._erase_chunks(conn, spk, fpk)
                rows = []
                usage = 0
                for chunk in chunks:
                    if len(chunk.vector) != 4 * dims:
                        raise ValueError(
                            f"chunk {chunk.index}: a vector of {len(chunk.vector)} bytes, not {4 * dims}"
                        )
                    text = chunk.text.encode()
                    usage += len(text)
                    sealed = key.seal(text, chunk_aad(tenant, file_id, store_id, chunk.index))
                    rows.append(
                        (
                            fpk,
                            chunk.index,
                            chunk.start_token,
                            chunk.end_token,
                            sealed,
                            chunk.text,
                            chunk.vector,
                        )
                    )
                async with conn.cursor() as cur:
                    await cur.executemany(
                        f"INSERT INTO {chunk_table(spk)} (file_pk, idx, start_token, end_token, text,"  # noqa: S608
                        " tsv, vector) VALUES (%s, %s, %s, %s, %s, to_tsvector('english', %s), %s)",
                        rows,
                    )
                await conn.execute(
                    "UPDATE ctx_store_files SET status = %s, usage_bytes = %s, chunks = %s,"
                    " last_error = NULL, last_error_code = NULL WHERE store_pk = %s AND file_pk = %s",
                    (FileStatus.COMPLETED.value, usage, len(chunks), spk, fpk),
                )
            return await self._store_file(conn, tenant, store_id, file_id)

    async def fail_file(self, tenant: str, store_id: str, file_id: str, code: str, error: str) -> StoreFile:
        async with self._pool.connection() as conn:
            spk, fpk = await self._pks(conn, tenant, store_id, file_id)
            await conn.execute(
                "UPDATE ctx_store_files SET status = %s, last_error = %s, last_error_code = %s"
                " WHERE store_pk = %s AND file_pk = %s",
                (FileStatus.FAILED.value, error, code, spk, fpk),
            )
            return await self._store_file(conn, tenant, store_id, file_id)

    async def _file_pks(self, conn: _Conn, tenant: str, file_ids: Collection[str]) -> list[int]:
        rows = await _all(
            conn, "SELECT pk FROM ctx_files WHERE tenant = %s AND id = ANY(%s)", (tenant, sorted(file_ids))
        )
        return [r[0] for r in rows]

    async def fulltext(
        self, tenant: str, store_id: str, terms: Sequence[str], k: int, file_ids: Collection[str] | None
    ) -> list[Candidate]:
        async with self._pool.connection() as conn:
            spk = (await _store_row(conn, tenant, store_id))[0]
            if not terms:
                return []
            args: tuple[list[int], ...]
            query = " || ".join(["phraseto_tsquery('english', %s)"] * len(terms))
            cond, args = "", ()
            if file_ids is not None:
                cond, args = " AND file_pk = ANY(%s)", (await self._file_pks(conn, tenant, file_ids),)
            rows = await _all(
                conn,
                f"SELECT key, ts_rank(tsv, q) AS r FROM {chunk_table(spk)}, ({'SELECT ' + query}) AS t(q)"  # noqa: S608
                f" WHERE tsv @@ q{cond} ORDER BY r DESC, key LIMIT %s",
                (*terms, *args, k),
            )
        return [Candidate(store_id=store_id, key=r[0], raw=-float(r[1])) for r in rows]

    async def nearest(
        self, tenant: str, store_id: str, vector: bytes, k: int, file_ids: Collection[str] | None
    ) -> list[Candidate]:
        async with self._pool.connection() as conn:
            store = await _store_row(conn, tenant, store_id)
            spk, dims, version = store[0], store[7], store[8]
            file_pks = None if file_ids is None else await self._file_pks(conn, tenant, file_ids)
            cached = self._matrices.get(spk)
            if cached is None or cached[0] != version:
                cached = await self._load(conn, spk, dims, version)
            if cached is not None:
                found = rank(cached[1], vector, k, file_pks)
            else:
                found = await self._stream(conn, spk, dims, vector, k, file_pks)
        return [Candidate(store_id=store_id, key=key, raw=d) for key, d in found]

    async def _load(self, conn: _Conn, spk: int, dims: int, version: int) -> tuple[int, Matrix] | None:
        self._matrices.pop(spk, None)
        (count,) = await _one(conn, f"SELECT count(*) FROM {chunk_table(spk)}", (), "store")  # noqa: S608
        used = sum(m.nbytes for _, m in self._matrices.values())
        if int(count) * (dims * 4 + 16) > self._max_bytes - used:
            return None
        rows = await _all(conn, f"SELECT key, file_pk, vector FROM {chunk_table(spk)} ORDER BY key")  # noqa: S608
        self._matrices[spk] = (version, Matrix.of(rows, dims))
        return self._matrices[spk]

    async def _stream(
        self, conn: _Conn, spk: int, dims: int, vector: bytes, k: int, file_pks: Collection[int] | None
    ) -> list[tuple[int, float]]:
        best: list[tuple[int, float]] = []
        async with conn.transaction(), conn.cursor(name="ctx_scan") as cur:
            await cur.execute(f"SELECT key, file_pk, vector FROM {chunk_table(spk)}")  # noqa: S608
            while rows := await cur.fetchmany(_STREAM_ROWS):
                best = sorted(
                    [*best, *rank(Matrix.of(rows, dims), vector, k, file_pks)], key=lambda p: (p[1], p[0])
                )[:k]
        return best

    async def read_chunks(self, tenant: str, keys: Sequence[tuple[str, int]]) -> list[Chunk]:
        rows: list[SealedChunk] = []
        async with self._pool.connection() as conn:
            for store_id in dict.fromkeys(s for s, _ in keys):
                spk = (await _store_row(conn, tenant, store_id))[0]  # NotFoundError: not the tenant's
                wanted = sorted({k for s, k in keys if s == store_id})
                found = await _all(
                    conn,
                    "SELECT %s::text, c.key, c.idx, c.start_token, c.end_token, c.text, f.pk, f.id, f.name,"  # noqa: S608
                    f" k.kid, k.wrapped, sf.attributes FROM {chunk_table(spk)} c"
                    " JOIN ctx_files f ON f.pk = c.file_pk JOIN ctx_file_keys k ON k.file_pk = f.pk"
                    " JOIN ctx_store_files sf ON sf.store_pk = %s AND sf.file_pk = c.file_pk"
                    " WHERE c.key = ANY(%s)",
                    (store_id, spk, wanted),
                )
                rows += (SealedChunk(*r) for r in found)
        return open_chunks(self._kek, tenant, keys, rows)

    # -- erasure ----------------------------------------------------------------------------------

    async def erase_tenant(self, tenant: str) -> Erased:
        async with self._pool.connection() as conn:
            async with conn.transaction():
                stores = await _all(
                    conn, "SELECT pk, id FROM ctx_stores WHERE tenant = %s ORDER BY pk", (tenant,)
                )
                files = await _all(
                    conn, "SELECT pk, id FROM ctx_files WHERE tenant = %s ORDER BY pk", (tenant,)
                )
                chunks = 0
                for pk, _ in stores:
                    chunks += await self._drop_store(conn, pk)
                pks = [pk for pk, _ in files]
                await conn.execute("DELETE FROM ctx_store_files WHERE file_pk = ANY(%s)", (pks,))
                await conn.execute("DELETE FROM ctx_file_keys WHERE file_pk = ANY(%s)", (pks,))
                await conn.execute("DELETE FROM ctx_files WHERE tenant = %s", (tenant,))
            await vacuum(conn, [])
        return Erased(
            stores=tuple(s for _, s in stores),
            files=tuple(f for _, f in files),
            chunks=chunks,
            keys=len(files),
        )

    async def rewrap(self, new_kek: KeyEncryptionKey) -> int:
        """Every file's data key rewrapped under ``new_kek`` in one transaction; returns how many."""
        async with self._pool.connection() as conn:
            async with conn.transaction():
                rows = await _all(
                    conn,
                    "SELECT k.file_pk, k.kid, k.wrapped, f.tenant, f.id FROM ctx_file_keys k"
                    " JOIN ctx_files f ON f.pk = k.file_pk FOR UPDATE",
                )
                for pk, kid, wrapped, tenant, file_id in rows:
                    again = rewrap_file_key(self._kek, new_kek, tenant, file_id, bytes(kid), bytes(wrapped))
                    await conn.execute(
                        "UPDATE ctx_file_keys SET wrapped = %s WHERE file_pk = %s", (again, pk)
                    )
            await vacuum(conn, [])
        self._kek = new_kek
        return len(rows)

    async def _erase_chunks(self, conn: _Conn, store_pk: int, file_pk: int) -> int:
        cur = await conn.execute(f"DELETE FROM {chunk_table(store_pk)} WHERE file_pk = %s", (file_pk,))  # noqa: S608
        await conn.execute("UPDATE ctx_stores SET version = version + 1 WHERE pk = %s", (store_pk,))
        self._matrices.pop(store_pk, None)
        return cur.rowcount

    async def _drop_store(self, conn: _Conn, store_pk: int) -> int:
        (count,) = await _one(conn, f"SELECT count(*) FROM {chunk_table(store_pk)}", (), "store")  # noqa: S608
        await conn.execute(f"DROP TABLE IF EXISTS {chunk_table(store_pk)}")
        await conn.execute("DELETE FROM ctx_store_files WHERE store_pk = %s", (store_pk,))
        await conn.execute(
            "DELETE FROM ctx_batch_files WHERE batch_pk IN"
            " (SELECT pk FROM ctx_file_batches WHERE store_pk = %s)",
            (store_pk,),
        )
        await conn.execute("DELETE FROM ctx_file_batches WHERE store_pk = %s", (store_pk,))
        await conn.execute("DELETE FROM ctx_stores WHERE pk = %s", (store_pk,))
        self._matrices.pop(store_pk, None)
        return int(count)
