"""Record crypto as pure functions over bytes: AEAD, associated data, chain, keyed ids, key wrapping.

- Payloads: AES-256-GCM with a random 96-bit nonce per record. Never a counter
  nonce: a restored backup would replay sequence numbers under the same key.
- Associated data binds the log id, sequence number, timestamp, event type,
  the searchable ids, both key ids and the previous chain head, so a moved,
  swapped or re-ordered ciphertext fails to authenticate.
- Leaves hash the associated data, nonces and ciphertexts (never plaintext), so
  verification needs no keys and survives crypto-shredding.
- Searchable identifiers are HMAC-SHA256 under a key held outside the log,
  never plain hashes (a hashed low-entropy identifier is still personal data).
- Data keys are wrapped with AES-256-GCM under the key-encryption key, with
  associated data naming the key's id and scope so wrapped keys cannot be swapped.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .merkle import hash_leaf

__all__ = [
    "FORMAT",
    "GENESIS_HEAD",
    "KEY_LEN",
    "KID_LEN",
    "NONCE_LEN",
    "DecryptError",
    "KeyedIds",
    "aad_from_parts",
    "aad_prefix",
    "keyed_id",
    "leaf_preimage",
    "length_prefixed",
    "new_key",
    "new_kid",
    "next_head",
    "open_aead",
    "record_aad",
    "record_leaf",
    "seal",
    "unwrap_key",
    "wrap_key",
]

FORMAT = b"v1"
KID_FORMAT = 0x01
KID_LEN = 5
KEY_LEN = 32
NONCE_LEN = 12
_QQ = struct.Struct(">QQ").pack
_U32 = struct.Struct(">I").pack
GENESIS_HEAD = bytes(32)
META_PART = b"\x01"
CONTENT_PART = b"\x02"


class DecryptError(Exception):
    """Authentication failed: wrong key, or the ciphertext or its context was altered."""


def new_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def new_kid() -> bytes:
    """A format byte and four random bytes, like Tink's output prefix."""
    return bytes([KID_FORMAT]) + os.urandom(KID_LEN - 1)


def length_prefixed(data: bytes) -> bytes:
    return _U32(len(data)) + data


_lp = length_prefixed


def aad_prefix(log_id: bytes) -> bytes:
    """The start of every associated data in a log: the format and the log id."""
    return FORMAT + _lp(log_id)


def record_aad(
    *,
    log_id: bytes,
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
    """Unambiguous encoding of everything a record's ciphertexts are bound to."""
    return aad_from_parts(
        aad_prefix(log_id),
        seq,
        ts_ns,
        _lp(event_type.encode()),
        tenant_h,
        subject_h,
        request_h,
        kid,
        ckid,
        prev_head,
    )


def aad_from_parts(
    prefix: bytes,
    seq: int,
    ts_ns: int,
    event_type_lp: bytes,
    tenant_h: bytes,
    subject_h: bytes | None,
    request_h: bytes | None,
    kid: bytes,
    ckid: bytes | None,
    prev_head: bytes,
) -> bytes:
    """record_aad from ``aad_prefix(log_id)`` and ``length_prefixed(event_type)``, which a writer
    computes once; positional and one join, as it runs once per record on the writer's path."""
    return b"".join(
        (
            prefix,
            _QQ(seq, ts_ns),
            event_type_lp,
            _U32(len(tenant_h)),
            tenant_h,
            b"\x00" if subject_h is None else b"\x01" + _U32(len(subject_h)) + subject_h,
            b"\x00" if request_h is None else b"\x01" + _U32(len(request_h)) + request_h,
            _U32(len(kid)),
            kid,
            b"\x00" if ckid is None else b"\x01" + _U32(len(ckid)) + ckid,
            _U32(len(prev_head)),
            prev_head,
        )
    )


def seal(aead: AESGCM, plaintext: bytes, aad: bytes, nonce: bytes | None = None) -> tuple[bytes, bytes]:
    """Encrypt under a fresh random nonce; returns (nonce, ciphertext with tag).

    ``nonce`` lets a caller that seals many records draw their random nonces from
    the OS CSPRNG in one call; it must be fresh ``os.urandom`` output, never reused.
    """
    if nonce is None:
        nonce = os.urandom(NONCE_LEN)
    elif len(nonce) != NONCE_LEN:
        raise ValueError(f"nonce must be {NONCE_LEN} bytes")
    return nonce, aead.encrypt(nonce, plaintext, aad)


def open_aead(aead: AESGCM, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    try:
        return aead.decrypt(nonce, ciphertext, aad)
    except (InvalidTag, ValueError) as exc:
        raise DecryptError("authentication failed") from exc


def leaf_preimage(aad: bytes, nonce: bytes, ct: bytes, cnonce: bytes | None, cct: bytes | None) -> bytes:
    """The bytes a record's leaf hashes: its context and ciphertexts, never plaintext."""
    return b"".join(
        (
            _U32(len(aad)),
            aad,
            _U32(len(nonce)),
            nonce,
            _U32(len(ct)),
            ct,
            b"\x00" if cnonce is None else b"\x01" + _U32(len(cnonce)) + cnonce,
            b"\x00" if cct is None else b"\x01" + _U32(len(cct)) + cct,
        )
    )


def record_leaf(preimage: bytes) -> bytes:
    return hash_leaf(preimage)


def next_head(prev_head: bytes, leaf: bytes) -> bytes:
    """head_i = SHA-256(head_{i-1} || leaf_i)."""
    return hashlib.sha256(prev_head + leaf).digest()


def keyed_id(key: bytes, purpose: bytes, *parts: str) -> bytes:
    """HMAC-SHA256 of length-prefixed parts, domain-separated by purpose."""
    return hmac.digest(key, _keyed_id_msg(purpose, parts), "sha256")


def _keyed_id_msg(purpose: bytes, parts: tuple[str, ...]) -> bytes:
    return _lp(purpose) + b"".join([_lp(p.encode()) for p in parts])


class KeyedIds:
    """``keyed_id`` under one key, for the writer's path: the same bytes, without a GIL hand-off.

    The HMAC's keyed state is set up once and copied per id. CPython's one-shot
    ``hmac.digest`` gives up the GIL on every call, and with another thread of
    the node waiting for it the loop then waits for that thread's turn: 19 us per
    id measured next to a busy thread, against ~1 us here. ``update`` keeps the
    GIL for messages under 2 KiB, and ids are far shorter.
    """

    __slots__ = ("_base",)

    def __init__(self, key: bytes) -> None:
        self._base = hmac.new(key, digestmod=hashlib.sha256)

    def __call__(self, purpose: bytes, *parts: str) -> bytes:
        h = self._base.copy()
        h.update(_keyed_id_msg(purpose, parts))
        return h.digest()


def wrap_key(kek: bytes, key: bytes, context: bytes) -> bytes:
    nonce = os.urandom(NONCE_LEN)
    return nonce + AESGCM(kek).encrypt(nonce, key, context)


def unwrap_key(kek: bytes, wrapped: bytes, context: bytes) -> bytes:
    if len(wrapped) < NONCE_LEN + 16:
        raise DecryptError("wrapped key too short")
    return open_aead(AESGCM(kek), wrapped[:NONCE_LEN], wrapped[NONCE_LEN:], context)
