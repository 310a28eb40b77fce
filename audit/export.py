"""JSONL export for auditors: one object per record, decrypted on request.

Without ``--decrypt`` an export holds only what the database holds in the open
(seq, time, type, keyed ids, key ids, leaf). With it, each part reports
``ok``, ``shredded`` (its key was destroyed), ``missing`` or ``auth_fail``.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterator
from typing import Any

from .crypto import DecryptError
from .keystore import Keyring, KeyState
from .record import Row, open_part
from .store import iter_rows, read_log_id

__all__ = ["export_records", "parse_time"]


def parse_time(text: str) -> int:
    """ISO date or datetime (UTC unless it says otherwise) to Unix nanoseconds."""
    value = dt.datetime.fromisoformat(text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return int(value.timestamp() * 1_000_000_000)


def export_records(
    conn: sqlite3.Connection,
    *,
    keyring: Keyring | None,
    tenant: str | None = None,
    since_ns: int | None = None,
    until_ns: int | None = None,
    decrypt: bool = False,
    by_time: bool = False,
) -> Iterator[dict[str, Any]]:
    """The records in seq order, or (``by_time``) in time order, ties by seq."""
    log_id = read_log_id(conn)
    clauses: list[str] = []
    args: list[object] = []
    if tenant is not None:
        if keyring is None:
            raise ValueError("filtering by tenant needs the keys")
        clauses.append("tenant_h = ?")
        args.append(keyring.tenant_id(tenant))
    if since_ns is not None:
        clauses.append("ts_ns >= ?")
        args.append(since_ns)
    if until_ns is not None:
        clauses.append("ts_ns < ?")
        args.append(until_ns)
    where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
    for row in iter_rows(conn, where, tuple(args), order="ts_ns, seq" if by_time else "seq"):
        out: dict[str, Any] = {
            "seq": row.seq,
            "ts": dt.datetime.fromtimestamp(row.ts_ns / 1e9, dt.UTC).isoformat(),
            "ts_ns": row.ts_ns,
            "type": row.event_type,
            "tenant_h": row.tenant_h.hex(),
            "subject_h": None if row.subject_h is None else row.subject_h.hex(),
            "kid": row.kid.hex(),
            "ckid": None if row.ckid is None else row.ckid.hex(),
            "leaf": row.leaf.hex(),
        }
        if decrypt and keyring is not None:
            out.update(_decrypted(keyring, log_id, row))
        yield out


def _decrypted(keyring: Keyring, log_id: bytes, row: Row) -> dict[str, Any]:
    out: dict[str, Any] = {}
    status: dict[str, str] = {}
    parts = [("meta", row.kid, False)] + ([("content", row.ckid, True)] if row.ckid is not None else [])
    for name, kid, content in parts:
        state, aead = keyring.decrypting_key(kid)
        if state is not KeyState.OK or aead is None:
            status[name] = state.value
            continue
        try:
            out.update(open_part(log_id, row, aead, content=content))
            status[name] = "ok"
        except DecryptError:
            status[name] = "auth_fail"
    out["status"] = status
    return out
