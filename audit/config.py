"""The audit log's configuration (the ``[audit]`` section of ``node.toml``)."""

from __future__ import annotations

from typing import Annotated

import msgspec

__all__ = ["AuditConfig"]

_Positive = Annotated[int, msgspec.Meta(ge=1)]


class AuditConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where the log, its keys and its external checkpoints live, and how often to checkpoint.

    ``checkpoint_path`` is a directory outside the database (point it at WORM
    storage or a SIEM-collected folder): ``checkpoint`` holds the latest signed
    checkpoint, ``checkpoints.log`` every one ever written, appended.
    """

    path: Annotated[str, msgspec.Meta(min_length=1)]
    keys_path: str | None = None
    kek_file: str | None = None
    kek_env: str | None = None
    signing_key_file: Annotated[str, msgspec.Meta(min_length=1)]
    checkpoint_path: Annotated[str, msgspec.Meta(min_length=1)]
    origin: Annotated[str, msgspec.Meta(min_length=1, max_length=255, pattern=r"^[^\s+\u2014]+$")] = (
        "bastion.local/audit"
    )
    checkpoint_every_records: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] = 1000
    checkpoint_every_s: Annotated[float, msgspec.Meta(gt=0, le=86_400)] = 10.0
    queue_max: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] = 10000
    retention_months: _Positive | None = None
    #: a running node applies retention at start and then every this many seconds (default hourly:
    #: months expire at a month's turn, so the first run after it expires them)
    retention_interval_s: Annotated[float, msgspec.Meta(gt=0, le=31 * 86_400)] = 3600.0
    # Random-nonce AES-GCM is safe to 2^32 messages per key (NIST SP 800-38D);
    # rotating at 2^30 leaves a wide margin.
    dek_max_uses: Annotated[int, msgspec.Meta(ge=1, le=2**31)] = 2**30
    max_batch: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 2048

    def __post_init__(self) -> None:
        if (self.kek_file is None) == (self.kek_env is None):
            raise ValueError("audit: set exactly one of kek_file and kek_env")

    @property
    def resolved_keys_path(self) -> str:
        """The wrapped-DEK database: ``keys_path`` or ``<path>.keys`` beside the log."""
        return self.keys_path if self.keys_path is not None else self.path + ".keys"
