"""Signed checkpoints: the C2SP tlog-checkpoint body inside a C2SP signed note, Ed25519.

Body: ``<origin>\\n<size>\\n<base64 root>\\n``. Signature line:
``\\u2014 <name> <base64(key hash[4] || signature[64])>``, where the key hash is
``SHA-256(name || 0x0A || 0x01 || public key)[:4]`` and the signature covers the
body. The verifier key is written in the signed-note form
``<name>+<hex key hash>+<base64(0x01 || public key)>``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import AuditConfigError, AuditTamperedError
from .private import check_key_file, check_private, private_dir, write_private_file

__all__ = [
    "Checkpoint",
    "CheckpointStore",
    "generate_signing_key",
    "load_signing_key",
    "open_checkpoint",
    "parse_vkey",
    "sign_checkpoint",
    "split_notes",
    "vkey",
]

_DASH = "\u2014"
_ED25519 = b"\x01"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes

    def body(self) -> str:
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\n"


def _key_hash(name: str, public: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + _ED25519 + public).digest()[:4]


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def vkey(name: str, key: Ed25519PublicKey) -> str:
    raw = _raw_public(key)
    return f"{name}+{_key_hash(name, raw).hex()}+{base64.b64encode(_ED25519 + raw).decode()}"


def parse_vkey(text: str) -> tuple[str, Ed25519PublicKey]:
    try:
        name, hash_hex, key_b64 = text.strip().split("+", 2)
        blob = base64.b64decode(key_b64, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise AuditConfigError("not a signed-note verifier key (name+hash+key)") from exc
    if blob[:1] != _ED25519 or len(blob) != 33 or _key_hash(name, blob[1:]).hex() != hash_hex:
        raise AuditConfigError("verifier key is not a consistent Ed25519 signed-note key")
    return name, Ed25519PublicKey.from_public_bytes(blob[1:])


def sign_checkpoint(cp: Checkpoint, key: Ed25519PrivateKey) -> str:
    body = cp.body()
    raw = _raw_public(key.public_key())
    sig = _key_hash(cp.origin, raw) + key.sign(body.encode())
    return f"{body}\n{_DASH} {cp.origin} {base64.b64encode(sig).decode()}\n"


def open_checkpoint(note: str, origin: str, key: Ed25519PublicKey) -> Checkpoint:
    """Parse a signed checkpoint and check its origin and our signature; raises AuditTamperedError."""
    body, sep, sigs = note.partition("\n\n")
    if not sep or not body:
        raise AuditTamperedError("checkpoint is not a signed note")
    body += "\n"
    lines = body.split("\n")
    if len(lines) < 4 or lines[0] != origin:
        raise AuditTamperedError(f"checkpoint origin {lines[0]!r} is not {origin!r}")
    try:
        size = int(lines[1])
        root = base64.b64decode(lines[2], validate=True)
    except (ValueError, binascii.Error) as exc:
        raise AuditTamperedError("checkpoint body is malformed") from exc
    if size < 0 or str(size) != lines[1] or len(root) != 32:
        raise AuditTamperedError("checkpoint body is malformed")
    want = _key_hash(origin, _raw_public(key))
    for line in sigs.split("\n"):
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != _DASH or parts[1] != origin:
            continue
        try:
            sig = base64.b64decode(parts[2], validate=True)
        except (ValueError, binascii.Error):
            continue
        if sig[:4] != want:
            continue
        try:
            key.verify(sig[4:], body.encode())
        except InvalidSignature:
            raise AuditTamperedError("checkpoint signature does not verify") from None
        return Checkpoint(origin, size, root)
    raise AuditTamperedError("checkpoint carries no signature by this log's key")


def generate_signing_key(path: str | Path) -> None:
    """Write a fresh Ed25519 private key (PKCS#8 PEM, mode 0600); refuses to overwrite."""
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_private_file(path, pem)


def load_signing_key(path: str | Path) -> Ed25519PrivateKey:
    p = Path(path)
    check_key_file(p)
    try:
        key = serialization.load_pem_private_key(p.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise AuditConfigError(f"{p}: not an unencrypted PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise AuditConfigError(f"{p}: not an Ed25519 key")
    return key


def split_notes(text: str) -> list[str]:
    """Split concatenated signed notes (body, blank line, signature lines) apart."""
    notes: list[str] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        if not lines[i]:
            i += 1
            continue
        start = i
        while i < len(lines) and lines[i]:
            i += 1
        i += 1  # the blank line
        while i < len(lines) and lines[i].startswith(_DASH + " "):
            i += 1
        notes.append("\n".join(lines[start:i]) + "\n")
    return notes


class CheckpointStore:
    """The external checkpoint directory: ``checkpoint`` (latest, replaced atomically)
    and ``checkpoints.log`` (every note, appended for WORM/SIEM collection)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.latest = self.directory / "checkpoint"
        self.history = self.directory / "checkpoints.log"

    def read_latest(self) -> str | None:
        try:
            return self.latest.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def read_all(self) -> list[str]:
        """The latest note and every note in the history file."""
        notes = [n for n in (self.read_latest(),) if n]
        try:
            notes.extend(split_notes(self.history.read_text(encoding="utf-8")))
        except FileNotFoundError:
            pass
        return notes

    def check(self) -> None:
        """Refuse a checkpoint folder or file that group or others may access."""
        for path in (self.directory, self.latest, self.history):
            check_private(path)

    def write(self, note: str) -> None:
        private_dir(self.directory)
        data = note.encode()
        fd = os.open(self.history, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp = self.directory / f".checkpoint.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.latest)
        dfd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
