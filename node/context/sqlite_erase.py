"""The SQLite backend's erasure primitives: what deleting chunks, a store or a tenant does on disk.

sqlite-vec marks a deleted vector's slot free but leaves its bytes in the
table's chunk blob, so each vector is overwritten with zeros before its row is
deleted. A contentless FTS5 table drops a deleted row's tokens only when its
segments are merged, so ``settle`` runs FTS5's ``optimize`` on the stores
touched. ``secure_delete`` (set when the database opens) zeroes freed pages,
and truncating the WAL removes the old pages' copies there. Callers run the
deletions inside one transaction and ``settle`` after it commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import apsw

from .sqlite_schema import drop_store_tables

__all__ = ["drop_store", "erase_chunks", "settle"]


def erase_chunks(conn: apsw.Connection, store_pk: int, dimensions: int, file_pk: int) -> int:
    """Delete one file's chunks from one store: rows, FTS5 entries and vectors (zeroed first)."""
    keys = [
        r[0]
        for r in conn.execute(
            "SELECT key FROM chunks WHERE store_pk = ? AND file_pk = ?", (store_pk, file_pk)
        )
    ]
    zero = bytes(4 * dimensions)
    for key in keys:
        conn.execute(f"UPDATE vec_{store_pk} SET embedding = ? WHERE rowid = ?", (zero, key))  # noqa: S608
        conn.execute(f"DELETE FROM vec_{store_pk} WHERE rowid = ?", (key,))  # noqa: S608
        conn.execute(f"DELETE FROM fts_{store_pk} WHERE rowid = ?", (key,))  # noqa: S608
    conn.execute("DELETE FROM chunks WHERE store_pk = ? AND file_pk = ?", (store_pk, file_pk))
    return len(keys)


def drop_store(conn: apsw.Connection, store_pk: int) -> int:
    """Delete a store: both its index tables, its chunks, memberships and file batches, its row;
    returns the chunks."""
    row: Any = conn.execute("SELECT count(*) FROM chunks WHERE store_pk = ?", (store_pk,)).fetchone()
    drop_store_tables(conn, store_pk)
    conn.execute("DELETE FROM chunks WHERE store_pk = ?", (store_pk,))
    conn.execute("DELETE FROM store_files WHERE store_pk = ?", (store_pk,))
    conn.execute(
        "DELETE FROM batch_files WHERE batch_pk IN (SELECT pk FROM file_batches WHERE store_pk = ?)",
        (store_pk,),
    )
    conn.execute("DELETE FROM file_batches WHERE store_pk = ?", (store_pk,))
    conn.execute("DELETE FROM stores WHERE pk = ?", (store_pk,))
    return int(row[0])


def settle(conn: apsw.Connection, store_pks: Sequence[int]) -> None:
    """After an erasure committed: merge the touched FTS5 indexes (no segment keeps a deleted token)
    and truncate the WAL (no old page survives in it)."""
    for pk in store_pks:
        conn.execute(f"INSERT INTO fts_{pk} (fts_{pk}) VALUES ('optimize')")  # noqa: S608
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
