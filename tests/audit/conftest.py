from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from audit import AuditConfig, generate_kek_file, generate_signing_key

ConfigFactory = Callable[..., AuditConfig]


def decode_config(fields: dict[str, Any]) -> AuditConfig:
    return msgspec.json.decode(msgspec.json.encode(fields), type=AuditConfig)


@pytest.fixture
def make_config(tmp_path: Path) -> ConfigFactory:
    generate_kek_file(tmp_path / "kek")
    generate_signing_key(tmp_path / "signing.key")

    def make(**overrides: Any) -> AuditConfig:
        fields: dict[str, Any] = {
            "path": str(tmp_path / "audit.db"),
            "kek_file": str(tmp_path / "kek"),
            "signing_key_file": str(tmp_path / "signing.key"),
            "checkpoint_path": str(tmp_path / "checkpoints"),
            "checkpoint_every_records": 5,
        }
        fields.update(overrides)
        return decode_config(fields)

    return make


def raw(path: str) -> sqlite3.Connection:
    """An attacker's connection: triggers dropped first."""
    conn = sqlite3.connect(path, isolation_level=None)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f"DROP TRIGGER {name}")
    return conn
