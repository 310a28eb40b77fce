"""Known answers for the primitives as we call them, and the binding properties of our encodings."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from audit.crypto import (
    DecryptError,
    keyed_id,
    next_head,
    open_aead,
    record_aad,
    seal,
    unwrap_key,
    wrap_key,
)


def test_aes256_gcm_known_answers() -> None:
    # McGrew & Viega, "The Galois/Counter Mode of Operation", test cases 13 and 14.
    aead = AESGCM(bytes(32))
    assert open_aead(aead, bytes(12), bytes.fromhex("530f8afbc74536b9a963b4f1c4cb738b"), b"") == b""
    ct = bytes.fromhex("cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919")
    assert open_aead(aead, bytes(12), ct, b"") == bytes(16)
    with pytest.raises(DecryptError):
        open_aead(aead, bytes(12), ct[:-1] + bytes([ct[-1] ^ 1]), b"")


def test_seal_uses_fresh_nonces_and_binds_aad() -> None:
    aead = AESGCM(AESGCM.generate_key(bit_length=256))
    n1, c1 = seal(aead, b"payload", b"aad")
    n2, c2 = seal(aead, b"payload", b"aad")
    assert len(n1) == 12 and n1 != n2 and c1 != c2
    assert open_aead(aead, n1, c1, b"aad") == b"payload"
    with pytest.raises(DecryptError):
        open_aead(aead, n1, c1, b"aae")


def test_chain_head_known_answer() -> None:
    # sha256(32 zero bytes || 32 zero bytes)
    assert next_head(bytes(32), bytes(32)).hex() == (
        "f5a5fd42d16a20302798ef6ed309979b43003d2320d9f0e8ea9831a92759fb4b"
    )


def test_keyed_id_is_hmac_sha256_and_domain_separated() -> None:
    key = bytes(range(32))
    a = keyed_id(key, b"subject", "acme", "bob")
    assert len(a) == 32
    assert a != keyed_id(key, b"request", "acme", "bob")
    assert a != keyed_id(key, b"subject", "acmeb", "ob")  # length-prefixed parts
    assert a != keyed_id(bytes(32), b"subject", "acme", "bob")


def test_aad_binds_every_field() -> None:
    base = dict(
        log_id=b"L" * 16,
        seq=7,
        ts_ns=123,
        event_type="request.start",
        tenant_h=b"t" * 32,
        subject_h=None,
        request_h=b"r" * 32,
        kid=b"\x01abcd",
        ckid=None,
        prev_head=bytes(32),
    )
    ref = record_aad(**base)  # type: ignore[arg-type]
    changes = dict(
        log_id=b"M" * 16,
        seq=8,
        ts_ns=124,
        event_type="request.end",
        tenant_h=b"u" * 32,
        subject_h=b"",
        request_h=None,
        kid=b"\x01abce",
        ckid=b"\x01abcd",
        prev_head=b"\x01" * 32,
    )
    for field, value in changes.items():
        assert record_aad(**{**base, field: value}) != ref, field  # type: ignore[arg-type]


def test_key_wrapping_binds_context() -> None:
    kek, dek = bytes(32), bytes(range(32))
    wrapped = wrap_key(kek, dek, b"ctx")
    assert unwrap_key(kek, wrapped, b"ctx") == dek
    with pytest.raises(DecryptError):
        unwrap_key(kek, wrapped, b"other")
    with pytest.raises(DecryptError):
        unwrap_key(b"\x01" * 32, wrapped, b"ctx")
