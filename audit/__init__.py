"""The encrypted, append-only, tamper-evident audit log and its verification.

Layer: imports nothing of ours (only the standard library, aiosqlite, msgspec
and cryptography), so an auditor can verify a log with this package alone.

The node's API::

    log = await AuditLog.open(config)           # AuditKeyError / AuditRollbackError / AuditTamperedError
    seq = await log.append(AuditEvent(...))     # durable (committed + fsynced) or AuditUnavailableError
    hits = await log.find(request_id=..., tenant=...)
    log.stats(); await log.shred(tenant, subject); await log.rotate_kek(new_kek)
    await log.apply_retention()
    audit.backup.backup_log(config, folder)     # a consistent copy, while the log is written
    await log.aclose()                          # flush + final checkpoint

CLI: ``add_audit_commands(subparsers)`` and ``run_audit_command(args, config)``
in ``audit.cli``. Format: records AES-256-GCM sealed under per-tenant/-subject
monthly data keys wrapped by a KEK outside the database; RFC 9162 Merkle leaves
over the ciphertext; Ed25519 C2SP checkpoints exported outside the database.
"""

from .checkpoint import generate_signing_key
from .config import AuditConfig
from .errors import (
    AuditConfigError,
    AuditError,
    AuditKeyError,
    AuditPermissionError,
    AuditRollbackError,
    AuditTamperedError,
    AuditUnavailableError,
)
from .events import AuditEvent, AuditHit, AuditStats
from .kek import KeyEncryptionKey, LocalKek, generate_kek_file
from .log import AuditLog, check_files, check_keys
from .private import SQLITE_SIDECARS, check_private, private_dir, private_sqlite

__all__ = [
    "SQLITE_SIDECARS",
    "AuditConfig",
    "AuditConfigError",
    "AuditError",
    "AuditEvent",
    "AuditHit",
    "AuditKeyError",
    "AuditLog",
    "AuditPermissionError",
    "AuditRollbackError",
    "AuditStats",
    "AuditTamperedError",
    "AuditUnavailableError",
    "KeyEncryptionKey",
    "LocalKek",
    "check_files",
    "check_keys",
    "check_private",
    "generate_kek_file",
    "generate_signing_key",
    "private_dir",
    "private_sqlite",
]
