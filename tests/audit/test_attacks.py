"""Every attack from issue 3, each with the triggers dropped first, as an attacker would."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from audit import generate_kek_file

from .conftest import ConfigFactory, raw
from .helpers import cli, populate_sync

TAMPERED, ROLLBACK, KEY = 2, 3, 4
FIELDS = [
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
]


def _verify(config: object, *extra: str) -> tuple[int, dict]:
    code, out, _ = cli(config, "verify", "--json", *extra)  # type: ignore[arg-type]
    return code, json.loads(out) if out.strip().startswith("{") else {}


@pytest.fixture
def logged(make_config: ConfigFactory):  # type: ignore[no-untyped-def]
    config = make_config()
    populate_sync(config, 20)
    assert _verify(config)[0] == 0
    return config


@pytest.mark.parametrize("field", FIELDS)
def test_flipping_a_byte_in_any_field_is_tampering(logged, field: str) -> None:  # type: ignore[no-untyped-def]
    conn = raw(logged.path)
    value = conn.execute(f"SELECT {field} FROM audit WHERE seq = 7").fetchone()[0]
    if isinstance(value, int):
        new: object = value ^ 1
    elif isinstance(value, str):
        new = value + "x"
    else:
        b = bytearray(value)
        b[len(b) // 2] ^= 0x01
        new = bytes(b)
    conn.execute(f"UPDATE audit SET {field} = ? WHERE seq = 7", (new,))
    conn.close()
    code, report = _verify(logged, "--decrypt")
    assert code == TAMPERED, report
    assert any(f["seq"] == 7 for f in report["findings"]), report["findings"]


def test_deleting_a_middle_row(logged) -> None:  # type: ignore[no-untyped-def]
    raw(logged.path).execute("DELETE FROM audit WHERE seq = 10")
    assert _verify(logged)[0] == TAMPERED


def test_swapping_two_rows(logged) -> None:  # type: ignore[no-untyped-def]
    conn = raw(logged.path)
    cols = ", ".join(f"{c} = (SELECT {c} FROM audit WHERE seq = {{o}})" for c in FIELDS)
    conn.execute("CREATE TABLE t AS SELECT * FROM audit WHERE seq IN (4, 5)")
    for a, b in ((4, 5), (5, 4)):
        conn.execute(
            f"UPDATE audit SET {', '.join(f'{c} = (SELECT {c} FROM t WHERE seq = {b})' for c in FIELDS)}"
            f" WHERE seq = {a}"
        )
    assert cols
    code, _report = _verify(logged, "--decrypt")
    assert code == TAMPERED


def test_moving_a_ciphertext_to_another_tenant(make_config: ConfigFactory) -> None:
    config = make_config()
    populate_sync(config, 3, tenant="a")
    populate_sync(config, 3, tenant="b")
    conn = raw(config.path)
    # Paste tenant a's record (ids, key, ciphertexts) over tenant b's row, keeping b's position.
    cols = ["tenant_h", "subject_h", "request_h", "kid", "nonce", "ct", "ckid", "cnonce", "cct"]
    conn.execute(
        f"UPDATE audit SET {', '.join(f'{c} = (SELECT {c} FROM audit WHERE seq = 1)' for c in cols)}"
        " WHERE seq = 4"
    )
    code, report = _verify(config, "--decrypt")
    assert code == TAMPERED and any(f["seq"] == 4 for f in report["findings"])


def test_truncating_the_tail(logged) -> None:  # type: ignore[no-untyped-def]
    conn = raw(logged.path)
    conn.execute("DELETE FROM audit WHERE seq >= 15")
    conn.execute("DELETE FROM checkpoints WHERE size > 15")
    code, report = _verify(logged)
    assert code == ROLLBACK, report


def test_replacing_the_file_with_an_older_copy(make_config: ConfigFactory, tmp_path: Path) -> None:
    config = make_config()
    populate_sync(config, 6)
    for suffix in ("", "-wal", "-shm"):
        if Path(config.path + suffix).exists():
            shutil.copy(config.path + suffix, tmp_path / f"old{suffix}")
    populate_sync(config, 6)
    for suffix in ("", "-wal", "-shm"):
        Path(config.path + suffix).unlink(missing_ok=True)
        if (tmp_path / f"old{suffix}").exists():
            shutil.copy(tmp_path / f"old{suffix}", config.path + suffix)
    assert _verify(config)[0] == ROLLBACK


def test_rewriting_history_and_recomputing_every_hash(logged) -> None:  # type: ignore[no-untyped-def]
    from audit.crypto import GENESIS_HEAD, next_head
    from audit.record import Row, row_leaf
    from audit.store import iter_rows, read_log_id

    conn = raw(logged.path)
    log_id = read_log_id(conn)
    rows = list(iter_rows(conn))
    conn.execute("DELETE FROM checkpoints")
    head = GENESIS_HEAD
    for row in rows:
        r = row._replace(event_type="request.harmless" if row.seq == 3 else row.event_type, prev_head=head)
        leaf = row_leaf(log_id, Row(*r[:-1], b""))
        conn.execute(
            "UPDATE audit SET event_type = ?, prev_head = ?, leaf = ? WHERE seq = ?",
            (r.event_type, head, leaf, row.seq),
        )
        head = next_head(head, leaf)
    code, report = _verify(logged)
    assert code == TAMPERED  # the external checkpoint's root no longer matches
    assert any("external" in f["detail"] for f in report["findings"])


def test_replaying_an_old_checkpoint(make_config: ConfigFactory, tmp_path: Path) -> None:
    logged = make_config()
    populate_sync(logged, 8)
    populate_sync(logged, 8)
    cp_dir = Path(logged.checkpoint_path)
    history = (cp_dir / "checkpoints.log").read_text()
    trusted = tmp_path / "trusted.checkpoint"
    trusted.write_text((cp_dir / "checkpoint").read_text())
    old = history.split("\n\n\u2014")[0]  # the first (smallest) checkpoint's body
    size = int(old.split("\n")[1])
    conn = raw(logged.path)
    conn.execute("DELETE FROM audit WHERE seq >= ?", (size,))
    conn.execute("DELETE FROM checkpoints WHERE size > ?", (size,))
    (cp_dir / "checkpoints.log").unlink()
    (cp_dir / "checkpoint").write_text(history[: history.index("\n", history.index("\u2014")) + 1])
    assert _verify(logged)[0] == 0  # consistent with the replayed note alone ...
    code, report = _verify(logged, "--checkpoint", str(trusted))
    assert code == ROLLBACK, report  # ... not with the trusted one


def test_forged_checkpoint_signature(logged) -> None:  # type: ignore[no-untyped-def]
    path = Path(logged.checkpoint_path) / "checkpoint"
    lines = path.read_text().split("\n")
    lines[1] = str(int(lines[1]) - 1)
    path.write_text("\n".join(lines))
    assert _verify(logged)[0] == TAMPERED


def test_wrong_kek(logged, make_config: ConfigFactory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    generate_kek_file(tmp_path / "wrong.kek")
    code, _out, err = cli(make_config(kek_file=str(tmp_path / "wrong.kek")), "verify", "--decrypt")
    assert code == KEY, err
    assert _verify(logged)[0] == 0  # without decryption no key is needed


def test_prove_and_check_offline(logged, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    code, proof, err = cli(logged, "prove", "--seq", "7")
    assert code == 0, err
    code, vkey, _ = cli(logged, "vkey")
    (tmp_path / "p").write_text(proof)
    code, out, err = cli(logged, "check-proof", str(tmp_path / "p"), "--vkey", vkey.strip())
    assert code == 0 and "record 7" in out, err
    bad = proof.replace("index 7", "index 6")
    (tmp_path / "bad").write_text(bad)
    assert cli(logged, "check-proof", str(tmp_path / "bad"), "--vkey", vkey.strip())[0] == TAMPERED
