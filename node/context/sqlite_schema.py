"""The SQLite backend's database: opening it (0600, sqlite-vec loaded), its migrations, per-store tables.

Python's own ``sqlite3`` here is built without extension loading, so the
backend uses ``apsw`` (its SQLite is bundled, 3.50+, with FTS5 and
``contentless_delete``) and loads ``sqlite-vec`` into it.

Each vector store gets two tables of its own, named by the store's row number:
``fts_<n>``, a contentless FTS5 index (it holds the tokens and their positions,
never a copy of the text), and ``vec_<n>``, a sqlite-vec ``vec0`` table of the
chunks' vectors (cosine distance). The ``chunks`` table holds each chunk's text
encrypted, keyed by the rowid both indexes use. Migrations are forward-only and
numbered; ``secure_delete`` is on, so what an erasure deletes is overwritten.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import sqlite_vec

from audit.private import private_sqlite

__all__ = ["MIGRATIONS", "create_store_tables", "drop_store_tables", "open_database", "transaction"]

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE stores (
        pk INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, tenant TEXT NOT NULL, name TEXT,
        metadata TEXT NOT NULL, created_at INTEGER NOT NULL,
        embedding_model TEXT NOT NULL, dimensions INTEGER NOT NULL);
    CREATE INDEX stores_tenant ON stores (tenant, pk);
    CREATE TABLE files (
        pk INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, tenant TEXT NOT NULL, purpose TEXT NOT NULL,
        bytes INTEGER NOT NULL, created_at INTEGER NOT NULL,
        name BLOB NOT NULL, content BLOB NOT NULL);
    CREATE INDEX files_tenant ON files (tenant, pk);
    CREATE TABLE file_keys (
        file_pk INTEGER PRIMARY KEY, kid BLOB NOT NULL, wrapped BLOB NOT NULL);
    CREATE TABLE store_files (
        store_pk INTEGER NOT NULL, file_pk INTEGER NOT NULL, status TEXT NOT NULL,
        attributes TEXT NOT NULL, chunking TEXT NOT NULL, created_at INTEGER NOT NULL,
        usage_bytes INTEGER NOT NULL DEFAULT 0, chunks INTEGER NOT NULL DEFAULT 0, last_error TEXT,
        PRIMARY KEY (store_pk, file_pk));
    CREATE INDEX store_files_file ON store_files (file_pk);
    CREATE TABLE chunks (
        key INTEGER PRIMARY KEY, store_pk INTEGER NOT NULL, file_pk INTEGER NOT NULL,
        idx INTEGER NOT NULL, start_token INTEGER NOT NULL, end_token INTEGER NOT NULL,
        text BLOB NOT NULL, UNIQUE (store_pk, file_pk, idx));
    """,
    # OpenAI's last_error.code beside the message
    "ALTER TABLE store_files ADD COLUMN last_error_code TEXT;",
    # file batches: the store they belong to and the files they added
    """
    CREATE TABLE file_batches (
        pk INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, store_pk INTEGER NOT NULL,
        created_at INTEGER NOT NULL);
    CREATE INDEX file_batches_store ON file_batches (store_pk);
    CREATE TABLE batch_files (
        batch_pk INTEGER NOT NULL, file_pk INTEGER NOT NULL, PRIMARY KEY (batch_pk, file_pk));
    CREATE INDEX batch_files_file ON batch_files (file_pk);
    """,
)


@contextlib.contextmanager
def transaction(conn: apsw.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def open_database(path: Path) -> apsw.Connection:
    """The database at ``path`` (created 0600 in a 0700 folder), migrated, sqlite-vec loaded."""
    private_sqlite(path)
    conn = apsw.Connection(str(path))
    try:
        conn.set_busy_timeout(5000)
        conn.enable_load_extension(True)
        conn.load_extension(sqlite_vec.loadable_path())
        conn.enable_load_extension(False)
        conn.execute("PRAGMA journal_mode=WAL").fetchall()
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA secure_delete=ON")
        _migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _migrate(conn: apsw.Connection) -> None:
    row: Any = conn.execute("PRAGMA user_version").fetchall()[0]
    version = int(row[0])
    if version > len(MIGRATIONS):
        raise RuntimeError(
            f"the context database is at schema {version}, newer than this code ({len(MIGRATIONS)})"
        )
    for number in range(version, len(MIGRATIONS)):
        with transaction(conn):
            conn.execute(MIGRATIONS[number])
            conn.execute(f"PRAGMA user_version = {number + 1}")


def create_store_tables(conn: apsw.Connection, pk: int, dimensions: int) -> None:
    # porter: "interactions" finds "interaction"; unicode61 folds case and diacritics
    conn.execute(
        f"CREATE VIRTUAL TABLE fts_{pk} USING fts5(text, content='', contentless_delete=1, "
        "tokenize='porter unicode61 remove_diacritics 2')"
    )
    conn.execute(
        f"CREATE VIRTUAL TABLE vec_{pk} USING vec0(embedding float[{dimensions}] distance_metric=cosine)"
    )


def drop_store_tables(conn: apsw.Connection, pk: int) -> None:
    conn.execute(f"DROP TABLE IF EXISTS fts_{pk}")
    conn.execute(f"DROP TABLE IF EXISTS vec_{pk}")
