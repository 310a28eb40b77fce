"""RFC 6962/9162 known answers (transparency-dev/merkle testdata) and exhaustive small proofs."""

from __future__ import annotations

import hashlib

import pytest

from audit.merkle import (
    EMPTY_ROOT,
    consistency_proof,
    hash_children,
    hash_leaf,
    inclusion_proof,
    root_hash,
    verify_consistency,
    verify_inclusion,
)

H = bytes.fromhex
LEAVES = [
    H(x)
    for x in [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
]
ROOTS = [
    H(x)
    for x in [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ]
]
INCLUSION = [  # (1-based leaf, size, proof)
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (3, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        2,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]
CONSISTENCY = [
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
]
SOME = H("abacaba000000000000000000000000000000000000000000060061e00123456")


def test_hasher_known_answers() -> None:
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert hash_leaf(b"").hex() == "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    assert hash_leaf(b"L123456").hex() == "395aa064aa4c29f7010acfe3f25db9485bbd4b91897b6ad7ad547639252b4d56"
    assert hash_children(b"N123", b"N456").hex() == (
        "aa217fe888e47007fa15edab33c2b492a722cb106c64667fc2b044444de66bbb"
    )
    assert hash_leaf(hash_leaf(b"a") + hash_leaf(b"b")) != hash_children(hash_leaf(b"a"), hash_leaf(b"b"))


def test_roots_of_every_prefix() -> None:
    hashes = [hash_leaf(x) for x in LEAVES]
    for size in range(1, 9):
        assert root_hash(hashes[:size]) == ROOTS[size - 1]
    assert root_hash([]) == EMPTY_ROOT


@pytest.mark.parametrize(("leaf", "size", "proof"), INCLUSION)
def test_inclusion_known_answers(leaf: int, size: int, proof: list[str]) -> None:
    hashes = [hash_leaf(x) for x in LEAVES]
    assert inclusion_proof(hashes, leaf - 1, size) == [H(p) for p in proof]
    assert verify_inclusion(leaf - 1, size, hashes[leaf - 1], [H(p) for p in proof], ROOTS[size - 1])


@pytest.mark.parametrize(("size1", "size2", "proof"), CONSISTENCY)
def test_consistency_known_answers(size1: int, size2: int, proof: list[str]) -> None:
    hashes = [hash_leaf(x) for x in LEAVES]
    assert consistency_proof(hashes, size1, size2) == [H(p) for p in proof]
    assert verify_consistency(size1, size2, [H(p) for p in proof], ROOTS[size1 - 1], ROOTS[size2 - 1])


def _inclusion_probes(i: int, n: int, leaf: bytes, proof: list[bytes], root: bytes) -> list[tuple]:
    probes = [
        (i - 1, n, leaf, proof, root),
        (i + 1, n, leaf, proof, root),
        (i ^ 2, n, leaf, proof, root),
        (i, n * 2, leaf, proof, root),
        (i, n // 2, leaf, proof, root),
        (i, n, b"WrongLeaf", proof, root),
        (i, n, leaf, proof, EMPTY_ROOT),
        (i, n, leaf, proof, SOME),
        (i, n, leaf, [*proof, b""], root),
        (i, n, leaf, [*proof, root], root),
        (i, n, leaf, [b"", *proof], root),
        (i, n, leaf, [root, *proof], root),
    ]
    for k in range(len(proof)):
        bad = list(proof)
        bad[k] = bytes([bad[k][0] ^ 8]) + bad[k][1:]
        probes.append((i, n, leaf, bad, root))
    if proof:
        probes.append((i, n, leaf, proof[:-1], root))
    if len(proof) > 1:
        probes.append((i, n, leaf, [SOME, *proof[1:]] if proof[0] != SOME else proof, root))
    return probes


def test_every_inclusion_proof_up_to_40_leaves_and_its_corruptions() -> None:
    hashes = [hash_leaf(hashlib.sha256(bytes([k])).digest()) for k in range(40)]
    for n in range(1, 41):
        root = root_hash(hashes[:n])
        for i in range(n):
            proof = inclusion_proof(hashes, i, n)
            assert verify_inclusion(i, n, hashes[i], proof, root)
            for probe in _inclusion_probes(i, n, hashes[i], proof, root):
                if probe[0] == i and probe[1] == n and probe[2:] == (hashes[i], proof, root):
                    continue
                assert not verify_inclusion(*probe), (i, n, probe[:2])


def test_every_consistency_proof_up_to_40_leaves_and_its_corruptions() -> None:
    hashes = [hash_leaf(hashlib.sha256(bytes([k])).digest()) for k in range(40)]
    roots = [root_hash(hashes[:n]) for n in range(41)]
    for n2 in range(0, 41):
        for n1 in range(0, n2 + 1):
            proof = consistency_proof(hashes, n1, n2)
            assert verify_consistency(n1, n2, proof, roots[n1], roots[n2]), (n1, n2)
            if not proof:
                continue
            r1, r2 = roots[n1], roots[n2]
            probes = [
                (n1 - 1, n2, proof, r1, r2),
                (n1 + 1, n2, proof, r1, r2),
                (n1 ^ 2, n2, proof, r1, r2),
                (n1, n2 * 2, proof, r1, r2),
                (n1, n2 // 2, proof, r1, r2),
                (n1, n2, proof, b"WrongRoot", r2),
                (n1, n2, proof, r1, b"WrongRoot"),
                (n1, n2, proof, r2, r1),
                (n1, n2, [], r1, r2),
                (n1, n2, [*proof, b""], r1, r2),
                (n1, n2, [*proof, r1], r1, r2),
                (n1, n2, [*proof, r2], r1, r2),
                (n1, n2, [b"", *proof], r1, r2),
                (n1, n2, [r1, *proof], r1, r2),
                (n1, n2, [r2, *proof], r1, r2),
                (n1, n2, [proof[0], *proof], r1, r2),
                (n1, n2, proof[:-1], r1, r2),
            ]
            for k in range(len(proof)):
                bad = list(proof)
                bad[k] = bytes([bad[k][0] ^ 16]) + bad[k][1:]
                probes.append((n1, n2, bad, r1, r2))
            for probe in probes:
                if probe[0] == n1 and probe[1] == n2 and probe[2:] == (proof, r1, r2):
                    continue
                # size1 +/- 1 can still be a valid statement about other roots only by collision.
                assert not verify_consistency(*probe), (n1, n2, probe[:2])


def test_degenerate_consistency_cases() -> None:
    r1, r2 = b"don't care 1", b"don't care 2"
    assert not verify_consistency(1, 1, [], r1, r2)
    assert verify_consistency(0, 1, [], r1, r2)
    assert not verify_consistency(1, 0, [], r1, r2)
    assert not verify_consistency(2, 1, [], r1, r2)
    assert not verify_consistency(1, 2, [], r1, r2)
    assert not verify_consistency(0, 0, [EMPTY_ROOT], EMPTY_ROOT, EMPTY_ROOT)
    assert not verify_inclusion(0, 0, SOME, [], EMPTY_ROOT)
    assert not verify_inclusion(2, 1, SOME, [], EMPTY_ROOT)
