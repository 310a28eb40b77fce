"""Files only the node's own user may open: 0600 files in 0700 folders.

Everything the audit log writes (its databases and their ``-wal``/``-shm``
files, the lock, the checkpoints, generated keys) is created private, and an
existing one that group or others can access is refused, naming the path, as
the key files always were. A SQLite database is created by us, 0600, before
SQLite opens it: SQLite gives the ``-wal``, ``-shm`` and ``-journal`` files it
creates the mode of the database file, so no process-wide umask is needed.
The node's other databases (``router`` budgets, feedback) use the same functions.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import AuditConfigError, AuditPermissionError

__all__ = [
    "SQLITE_SIDECARS",
    "check_key_file",
    "check_private",
    "private_dir",
    "private_sqlite",
    "write_private_file",
]

#: the files SQLite keeps beside a database
SQLITE_SIDECARS = ("-wal", "-shm", "-journal")
_OPEN_TO_OTHERS = stat.S_IRWXG | stat.S_IRWXO


def check_private(path: str | Path) -> None:
    """Refuse a file or folder that group or others may access; one that does not exist passes."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise AuditConfigError(f"{path}: {exc.strerror}") from exc
    if mode & _OPEN_TO_OTHERS:
        kind, want = ("folder", "700") if stat.S_ISDIR(mode) else ("file", "600")
        raise AuditPermissionError(
            f"{path}: {kind} mode {stat.S_IMODE(mode):o} lets group or others in; "
            f"must be 0{want} (chmod {want} {path})"
        )


def check_key_file(path: str | Path) -> None:
    """A key file must exist and be private."""
    if not os.path.lexists(path):
        raise AuditConfigError(f"{path}: no such key file")
    check_private(path)


def private_dir(path: str | Path) -> Path:
    """``path`` as a folder: the missing levels created 0700, the folder itself checked."""
    folder = Path(path)
    _make_dirs(folder)
    check_private(folder)
    return folder


def _make_dirs(folder: Path) -> None:
    """Create the missing levels of ``folder`` 0700 (``mkdir -p`` would make the parents 0777-umask)."""
    missing: list[Path] = []
    level = folder
    while not level.exists() and level != level.parent:
        missing.append(level)
        level = level.parent
    for level in reversed(missing):
        try:
            os.mkdir(level, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise AuditConfigError(f"{level}: cannot create the folder: {exc.strerror}") from exc


def private_sqlite(path: str | Path) -> None:
    """Before SQLite opens ``path``: its folder private, the database and its side files
    checked, and the database created 0600 when absent (its side files then follow)."""
    db = Path(path)
    private_dir(db.parent)
    for name in (db.name, *(db.name + s for s in SQLITE_SIDECARS)):
        check_private(db.with_name(name))
    try:
        os.close(os.open(db, os.O_WRONLY | os.O_CREAT, 0o600))
    except OSError as exc:
        raise AuditConfigError(f"{db}: cannot create the database: {exc.strerror}") from exc


def write_private_file(path: str | Path, data: bytes) -> None:
    """Create a 0600 file (never overwriting one) and fsync it; missing folders are made 0700.

    An existing folder is left as it is: a generated key may go to the operator's ``/etc``.
    """
    p = Path(path)
    _make_dirs(p.parent)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
