"""``bastion backup --to DIR`` and ``bastion restore --from DIR``.

A backup is a folder (0700, every file 0600): the audit log, its keys database
and its latest signed checkpoint (``audit.backup.backup_log``), ``budgets.db``,
``feedback.db`` with its key file, the tenants' ``api-keys.db``
(``node.keystore``), and ``manifest.json`` (each file's SHA-256, the log id, the
host, the time), written last: a folder without a manifest is not a backup. The
command copies the files itself, whether a node runs or not: SQLite's online
backup API reads each database as one consistent snapshot while the node goes on
writing, and the copy order keeps the log and its keys consistent (see
``audit.backup``). So the backup lands wherever the operator's command may
write, not only where a sandboxed service (systemd ``ProtectSystem=strict``, a
container) lets the node write.

``restore`` runs with the node stopped. It checks the manifest's hashes, then
``audit.backup.plan_restore`` verifies and stages the log and keys, and only
then is anything installed. Afterwards it opens the log once, as the node
would, and records ``key.refused`` for any key the backup held that the log
records as destroyed (those are deleted before installing: a restore never
brings a shredded key back).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Final, Literal

import msgspec

from audit import AuditConfig, AuditEvent, AuditLog, AuditTamperedError, private_dir
from audit.backup import (
    BACKUP_CHECKPOINT,
    BACKUP_KEYS,
    BACKUP_LOG,
    RestorePlan,
    backup_log,
    exclusive,
    plan_restore,
    stage_database,
)
from audit.private import write_private_file
from audit.sqlitecopy import copy_database, fsync_dir, sha256_file
from audit.store import connect_ro, read_log_id

from .budgets import BUDGETS_DB
from .config import NodeConfig, resolve
from .keystore import KEYS_DB

__all__ = ["MANIFEST", "PARTS", "BackupError", "Manifest", "read_manifest", "restore", "take_backup"]

MANIFEST: Final = "manifest.json"
_BUDGETS, _FEEDBACK, _FEEDBACK_KEY = BUDGETS_DB, "feedback.db", "feedback.db.key"
#: what ``restore --only`` can name, and the files of each
PARTS: Final = {
    "audit": (BACKUP_LOG, BACKUP_CHECKPOINT),
    "keys": (BACKUP_KEYS,),
    "budgets": (_BUDGETS,),
    "feedback": (_FEEDBACK, _FEEDBACK_KEY),
    "api-keys": (KEYS_DB,),
}
_SHA256 = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]


class BackupError(Exception):
    """The backup folder is unusable, or does not match its manifest."""


class Manifest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    format: Literal[1] = 1
    created_at: str
    host: str
    log_id: str
    origin: str
    files: dict[str, _SHA256]


def _prepare(dest: Path) -> None:
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BackupError(f"{dest}: exists and is not an empty folder")
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(dest, 0o700)
    private_dir(dest)


def _node_files(config: NodeConfig, config_dir: Path, dest: Path) -> list[str]:
    data = resolve(config_dir, config.data_dir)
    names = []
    for name in (_BUDGETS, _FEEDBACK, KEYS_DB):
        if (data / name).exists():
            copy_database(data / name, dest / name)
            names.append(name)
    if (data / _FEEDBACK_KEY).exists():
        write_private_file(dest / _FEEDBACK_KEY, (data / _FEEDBACK_KEY).read_bytes())
        names.append(_FEEDBACK_KEY)
    return names


def _finish(dest: Path, names: list[str], audit: AuditConfig) -> Manifest:
    conn = connect_ro(str(dest / BACKUP_LOG))
    try:
        log_id = read_log_id(conn).hex()
    finally:
        conn.close()
    manifest = Manifest(
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        host=socket.gethostname(),
        log_id=log_id,
        origin=audit.origin,
        files={name: sha256_file(dest / name) for name in names},
    )
    write_private_file(dest / MANIFEST, msgspec.json.format(msgspec.json.encode(manifest)) + b"\n")
    fsync_dir(dest)
    return manifest


def take_backup(config: NodeConfig, config_dir: Path, dest: Path) -> Manifest:
    """Write a backup of this node's data into ``dest`` (a new or empty folder), serving or not."""
    assert config.audit is not None
    _prepare(dest)
    names = backup_log(config.audit, dest)
    names += _node_files(config, config_dir, dest)
    return _finish(dest, names, config.audit)


def read_manifest(src: Path) -> Manifest:
    """The backup's manifest, after checking every file it lists against its hash."""
    try:
        manifest = msgspec.json.decode((src / MANIFEST).read_bytes(), type=Manifest)
    except FileNotFoundError:
        raise BackupError(f"{src}: no {MANIFEST}: not a (complete) backup") from None
    except msgspec.DecodeError as exc:
        raise BackupError(f"{src / MANIFEST}: {exc}") from None
    for name, digest in manifest.files.items():
        path = src / name
        if Path(name).name != name or not path.is_file():
            raise BackupError(f"{src}: {name} is listed in the manifest but missing")
        if sha256_file(path) != digest:
            raise AuditTamperedError(
                f"{path}: does not match its SHA-256 in the manifest (corrupt or altered)"
            )
    return manifest


@dataclass
class RestoreReport:
    manifest: Manifest
    parts: list[str]
    plan: RestorePlan
    #: key ids the log refused when it was opened after installing (a hand-copied keys database)
    refused_at_open: list[str] = field(default_factory=list)


def restore(config: NodeConfig, config_dir: Path, src: Path, parts: set[str] | None = None) -> RestoreReport:
    """Verify the backup at ``src``, then install ``parts`` of it (default: every part it holds;
    the node must be stopped)."""
    assert config.audit is not None
    manifest = read_manifest(src)
    if parts is None:
        parts = {part for part, names in PARTS.items() if names[0] in manifest.files}
    for part in sorted(parts):
        if part in ("audit", "keys") and PARTS[part][0] not in manifest.files:
            raise BackupError(f"{src}: the backup holds no {part} ({PARTS[part][0]})")
    data = resolve(config_dir, config.data_dir)
    with exclusive(config.audit):
        plan = plan_restore(config.audit, src, log="audit" in parts, keys="keys" in parts)
        try:
            extra: list[tuple[Path, Path]] = []
            for part, name in (("budgets", _BUDGETS), ("feedback", _FEEDBACK), ("api-keys", KEYS_DB)):
                if part in parts and name in manifest.files:
                    extra.append((stage_database(src / name, data / name), data / name))
            plan.staged += extra
            if "feedback" in parts and _FEEDBACK_KEY in manifest.files:
                staged_key = data / (_FEEDBACK_KEY + ".restoring")
                staged_key.unlink(missing_ok=True)
                write_private_file(staged_key, (src / _FEEDBACK_KEY).read_bytes())
                plan.staged.append((staged_key, data / _FEEDBACK_KEY))
        except BaseException:
            plan.discard()
            raise
        plan.install()
    report = RestoreReport(manifest=manifest, parts=sorted(parts), plan=plan)
    report.refused_at_open = asyncio.run(_open_once(config.audit, plan))
    return report


async def _open_once(audit: AuditConfig, plan: RestorePlan) -> list[str]:
    """Open the restored log as the node will (it re-checks the chain and the keys); record the refusal."""
    async with await AuditLog.open(audit) as log:
        if plan.refused:
            await log.append(
                AuditEvent(
                    type="key.refused",
                    tenant="",
                    meta={"reason": "restore", "kids": plan.refused, "missing_keys": plan.missing},
                )
            )
        return list(log.refused_keys)
