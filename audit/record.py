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
    aad_from_parts,
    aad_prefix,
    leaf_preimage,
    length_prefixed,
    open_aead,
    record_aad,
    record_leaf,
)

__all__ = [
    "COLUMNS",
    "Plaintext",
    "Row",
    "Sealer",
    "encode_parts",
    "insert_rows_sql",
    "open_part",
    "row_leaf",
    "row_params",
    "row_preimage",
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


def _aad_of(log_id: bytes, row: Row) -> bytes:
    return record_aad(
        log_id=log_id,
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


class Sealer:
    """Encrypts and hashes one log's records: the writer's path, run once per record.

    The log's part of the associated data and each event type's encoding are
    computed once; the result is what ``record_aad``, ``leaf_preimage`` and
    ``record_leaf`` give (``row_leaf`` recomputes it for verification).
    """

    __slots__ = ("_prefix", "_types")

    def __init__(self, log_id: bytes) -> None:
        self._prefix = aad_prefix(log_id)
        self._types: dict[str, bytes] = {}

    def seal(
        self,
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
        nonces: bytes,
    ) -> Row:
        """``nonces``: 24 fresh ``os.urandom`` bytes (metadata nonce, content nonce), never reused."""
        if len(nonces) != 2 * NONCE_LEN:
            raise ValueError(f"nonces must be {2 * NONCE_LEN} bytes")
        et = self._types.get(event_type)
        if et is None:
            et = self._types[event_type] = length_prefixed(event_type.encode())
        kid, meta_aead = meta_key
        content = plaintext.content
        ckid = None if content_key is None or content is None else content_key[0]
        aad = aad_from_parts(
            self._prefix, seq, ts_ns, et, tenant_h, subject_h, request_h, kid, ckid, prev_head
        )
        nonce = nonces[:NONCE_LEN]
        ct = meta_aead.encrypt(nonce, plaintext.meta, aad + META_PART)
        cnonce = cct = None
        if content_key is not None and content is not None:
            cnonce = nonces[NONCE_LEN:]
            cct = content_key[1].encrypt(cnonce, content, aad + CONTENT_PART)
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


def row_params(rows: list[Row]) -> list[object]:
    """The rows' INSERT parameters, flat, in COLUMNS order."""
    out: list[object] = []
    for r in rows:
        out += r
    return out


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
