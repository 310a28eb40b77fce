"""Known answers for the primitives as we call them, and the binding properties of our encodings."""

from __future__ import annotations

import hmac

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from audit.crypto import (
    DecryptError,
    KeyedIds,
    keyed_id,
    leaf_preimage,
    next_head,
    open_aead,
    record_aad,
    record_leaf,
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


def test_keyed_ids_match_keyed_id_and_reuse_no_state() -> None:
    key = bytes(range(32))
    ids = KeyedIds(key)
    for purpose, parts in [(b"subject", ("acme", "bob")), (b"request", ("acme", "r-1")), (b"tenant", ("a",))]:
        assert ids(purpose, *parts) == keyed_id(key, purpose, *parts)
    assert ids(b"subject", "acme", "bob") == keyed_id(
        key, b"subject", "acme", "bob"
    )  # the base is not consumed


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


def test_record_encodings_known_answers() -> None:
    """The stored format, byte for byte: every leaf ever written depends on these encodings."""
    aad = record_aad(
        log_id=bytes(range(16)),
        seq=7,
        ts_ns=1_700_000_000_123_456_789,
        event_type="request.start",
        tenant_h=b"\x11" * 32,
        subject_h=None,
        request_h=b"\x22" * 32,
        kid=b"\x01abcd",
        ckid=b"\x01efgh",
        prev_head=b"\x33" * 32,
    )
    assert aad == (
        b"v1"
        + b"\x00\x00\x00\x10" + bytes(range(16))
        + (7).to_bytes(8, "big") + (1_700_000_000_123_456_789).to_bytes(8, "big")
        + b"\x00\x00\x00\x0drequest.start"
        + b"\x00\x00\x00\x20" + b"\x11" * 32
        + b"\x00"
        + b"\x01\x00\x00\x00\x20" + b"\x22" * 32
        + b"\x00\x00\x00\x05\x01abcd"
        + b"\x01\x00\x00\x00\x05\x01efgh"
        + b"\x00\x00\x00\x20" + b"\x33" * 32
    )  # fmt: skip
    no_content = leaf_preimage(aad, b"\x44" * 12, b"\x55" * 40, None, None)
    assert no_content == (
        b"\x00\x00\x00\xb8" + aad + b"\x00\x00\x00\x0c" + b"\x44" * 12 + b"\x00\x00\x00\x28" + b"\x55" * 40
        + b"\x00\x00"
    )  # fmt: skip
    with_content = leaf_preimage(aad, b"\x44" * 12, b"\x55" * 40, b"\x66" * 12, b"\x77" * 30)
    assert record_leaf(with_content).hex() == (
        "d19bbacaf1ef8ab62c3a48254c0f1e7c1a0492c35b4216ced4587a86aa17373c"
    )
    key = bytes(range(32))
    expected = hmac.new(key, b"\x00\x00\x00\x07request\x00\x00\x00\x04acme\x00\x00\x00\x05req-1", "sha256")
    assert keyed_id(key, b"request", "acme", "req-1") == expected.digest()
    assert expected.hexdigest() == "0dcfc0eed37185e4b83471f0393a5e25d0266f70fa2c238d2475d7f9ff75e54f"


def test_seal_takes_only_a_full_nonce() -> None:
    aead = AESGCM(bytes(32))
    nonce, ct = seal(aead, b"payload", b"aad", b"\x09" * 12)
    assert nonce == b"\x09" * 12 and open_aead(aead, nonce, ct, b"aad") == b"payload"
    with pytest.raises(ValueError):
        seal(aead, b"payload", b"aad", b"\x09" * 8)
