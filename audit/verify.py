"""Offline verification: recompute leaves, chain and tree; check every checkpoint; optionally decrypt.

Never repairs anything. Needs no keys unless asked to decrypt, so it works after
crypto-shredding. The outcome is one of OK, TAMPERED, ROLLBACK (truncated or
rolled back below a signed checkpoint) or KEY_ERROR, each with its own exit code.
"""

from __future__ import annotations

import enum
import hmac
import sqlite3
from collections.abc import Sequence

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .checkpoint import open_checkpoint
from .crypto import GENESIS_HEAD, DecryptError, next_head
from .errors import AuditTamperedError
from .keystore import Keyring, KeyState
from .merkle import CompactRange
from .record import Row, open_part, row_leaf
from .store import iter_rows, read_checkpoints, read_log_id

__all__ = ["Outcome", "VerifyReport", "verify_log", "worst"]


class Outcome(enum.IntEnum):
    """Also the CLI's exit codes (1 is left for usage and I/O errors)."""

    OK = 0
    TAMPERED = 2
    ROLLBACK = 3
    KEY_ERROR = 4


class Finding(msgspec.Struct, frozen=True):
    outcome: str
    detail: str
    seq: int | None = None


class VerifyReport(msgspec.Struct, kw_only=True):
    outcome: str = "OK"
    exit_code: int = 0
    size: int = 0
    root: str = ""
    checkpoints_checked: int = 0
    external_size: int | None = None
    findings: list[Finding] = msgspec.field(default_factory=list)
    payloads: dict[str, int] | None = None

    def add(self, outcome: Outcome, detail: str, seq: int | None = None) -> None:
        if len(self.findings) < 1000:
            self.findings.append(Finding(outcome.name, detail, seq))
        if _RANK[outcome] > _RANK[Outcome(self.exit_code)]:
            self.exit_code, self.outcome = int(outcome), outcome.name


_RANK = {Outcome.OK: 0, Outcome.KEY_ERROR: 1, Outcome.ROLLBACK: 2, Outcome.TAMPERED: 3}
#: exit codes from least to most serious; 1 (usage, I/O) ranks below every finding about a log
_SEVERITY = (0, 1, int(Outcome.KEY_ERROR), int(Outcome.ROLLBACK), int(Outcome.TAMPERED))


def worst(codes: Sequence[int]) -> int:
    """The most serious of several logs' exit codes (a fleet's verify)."""
    return max(codes, key=_SEVERITY.index, default=0)


def verify_log(
    conn: sqlite3.Connection,
    *,
    origin: str,
    public_key: Ed25519PublicKey,
    external_notes: Sequence[str] = (),
    keyring: Keyring | None = None,
) -> VerifyReport:
    """Verify the log behind ``conn`` against its own checkpoints and the external (trusted) notes."""
    report = VerifyReport()
    check = conn.execute("PRAGMA integrity_check").fetchall()
    if [tuple(r) for r in check] != [("ok",)]:
        report.add(Outcome.TAMPERED, f"sqlite integrity_check: {check[:3]}")
    try:
        log_id = read_log_id(conn)
        stored = read_checkpoints(conn)
    except (AuditTamperedError, sqlite3.DatabaseError) as exc:
        report.add(Outcome.TAMPERED, str(exc))
        return report

    notes: list[tuple[str, str]] = [("stored", n) for _, n in stored] + [
        ("external", n) for n in external_notes
    ]
    claimed: list[tuple[str, int, bytes]] = []
    for where, note in notes:
        try:
            cp = open_checkpoint(note, origin, public_key)
        except AuditTamperedError as exc:
            report.add(Outcome.TAMPERED, f"{where} checkpoint: {exc}")
            continue
        claimed.append((where, cp.size, cp.root))
    wanted = {size for _, size, _ in claimed}
    roots: dict[int, bytes] = {}
    tree, head, expected = CompactRange(), GENESIS_HEAD, 0
    counts = {"ok": 0, "shredded": 0, "auth_fail": 0, "missing": 0} if keyring is not None else None
    if 0 in wanted:
        roots[0] = tree.root()
    for row in iter_rows(conn):
        if row.seq != expected:
            report.add(Outcome.TAMPERED, f"sequence jumps from {expected - 1} to {row.seq}", row.seq)
            expected = row.seq
        leaf = row_leaf(log_id, row)
        if not hmac.compare_digest(leaf, row.leaf):
            report.add(Outcome.TAMPERED, "leaf hash does not match the record", row.seq)
        if not hmac.compare_digest(row.prev_head, head):
            report.add(Outcome.TAMPERED, "previous chain head does not match", row.seq)
        head = next_head(head, leaf)
        tree.append(leaf)
        expected += 1
        if tree.size in wanted:
            roots[tree.size] = tree.root()
        if keyring is not None and counts is not None:
            _decrypt_row(keyring, log_id, row, counts, report)
    report.size, report.root = tree.size, tree.root().hex()
    external = [size for where, size, _ in claimed if where == "external"]
    report.external_size = max(external) if external else None
    for where, size, root in claimed:
        report.checkpoints_checked += 1
        if size > tree.size:
            report.add(
                Outcome.ROLLBACK, f"{where} checkpoint at size {size}, log has only {tree.size} records"
            )
        elif not hmac.compare_digest(roots[size], root):
            report.add(Outcome.TAMPERED, f"{where} checkpoint root at size {size} does not match the log")
    report.payloads = counts
    return report


def _decrypt_row(
    keyring: Keyring, log_id: bytes, row: Row, counts: dict[str, int], report: VerifyReport
) -> None:
    parts = [(row.kid, False)] + ([(row.ckid, True)] if row.ckid is not None else [])
    for kid, content in parts:
        state, aead = keyring.decrypting_key(kid)
        if state is KeyState.SHREDDED:
            counts["shredded"] += 1
            continue
        if state is KeyState.MISSING or aead is None:
            counts["missing"] += 1
            report.add(
                Outcome.KEY_ERROR, f"no key {kid.hex()} for {'content' if content else 'metadata'}", row.seq
            )
            continue
        try:
            open_part(log_id, row, aead, content=content)
        except DecryptError:
            counts["auth_fail"] += 1
            report.add(
                Outcome.TAMPERED, f"{'content' if content else 'metadata'} fails authentication", row.seq
            )
            continue
        counts["ok"] += 1
