"""One log record: its row, how it is sealed, how its leaf is recomputed, how it is opened.

The metadata (tenant, type, meta) is encrypted under the tenant's monthly DEK;
the content (subject, prompt/completion) under the subject's monthly DEK when a
subject is given, else the tenant's. Shredding a subject therefore leaves the
legally required metadata readable (GDPR 17(3)(b)) and the content unreadable.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgspec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .crypto import (
    CONTENT_PART,
    META_PART,
    NONCE_LEN,
    leaf_preimage,
    open_aead,
    record_aad,
    record_leaf,
    seal,
)

__all__ = [
    "COLUMNS",
    "INSERT_SQL",
    "Plaintext",
    "Row",
    "encode_parts",
    "insert_rows_sql",
    "open_part",
    "row_aad",
    "row_leaf",
    "row_preimage",
    "seal_row",
]

COLUMNS = (
    "seq",
    "ts_ns",
    "event_type",
    "tenant_h",
    "subject_h",
    "request_h",
    "kid",
    "nonce",
    "ct",
    "ckid",
    "cnonce",
    "cct",
    "prev_head",
    "leaf",
)
INSERT_SQL = f"INSERT INTO audit ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"  # noqa: S608
_VALUES = f"({', '.join('?' * len(COLUMNS))})"


def insert_rows_sql(n: int) -> str:
    """One INSERT statement for ``n`` rows (``n * len(COLUMNS)`` parameters)."""
    return f"INSERT INTO audit ({', '.join(COLUMNS)}) VALUES {', '.join([_VALUES] * n)}"  # noqa: S608


class Row(NamedTuple):
    seq: int
    ts_ns: int
    event_type: str
    tenant_h: bytes
    subject_h: bytes | None
    request_h: bytes | None
    kid: bytes
    nonce: bytes
    ct: bytes
    ckid: bytes | None
    cnonce: bytes | None
    cct: bytes | None
    prev_head: bytes
    leaf: bytes

    @classmethod
    def from_db(cls, values: tuple[Any, ...]) -> Row:
        fields: list[Any] = [bytes(v) if isinstance(v, memoryview) else v for v in values]
        return cls(*fields)


class Plaintext(NamedTuple):
    """What append() pre-encodes (msgpack) before the writer seals it."""

    meta: bytes
    content: bytes | None


_encoder = msgspec.msgpack.Encoder()


def encode_parts(
    tenant: str, meta: dict[str, Any], subject: str | None, content: dict[str, Any] | None
) -> Plaintext:
    meta_pt = _encoder.encode({"tenant": tenant, "meta": meta})
    if subject is None and content is None:
        return Plaintext(meta_pt, None)
    return Plaintext(meta_pt, _encoder.encode({"subject": subject, "content": content}))


def row_aad(
    log_id: bytes,
    *,
    seq: int,
    ts_ns: int,
    event_type: str,
    tenant_h: bytes,
    subject_h: bytes | None,
    request_h: bytes | None,
    kid: bytes,
    ckid: bytes | None,
    prev_head: bytes,
) -> bytes:
    return record_aad(
        log_id=log_id,
        seq=seq,
        ts_ns=ts_ns,
        event_type=event_type,
        tenant_h=tenant_h,
        subject_h=subject_h,
        request_h=request_h,
        kid=kid,
        ckid=ckid,
        prev_head=prev_head,
    )


def _aad_of(log_id: bytes, row: Row) -> bytes:
    return row_aad(
        log_id,
        seq=row.seq,
        ts_ns=row.ts_ns,
        event_type=row.event_type,
        tenant_h=row.tenant_h,
        subject_h=row.subject_h,
        request_h=row.request_h,
        kid=row.kid,
        ckid=row.ckid,
        prev_head=row.prev_head,
    )


def seal_row(
    log_id: bytes,
    *,
    seq: int,
    ts_ns: int,
    event_type: str,
    tenant_h: bytes,
    subject_h: bytes | None,
    request_h: bytes | None,
    meta_key: tuple[bytes, AESGCM],
    content_key: tuple[bytes, AESGCM] | None,
    plaintext: Plaintext,
    prev_head: bytes,
    nonces: bytes | None = None,
) -> Row:
    """Encrypt and hash one record. ``nonces`` (24 bytes: metadata nonce, content nonce) is
    fresh ``os.urandom`` output a batch drew in one call; without it each part draws its own."""
    kid, meta_aead = meta_key
    ckid = None if content_key is None or plaintext.content is None else content_key[0]
    aad = record_aad(
        log_id=log_id,
        seq=seq,
        ts_ns=ts_ns,
        event_type=event_type,
        tenant_h=tenant_h,
        subject_h=subject_h,
        request_h=request_h,
        kid=kid,
        ckid=ckid,
        prev_head=prev_head,
    )
    meta_nonce, content_nonce = (None, None) if nonces is None else (nonces[:NONCE_LEN], nonces[NONCE_LEN:])
    nonce, ct = seal(meta_aead, plaintext.meta, aad + META_PART, meta_nonce)
    cnonce = cct = None
    if ckid is not None and content_key is not None and plaintext.content is not None:
        cnonce, cct = seal(content_key[1], plaintext.content, aad + CONTENT_PART, content_nonce)
    leaf = record_leaf(leaf_preimage(aad, nonce, ct, cnonce, cct))
    return Row(
        seq,
        ts_ns,
        event_type,
        tenant_h,
        subject_h,
        request_h,
        kid,
        nonce,
        ct,
        ckid,
        cnonce,
        cct,
        prev_head,
        leaf,
    )


def row_preimage(log_id: bytes, row: Row) -> bytes:
    return leaf_preimage(_aad_of(log_id, row), row.nonce, row.ct, row.cnonce, row.cct)


def row_leaf(log_id: bytes, row: Row) -> bytes:
    """The leaf recomputed from the row's columns (compare with the stored ``leaf``)."""
    return record_leaf(row_preimage(log_id, row))


def open_part(log_id: bytes, row: Row, aead: AESGCM, *, content: bool) -> dict[str, Any]:
    """Decrypt the metadata or content part; raises crypto.DecryptError when it does not authenticate."""
    aad = _aad_of(log_id, row)
    if content:
        if row.cnonce is None or row.cct is None:
            return {}
        pt = open_aead(aead, row.cnonce, row.cct, aad + CONTENT_PART)
    else:
        pt = open_aead(aead, row.nonce, row.ct, aad + META_PART)
    decoded = msgspec.msgpack.decode(pt)
    return decoded if isinstance(decoded, dict) else {"value": decoded}
