"""The PostgreSQL backend's schema: shared tables, one chunk table per vector store, migrations, erasure.

Tables (prefix ``ctx_``): ``ctx_stores``, ``ctx_files`` (name and contents
encrypted), ``ctx_file_keys`` (wrapped data keys), ``ctx_store_files``,
``ctx_file_batches`` and ``ctx_batch_files`` (a batch's store and files) and, per
store, ``ctx_chunks_<n>``: each chunk's encrypted text, its ``tsvector``
(``english``: stemmed lexemes and positions, never the text) under a GIN index,
and its vector (little-endian float32 ``bytea``). A store's chunks live in its
own table with its own full-text index, as the SQLite backend's do, so a
search reads nothing of another store or tenant. ``ctx_stores.version`` grows
with every change of a store's chunks: nodes sharing the database check it
before using their in-memory vectors.

PostgreSQL has no ``secure_delete``: an erasure deletes the rows, then
``VACUUM FULL`` rewrites the touched chunk tables and the key table (the old
files are unlinked), and the data keys are gone, so the text is
crypto-shredded. Until the server recycles its WAL segments they still hold the
deleted tokens and vectors (see the README's threat model).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

__all__ = ["MIGRATIONS", "chunk_table", "create_store_table", "migrate", "vacuum"]

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE ctx_stores (
        pk BIGSERIAL PRIMARY KEY, id TEXT NOT NULL UNIQUE, tenant TEXT NOT NULL, name TEXT,
        metadata TEXT NOT NULL, created_at BIGINT NOT NULL,
        embedding_model TEXT NOT NULL, dimensions INTEGER NOT NULL, version BIGINT NOT NULL DEFAULT 0);
    CREATE INDEX ctx_stores_tenant ON ctx_stores (tenant, pk);
    CREATE TABLE ctx_files (
        pk BIGSERIAL PRIMARY KEY, id TEXT NOT NULL UNIQUE, tenant TEXT NOT NULL, purpose TEXT NOT NULL,
        bytes BIGINT NOT NULL, created_at BIGINT NOT NULL, name BYTEA NOT NULL, content BYTEA NOT NULL);
    CREATE INDEX ctx_files_tenant ON ctx_files (tenant, pk);
    CREATE TABLE ctx_file_keys (file_pk BIGINT PRIMARY KEY, kid BYTEA NOT NULL, wrapped BYTEA NOT NULL);
    CREATE TABLE ctx_store_files (
        seq BIGSERIAL, store_pk BIGINT NOT NULL, file_pk BIGINT NOT NULL, status TEXT NOT NULL,
        attributes TEXT NOT NULL, chunking TEXT NOT NULL, created_at BIGINT NOT NULL,
        usage_bytes BIGINT NOT NULL DEFAULT 0, chunks INTEGER NOT NULL DEFAULT 0,
        last_error TEXT, last_error_code TEXT, PRIMARY KEY (store_pk, file_pk));
    CREATE INDEX ctx_store_files_file ON ctx_store_files (file_pk);
    """,
    # file batches: the store they belong to and the files they added
    """
    CREATE TABLE ctx_file_batches (
        pk BIGSERIAL PRIMARY KEY, id TEXT NOT NULL UNIQUE, store_pk BIGINT NOT NULL,
        created_at BIGINT NOT NULL);
    CREATE INDEX ctx_file_batches_store ON ctx_file_batches (store_pk);
    CREATE TABLE ctx_batch_files (
        batch_pk BIGINT NOT NULL, file_pk BIGINT NOT NULL, PRIMARY KEY (batch_pk, file_pk));
    CREATE INDEX ctx_batch_files_file ON ctx_batch_files (file_pk);
    """,
)
#: serialises migrations between nodes starting at once (an arbitrary constant: "ctx" in ASCII)
_LOCK = 0x637478


def chunk_table(store_pk: int) -> str:
    return f"ctx_chunks_{int(store_pk)}"


async def migrate(conn: psycopg.AsyncConnection[Any]) -> None:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
        await conn.execute("CREATE TABLE IF NOT EXISTS ctx_schema (version INTEGER NOT NULL)")
        row = await (await conn.execute("SELECT version FROM ctx_schema")).fetchone()
        version = int(row[0]) if row else 0
        if version > len(MIGRATIONS):
            raise RuntimeError(
                f"the context database is at schema {version}, newer than this code ({len(MIGRATIONS)})"
            )
        for number in range(version, len(MIGRATIONS)):
            await conn.execute(MIGRATIONS[number])
        if row is None:
            await conn.execute("INSERT INTO ctx_schema VALUES (%s)", (len(MIGRATIONS),))
        else:
            await conn.execute("UPDATE ctx_schema SET version = %s", (len(MIGRATIONS),))


async def create_store_table(conn: psycopg.AsyncConnection[Any], store_pk: int) -> None:
    table = chunk_table(store_pk)
    await conn.execute(
        f"CREATE TABLE {table} (key BIGSERIAL PRIMARY KEY, file_pk BIGINT NOT NULL,"
        " idx INTEGER NOT NULL, start_token INTEGER NOT NULL, end_token INTEGER NOT NULL,"
        " text BYTEA NOT NULL, tsv TSVECTOR NOT NULL, vector BYTEA NOT NULL, UNIQUE (file_pk, idx))"
    )
    await conn.execute(f"CREATE INDEX {table}_tsv ON {table} USING GIN (tsv)")


async def vacuum(conn: psycopg.AsyncConnection[Any], store_pks: Sequence[int]) -> None:
    """After an erasure committed (``conn`` in autocommit): rewrite the touched tables so the deleted
    rows' bytes are not left in their files."""
    tables = [chunk_table(pk) for pk in store_pks]
    for table in [*tables, "ctx_file_keys", "ctx_store_files"]:
        exists = await (await conn.execute("SELECT to_regclass(%s)", (table,))).fetchone()
        if exists and exists[0] is not None:
            await conn.execute(f"VACUUM FULL {table}")
