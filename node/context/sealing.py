"""Encryption at rest for the context store: one data key per file, wrapped under the node's KEK.

The audit log's own primitives (``audit.crypto``: AES-256-GCM with a random
96-bit nonce, keys wrapped with AES-256-GCM under the key-encryption key) and
its KEK (``audit.kek.KeyEncryptionKey``: a local file or env var today, a KMS
later) protect a file's contents, its name and the text of every chunk made
from it. Each file has its own data key, so deleting the file destroys its key
(crypto-shredding the file even in a backup taken before), and erasing a
tenant destroys every key of that tenant.

Associated data binds each ciphertext to where it belongs (tenant, file id,
store id, chunk index): a ciphertext moved to another row, file or tenant does
not open. Wrapped keys bind the tenant, file id and key id the same way.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import msgspec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from audit.crypto import NONCE_LEN, length_prefixed, new_key, new_kid, open_aead, seal
from audit.errors import AuditKeyError
from audit.kek import KeyEncryptionKey

from .records import AttributeValue, Chunk

__all__ = [
    "FileKey",
    "SealedChunk",
    "chunk_aad",
    "content_aad",
    "name_aad",
    "new_file_key",
    "open_chunks",
    "open_file_key",
    "rewrap_file_key",
]

_U32 = struct.Struct(">I").pack
_lp = length_prefixed


def _wrap_context(tenant: str, file_id: str, kid: bytes) -> bytes:
    return b"bastion-context-dek\x00" + _lp(tenant.encode()) + _lp(file_id.encode()) + _lp(kid)


def content_aad(tenant: str, file_id: str) -> bytes:
    return b"bastion-context-file\x00" + _lp(tenant.encode()) + _lp(file_id.encode())


def name_aad(tenant: str, file_id: str) -> bytes:
    return b"bastion-context-name\x00" + _lp(tenant.encode()) + _lp(file_id.encode())


def chunk_aad(tenant: str, file_id: str, store_id: str, index: int) -> bytes:
    return (
        b"bastion-context-chunk\x00"
        + _lp(tenant.encode())
        + _lp(file_id.encode())
        + _lp(store_id.encode())
        + _U32(index)
    )


class FileKey:
    """A file's data key, unwrapped: seals and opens that file's bytes."""

    __slots__ = ("_aead", "kid", "wrapped")

    def __init__(self, kid: bytes, wrapped: bytes, key: bytes) -> None:
        self.kid = kid
        self.wrapped = wrapped
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        """nonce || ciphertext-with-tag."""
        nonce, ct = seal(self._aead, plaintext, aad)
        return nonce + ct

    def open(self, sealed: bytes, aad: bytes) -> bytes:
        """Raises ``audit.crypto.DecryptError`` when the bytes or their place were altered."""
        return open_aead(self._aead, sealed[:NONCE_LEN], sealed[NONCE_LEN:], aad)


def new_file_key(kek: KeyEncryptionKey, tenant: str, file_id: str) -> FileKey:
    kid, key = new_kid(), new_key()
    return FileKey(kid, kek.wrap(key, _wrap_context(tenant, file_id, kid)), key)


def open_file_key(kek: KeyEncryptionKey, tenant: str, file_id: str, kid: bytes, wrapped: bytes) -> FileKey:
    """Raises ``audit.AuditKeyError`` when the KEK is not the one that wrapped it."""
    return FileKey(kid, wrapped, kek.unwrap(wrapped, _wrap_context(tenant, file_id, kid)))


def rewrap_file_key(
    old: KeyEncryptionKey, new: KeyEncryptionKey, tenant: str, file_id: str, kid: bytes, wrapped: bytes
) -> bytes:
    """The same data key, wrapped under ``new`` (a KEK rotation: the data itself is not re-encrypted).

    A key already under ``new`` is kept: nodes sharing one PostgreSQL store share the KEK, and the
    first node's rotation rewrapped the store's keys for all of them. Under neither: ``AuditKeyError``."""
    context = _wrap_context(tenant, file_id, kid)
    try:
        key = old.unwrap(wrapped, context)
    except AuditKeyError:
        new.unwrap(wrapped, context)
        return wrapped
    return new.wrap(key, context)


class SealedChunk(NamedTuple):
    """A chunk as both backends read it: its place, its sealed text, its file's sealed name and
    wrapped data key, and the file's attributes in the store (JSON)."""

    store_id: str
    key: int
    idx: int
    start_token: int
    end_token: int
    text: bytes
    file_pk: int
    file_id: str
    name: bytes
    kid: bytes
    wrapped: bytes
    attributes: bytes | str


def open_chunks(
    kek: KeyEncryptionKey, tenant: str, keys: Sequence[tuple[str, int]], rows: Iterable[SealedChunk]
) -> list[Chunk]:
    """The chunks ``keys`` asks for, in its order, decrypted from ``rows`` (read in one query);
    each file's data key is unwrapped and its name opened once. A key with no row (its file was
    detached or deleted since it was ranked) is left out."""
    by_key = {(r.store_id, r.key): r for r in rows}
    files: dict[int, tuple[FileKey, str]] = {}
    out: list[Chunk] = []
    for place in keys:
        row = by_key.get(place)
        if row is None:
            continue
        opened = files.get(row.file_pk)
        if opened is None:
            fkey = open_file_key(kek, tenant, row.file_id, bytes(row.kid), bytes(row.wrapped))
            opened = files[row.file_pk] = (
                fkey,
                fkey.open(bytes(row.name), name_aad(tenant, row.file_id)).decode(),
            )
        fkey, filename = opened
        out.append(
            Chunk(
                store_id=row.store_id,
                key=row.key,
                file_id=row.file_id,
                filename=filename,
                index=row.idx,
                start_token=row.start_token,
                end_token=row.end_token,
                text=fkey.open(
                    bytes(row.text), chunk_aad(tenant, row.file_id, row.store_id, row.idx)
                ).decode(),
                attributes=msgspec.json.decode(row.attributes, type=dict[str, AttributeValue]),
            )
        )
    return out
