"""Key-encryption keys: a small protocol, and the local sources (a 0600 file or an env var).

A KMS, HSM or Vault transit key satisfies the same protocol later: it wraps and
unwraps data keys and names itself, and its key material never leaves it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path
from typing import Protocol, runtime_checkable

from .crypto import KEY_LEN, DecryptError, new_key, unwrap_key, wrap_key
from .errors import AuditKeyError
from .private import check_key_file, write_private_file

__all__ = [
    "KeyEncryptionKey",
    "LocalKek",
    "generate_kek_file",
    "kek_from_env",
    "kek_from_file",
]


@runtime_checkable
class KeyEncryptionKey(Protocol):
    @property
    def kek_id(self) -> str:
        """A stable, non-secret name for this key (stored beside each wrapped key)."""
        ...

    def wrap(self, key: bytes, context: bytes) -> bytes: ...

    def unwrap(self, wrapped: bytes, context: bytes) -> bytes:
        """Raises AuditKeyError when the wrapped key or its context does not authenticate."""
        ...


class LocalKek:
    """A 256-bit KEK held in process memory, wrapping with AES-256-GCM."""

    def __init__(self, material: bytes) -> None:
        if len(material) != KEY_LEN:
            raise AuditKeyError(f"a key-encryption key is {KEY_LEN} bytes, got {len(material)}")
        self._material = material
        self._id = hashlib.sha256(b"bastion-kek-id\x00" + material).hexdigest()[:16]

    @property
    def kek_id(self) -> str:
        return self._id

    def wrap(self, key: bytes, context: bytes) -> bytes:
        return wrap_key(self._material, key, context)

    def unwrap(self, wrapped: bytes, context: bytes) -> bytes:
        try:
            return unwrap_key(self._material, wrapped, context)
        except DecryptError as exc:
            raise AuditKeyError("a wrapped key does not open under this key-encryption key") from exc


def _decode_material(text: str, where: str) -> bytes:
    try:
        material = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise AuditKeyError(f"{where}: not base64") from exc
    if len(material) != KEY_LEN:
        raise AuditKeyError(f"{where}: expected {KEY_LEN} bytes, got {len(material)}")
    return material


def kek_from_file(path: str | Path) -> LocalKek:
    p = Path(path)
    check_key_file(p)
    return LocalKek(_decode_material(p.read_text(encoding="ascii"), str(p)))


def kek_from_env(name: str) -> LocalKek:
    value = os.environ.get(name)
    if not value:
        raise AuditKeyError(f"environment variable {name} is not set")
    return LocalKek(_decode_material(value, f"${name}"))


def generate_kek_file(path: str | Path) -> None:
    """Write a fresh random KEK (base64, mode 0600); refuses to overwrite an existing file."""
    write_private_file(path, base64.b64encode(new_key()) + b"\n")
