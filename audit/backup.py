"""Backups of the log and its keys, and restoring them: verify and stage first, then install.

``backup_log`` copies, from any process and while a node writes the log, in
this order: the latest signed checkpoint (so it never claims more than the
copied log holds), the log, then its keys database. Each database is copied
with SQLite's online backup API (one read transaction: one consistent
snapshot; in WAL mode the writer never waits for it). A data key is committed
to the keys database before any record sealed under it, so every record in
the copied log has its key, or its key's tombstone, in the copied keys.

Nothing is installed until the copies are checked: the backup's log must verify
against its own checkpoint and must not be behind any checkpoint the configured
store already holds (installing it would be a rollback the node refuses to
start on); the backup's keys database must belong to the log it will serve
(the same log id and KEK) and must be able to read that log's destruction
records. Keys the log records as destroyed are deleted from the staged copy
before it is installed, and reported (``RestorePlan.refused``): a restore never
brings a shredded key back. The caller holds the log's lock (``exclusive``)
from planning to installing.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .checkpoint import CheckpointStore, load_signing_key
from .config import AuditConfig
from .destroyed import destroyed_keys, retention_cutoff
from .errors import AuditConfigError, AuditRollbackError, AuditTamperedError
from .keystore import Keyring
from .log import _Lock, load_kek
from .private import private_dir, write_private_file
from .sqlitecopy import copy_database, fsync_dir
from .store import connect_ro, read_log_id
from .verify import Outcome, verify_log

__all__ = [
    "BACKUP_CHECKPOINT",
    "BACKUP_KEYS",
    "BACKUP_LOG",
    "RestorePlan",
    "backup_log",
    "exclusive",
    "plan_restore",
    "stage_database",
]

#: the names of a backup's files
BACKUP_LOG, BACKUP_KEYS, BACKUP_CHECKPOINT = "audit.db", "keys.db", "checkpoint"


def backup_log(config: AuditConfig, dest: Path) -> list[str]:
    """Copy the log's latest checkpoint, the log and its keys into the existing folder ``dest``
    (in that order: see the module docstring); returns the names of the files written."""
    if not os.path.exists(config.path):
        raise AuditConfigError(f"{config.path}: no audit log there")
    names = []
    note = CheckpointStore(config.checkpoint_path).read_latest()
    if note:
        write_private_file(dest / BACKUP_CHECKPOINT, note.encode())
        names.append(BACKUP_CHECKPOINT)
    copy_database(config.path, dest / BACKUP_LOG)
    copy_database(config.resolved_keys_path, dest / BACKUP_KEYS)
    return [*names, BACKUP_LOG, BACKUP_KEYS]


@contextlib.contextmanager
def exclusive(config: AuditConfig) -> Iterator[None]:
    """Hold the log's writer lock (AuditUnavailableError at once when a node has the log open)."""
    lock = _Lock(config.path, wait_s=0)
    try:
        yield
    finally:
        lock.release()


@dataclass
class RestorePlan:
    #: records in the log that will be served (the backup's, or the one in place)
    log_size: int = 0
    #: data keys the backup held though the log records them destroyed: deleted before installing
    refused: list[str] = field(default_factory=list)
    #: data keys the log's records use that the restored keys database lacks (those records stay unreadable)
    missing: int = 0
    #: (staged copy, where it goes)
    staged: list[tuple[Path, Path]] = field(default_factory=list)

    def install(self) -> None:
        """Move every staged copy into place (each an atomic rename, after its old WAL is removed)."""
        for staged, target in self.staged:
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{target}{suffix}")
            os.replace(staged, target)
            fsync_dir(target.parent)
        self.staged = []

    def discard(self) -> None:
        for staged, _ in self.staged:
            for path in (staged, Path(f"{staged}-wal"), Path(f"{staged}-shm")):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        self.staged = []


def stage_database(src: Path, target: Path) -> Path:
    """A consistent copy of ``src`` beside ``target`` (same filesystem, so installing is a rename)."""
    if not src.is_file():
        raise AuditConfigError(f"{src}: not in the backup")
    private_dir(target.parent)
    staged = target.with_name(target.name + ".restoring")
    for path in (staged, Path(f"{staged}-wal"), Path(f"{staged}-shm")):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a restore that was interrupted before
    copy_database(src, staged)
    return staged


def plan_restore(config: AuditConfig, backup: Path, *, log: bool, keys: bool) -> RestorePlan:
    """Check the backup's log and/or keys against this configuration and stage them (see the module)."""
    plan = RestorePlan()
    try:
        log_path = Path(config.path)
        if log:
            _verify_backup_log(config, backup)
            log_path = stage_database(backup / BACKUP_LOG, Path(config.path))
            plan.staged.append((log_path, Path(config.path)))
        elif not log_path.exists():
            raise AuditConfigError(f"{config.path}: no audit log there; restore the log with the keys")
        conn = connect_ro(str(log_path))
        try:
            plan.log_size = int(conn.execute("SELECT count(*) FROM audit").fetchone()[0])
            keys_path = Path(config.resolved_keys_path)
            if keys:
                staged = stage_database(backup / BACKUP_KEYS, keys_path)
                plan.staged.append((staged, keys_path))
                _check_keys(config, conn, staged, plan, staged=True)
            else:  # the keys in place must serve the log being installed
                _check_keys(config, conn, keys_path, plan, staged=False)
        finally:
            conn.close()
    except BaseException:
        plan.discard()
        raise
    return plan


def _verify_backup_log(config: AuditConfig, backup: Path) -> None:
    public = load_signing_key(config.signing_key_file).public_key()
    notes = []
    note_file = backup / BACKUP_CHECKPOINT
    if note_file.exists():
        notes.append(note_file.read_text(encoding="utf-8"))
    conn = connect_ro(str(backup / BACKUP_LOG))
    try:
        own = verify_log(conn, origin=config.origin, public_key=public, external_notes=notes)
        if own.exit_code != Outcome.OK:
            detail = "; ".join(f.detail for f in own.findings[:3])
            raise AuditTamperedError(f"the backup's log does not verify with its checkpoint: {detail}")
        store = CheckpointStore(config.checkpoint_path).read_all()
        against = verify_log(conn, origin=config.origin, public_key=public, external_notes=store)
    finally:
        conn.close()
    if against.exit_code == Outcome.ROLLBACK:
        raise AuditRollbackError(
            f"the backup's log has {against.size} records, but {config.checkpoint_path} holds a checkpoint "
            f"this log signed at size {against.external_size}: installing it would roll the log back "
            "(the node refuses to start on that). Restore the keys alone, or move those checkpoints "
            "aside deliberately first"
        )
    if against.exit_code != Outcome.OK:
        detail = "; ".join(f.detail for f in against.findings[:3])
        raise AuditTamperedError(f"the backup's log contradicts the configured checkpoints: {detail}")


def _check_keys(
    config: AuditConfig, conn: sqlite3.Connection, keys: Path, plan: RestorePlan, *, staged: bool
) -> None:
    """The keys database ``keys`` must open for this log and read its destruction records; a staged
    copy loses the keys the log records as destroyed (the keys in place lose them when the log opens)."""
    log_id = read_log_id(conn)
    if not keys.exists():
        raise AuditConfigError(f"{keys}: no keys database there; restore the keys with the log")
    keyring = Keyring.open(
        str(keys), load_kek(config), log_id, allow_create=False, max_uses=config.dek_max_uses
    )
    try:
        months = config.retention_months
        cutoff = None if months is None else retention_cutoff(time.time_ns(), months)
        destroyed = destroyed_keys(conn, keyring, log_id, expired_before=cutoff)
        destroyed.check()
        if staged:
            gone = keyring.refuse(destroyed.kids.keys(), "refused")
            plan.refused = sorted(kid.hex() for kid, _ in gone)
        known = keyring.known()
    finally:
        keyring.close()
    used: set[bytes] = set()
    for kid, ckid in conn.execute("SELECT DISTINCT kid, ckid FROM audit"):
        used.add(bytes(kid))
        if ckid is not None:
            used.add(bytes(ckid))
    plan.missing = len(used - known - destroyed.kids.keys())
