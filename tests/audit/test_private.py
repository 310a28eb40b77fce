"""Every file and folder the log writes is private (0600/0700); an existing open one is refused."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from audit import (
    AuditConfigError,
    AuditEvent,
    AuditLog,
    AuditPermissionError,
    check_files,
    check_keys,
)
from tests.audit.conftest import ConfigFactory
from tests.audit.helpers import populate


def _open_to_others(root: Path) -> list[str]:
    paths = [root, *root.rglob("*")]
    return [f"{p} {stat.S_IMODE(p.stat().st_mode):o}" for p in paths if p.stat().st_mode & 0o077]


async def test_every_file_and_folder_the_log_writes_is_private(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    root = tmp_path / "srv"
    config = make_config(
        path=str(root / "audit" / "log" / "audit.db"), checkpoint_path=str(root / "worm" / "cp")
    )
    async with await AuditLog.open(config) as log:
        for i in range(12):
            await log.append(AuditEvent(type="request.start", tenant="acme", meta={"i": i}))
        log_dir = root / "audit" / "log"
        # SQLite gives the -wal and -shm files it creates the mode of the database file
        assert {"audit.db-wal", "audit.db-shm", "audit.db.keys-wal", "audit.db.keys-shm"} <= {
            p.name for p in log_dir.iterdir()
        }
        assert _open_to_others(root) == []
    assert (root / "worm" / "cp" / "checkpoints.log").is_file()
    assert _open_to_others(root) == []


@pytest.mark.parametrize(
    "target",
    [
        "audit.db",
        "audit.db.keys",
        "audit.db.lock",
        "checkpoints",
        "checkpoints/checkpoint",
        "checkpoints/checkpoints.log",
        ".",
    ],
)
async def test_a_file_or_folder_open_to_others_is_refused_naming_it(
    make_config: ConfigFactory, tmp_path: Path, target: str
) -> None:
    log_dir = tmp_path / "log"
    config = make_config(path=str(log_dir / "audit.db"), checkpoint_path=str(log_dir / "checkpoints"))
    await populate(config, 6)
    path = log_dir / target
    path.chmod(0o755 if path.is_dir() else 0o644)
    with pytest.raises(AuditPermissionError) as err:
        check_files(config)
    assert str(path.resolve() if target == "." else path) in str(err.value)
    with pytest.raises(AuditPermissionError):
        await AuditLog.open(config)


def test_check_keys_refuses_a_missing_or_open_key_file(make_config: ConfigFactory, tmp_path: Path) -> None:
    config = make_config()
    check_keys(config)
    os.chmod(config.signing_key_file, 0o640)
    with pytest.raises(AuditPermissionError, match=r"signing\.key: file mode 640"):
        check_keys(config)
    with pytest.raises(AuditConfigError, match="no such key file"):
        check_keys(make_config(kek_file=str(tmp_path / "absent.kek")))
