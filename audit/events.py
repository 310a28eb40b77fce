"""The values the node hands to the audit log and gets back from it."""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["AuditEvent", "AuditHit", "AuditStats"]


class AuditEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One thing to record. ``meta`` and ``content`` are both encrypted; only keyed
    HMACs of the tenant, the subject and ``meta["request_id"]`` are stored searchable.
    ``content`` (prompt, completion) is encrypted under the subject's key when a
    subject is given, so shredding the subject leaves the metadata readable."""

    type: str
    tenant: str
    subject: str | None = None
    meta: dict[str, Any] = {}
    content: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.type or len(self.type) > 64:
            raise ValueError("audit event type must be 1-64 characters")
        if len(self.tenant) > 256:
            raise ValueError("audit tenant must be at most 256 characters")
        if self.subject is not None and len(self.subject) > 1024:
            raise ValueError("audit subject must be at most 1024 characters")


class AuditStats(msgspec.Struct, frozen=True, kw_only=True):
    queue_depth: int
    queue_max: int
    records: int
    last_checkpoint_size: int | None
    last_checkpoint_at: float | None
    last_checkpoint_bytes: int | None
    checkpoint_errors: int
    failed: bool
    #: transactions committed (records / commits: how well concurrent appends share an fsync)
    commits: int = 0
    #: WAL checkpoints run off the commit path, and those that failed (see audit.wal)
    wal_checkpoints: int = 0
    wal_checkpoint_errors: int = 0


class AuditHit(msgspec.Struct, frozen=True, kw_only=True):
    seq: int
    type: str
    ts_ns: int
