"""Offline-checkable inclusion proofs in the C2SP tlog-proof format.

``extra`` carries the record's leaf preimage (its associated data, nonces and
ciphertexts: no plaintext), so a checker recomputes the leaf hash itself, then
the root from the inclusion path, and compares it with the signed checkpoint.
"""

from __future__ import annotations

import base64
import binascii
import sqlite3
from dataclasses import dataclass

from .checkpoint import Checkpoint, open_checkpoint, parse_vkey
from .errors import AuditError, AuditTamperedError
from .merkle import hash_leaf, inclusion_proof, verify_inclusion
from .record import row_preimage
from .store import iter_rows, read_log_id

__all__ = ["CheckedProof", "build_proof", "check_proof"]

_HEADER = "c2sp.org/tlog-proof@v1"


@dataclass(frozen=True, slots=True)
class CheckedProof:
    index: int
    checkpoint: Checkpoint
    leaf_preimage: bytes


def build_proof(conn: sqlite3.Connection, seq: int, note: str, checkpoint: Checkpoint) -> str:
    """A proof that record ``seq`` is in the tree ``checkpoint`` (whose signed ``note`` is embedded)."""
    if not 0 <= seq < checkpoint.size:
        raise AuditError(f"seq {seq} is not covered by the checkpoint at size {checkpoint.size}")
    log_id = read_log_id(conn)
    leaves: list[bytes] = []
    preimage = b""
    for row in iter_rows(conn, "WHERE seq < ?", (checkpoint.size,)):
        if row.seq == seq:
            preimage = row_preimage(log_id, row)
        leaves.append(row.leaf)
    if len(leaves) != checkpoint.size:
        raise AuditTamperedError(
            f"the log has {len(leaves)} records below the checkpoint's {checkpoint.size}"
        )
    path = inclusion_proof(leaves, seq, checkpoint.size)
    lines = [_HEADER, f"extra {base64.b64encode(preimage).decode()}", f"index {seq}"]
    lines += [base64.b64encode(h).decode() for h in path]
    return "\n".join(lines) + "\n\n" + note


def check_proof(text: str, verifier_key: str) -> CheckedProof:
    """Check a proof offline against the log's verifier key; raises AuditTamperedError."""
    origin, public = parse_vkey(verifier_key)
    head, sep, note = text.partition("\n\n")
    lines = head.split("\n")
    if not sep or len(lines) < 2 or lines[0] != _HEADER:
        raise AuditTamperedError("not a c2sp.org/tlog-proof@v1 proof")
    try:
        rest = lines[1:]
        extra = b""
        if rest[0].startswith("extra "):
            extra = base64.b64decode(rest[0][6:], validate=True)
            rest = rest[1:]
        if not rest[0].startswith("index "):
            raise ValueError("no index line")
        index = int(rest[0][6:])
        path = [base64.b64decode(h, validate=True) for h in rest[1:]]
    except (ValueError, IndexError, binascii.Error) as exc:
        raise AuditTamperedError(f"malformed proof: {exc}") from exc
    cp = open_checkpoint(note, origin, public)
    if not verify_inclusion(index, cp.size, hash_leaf(extra), path, cp.root):
        raise AuditTamperedError(f"record {index} is not included in the signed tree of size {cp.size}")
    return CheckedProof(index, cp, extra)
