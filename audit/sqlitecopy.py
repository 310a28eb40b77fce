"""A consistent copy of a live SQLite database, through SQLite's online backup API.

``Connection.backup`` with its default ``pages=-1`` copies every page in one
step, inside one read transaction: the copy is the database as of one commit.
In WAL mode a reader never blocks the writer, so a node keeps committing while
its databases are copied. The copy is a self-contained file (rollback journal,
no ``-wal`` beside it), created 0600 and fsynced.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

__all__ = ["copy_database", "fsync_dir", "sha256_file"]


def copy_database(source: str | Path | sqlite3.Connection, dst: Path) -> None:
    """Copy ``source`` (a path, opened read-only, or an open connection) to a new file ``dst``."""
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    own = not isinstance(source, sqlite3.Connection)
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True) if own else source
    assert isinstance(src, sqlite3.Connection)
    try:
        if own:
            src.execute("PRAGMA busy_timeout=5000")
        target = sqlite3.connect(dst, isolation_level=None)
        try:
            src.backup(target)
            target.execute("PRAGMA journal_mode=DELETE")
        finally:
            target.close()
    finally:
        if own:
            src.close()
    fd = os.open(dst, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
