"""The audit log's errors, one small tree the node maps onto HTTP statuses.

``AuditError`` is the base. ``AuditUnavailableError`` means "this record was not
taken" (queue full, disk or database write failed, log closed): the caller must
fail closed (HTTP 503) and never drop the record silently. The others describe
what verification or start-up found; the CLI maps each onto its own exit code.
"""

from __future__ import annotations

__all__ = [
    "AuditConfigError",
    "AuditError",
    "AuditKeyError",
    "AuditPermissionError",
    "AuditRollbackError",
    "AuditTamperedError",
    "AuditUnavailableError",
]


class AuditError(Exception):
    """Base of every error the audit package raises."""


class AuditUnavailableError(AuditError):
    """The record was not made durable; nothing may proceed on its behalf."""


class AuditConfigError(AuditError):
    """The audit configuration or a file it names is unusable (permissions, format)."""


class AuditPermissionError(AuditConfigError):
    """A file or folder of the log (or a key file) is open to group or others; the message names it."""


class AuditKeyError(AuditError):
    """A key problem: wrong or missing key-encryption key, keys database not this log's."""


class AuditTamperedError(AuditError):
    """The log's content contradicts its own hashes, signatures or a trusted checkpoint."""


class AuditRollbackError(AuditError):
    """The database is behind (smaller than) a checkpoint it already exported."""
