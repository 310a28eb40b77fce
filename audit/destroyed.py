"""Which data keys the log says were destroyed, so that a restored keys database cannot bring one back.

Every destruction leaves a record in the log (``key.destroyed`` for a shred,
``retention.expired`` for retention) naming the key ids it destroyed. A keys
database restored from a backup taken before a shred still holds those keys;
whoever opens the log reads these records first and refuses the keys they name
(the node deletes them for good and records ``key.refused``; a read-only
reader treats them as shredded).

The records are the log's own, sealed under the system tenant's monthly key.
When that key is missing from the keys database (it was backed up before the
month began), the record cannot be read, so nothing can say which keys it
destroyed: that is an error, not a guess. A record from a month that retention
has expired needs no reading: every key it can name is older still, and
retention destroys those by their month.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

from .crypto import DecryptError
from .errors import AuditKeyError
from .keystore import Keyring, KeyState, month_of
from .record import open_part
from .store import iter_rows

__all__ = ["DESTRUCTION_EVENTS", "DestroyedKeys", "destroyed_keys", "retention_cutoff"]

DESTRUCTION_EVENTS = ("key.destroyed", "retention.expired")


@dataclass(slots=True)
class DestroyedKeys:
    #: key id -> the sequence number of the record that destroyed it
    kids: dict[bytes, int] = field(default_factory=dict)
    #: destruction records that cannot be read (their own key is missing)
    unreadable: list[int] = field(default_factory=list)

    def check(self) -> None:
        """Raise AuditKeyError when some destruction cannot be read (fail closed)."""
        if self.unreadable:
            seqs = ", ".join(map(str, self.unreadable[:10]))
            raise AuditKeyError(
                f"the keys database cannot read the log's key-destruction records (seq {seqs}): "
                "it lacks their month's system key, so which data keys they destroyed is unknown. "
                "Use a keys database at least as new as those records"
            )


def retention_cutoff(now_ns: int, months: int) -> str:
    """The first month retention keeps: every key of an earlier month is destroyed."""
    year, month = (int(x) for x in month_of(now_ns).split("-"))
    index = year * 12 + (month - 1) - months
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def destroyed_keys(
    conn: sqlite3.Connection, keyring: Keyring, log_id: bytes, *, expired_before: str | None = None
) -> DestroyedKeys:
    """Read every destruction record of the log behind ``conn`` with ``keyring``.

    ``expired_before``: the retention cutoff, when retention is configured (records of
    earlier months are skipped when unreadable, see the module docstring).
    """
    out = DestroyedKeys()
    marks = ", ".join("?" * len(DESTRUCTION_EVENTS))
    for row in iter_rows(conn, f"WHERE event_type IN ({marks})", DESTRUCTION_EVENTS):
        state, aead = keyring.decrypting_key(row.kid)
        expired = expired_before is not None and month_of(row.ts_ns) < expired_before
        if aead is None or state is not KeyState.OK:
            if state is not KeyState.SHREDDED and not expired:
                out.unreadable.append(row.seq)
            continue
        try:
            meta = open_part(log_id, row, aead, content=False).get("meta", {})
        except DecryptError:
            out.unreadable.append(row.seq)
            continue
        for kid in meta.get("kids", []) if isinstance(meta, dict) else []:
            if isinstance(kid, str):
                out.kids.setdefault(bytes.fromhex(kid), row.seq)
    return out
