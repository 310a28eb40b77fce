"""``bastion audit shred --tenant`` and ``rotate-kek`` cover the context store: offline through the CLI
(no node running: it opens ``<data_dir>/context.db`` itself), live through the admin socket."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from audit import AuditLog, generate_kek_file
from audit.errors import AuditKeyError
from audit.kek import KeyEncryptionKey, kek_from_file
from node.admin import AdminClient, admin_channel
from node.cli import main
from node.context import NotFoundError, SqliteBackend
from tests.harness import node_setup
from tests.node.context.test_sqlite_backend import _store_with_file


async def _fill(db: Path, kek: KeyEncryptionKey) -> dict[str, tuple[str, str]]:
    backend = await SqliteBackend.open(db, kek)
    try:
        return {t: await _store_with_file(backend, t, [f"{t} text"]) for t in ("acme", "globex")}
    finally:
        await backend.aclose()


async def _reads(db: Path, kek: KeyEncryptionKey, tenant: str, file_id: str) -> bytes:
    backend = await SqliteBackend.open(db, kek)
    try:
        return await backend.file_content(tenant, file_id)
    finally:
        await backend.aclose()


def test_offline_shred_and_rotation_cover_the_context_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    setup = node_setup(tmp_path)
    config = tmp_path / "node.toml"
    config.write_text(setup.toml)
    db = tmp_path / "data" / "context.db"
    kek = kek_from_file(tmp_path / "kek.key")
    ids = asyncio.run(_fill(db, kek))

    assert main(["audit", "--config", str(config), "shred", "--tenant", "acme"]) == 0
    out = capsys.readouterr().out
    assert "offline" in out and "erased tenant 'acme' from the context store" in out and "'files': 1" in out
    with pytest.raises(NotFoundError):
        asyncio.run(_reads(db, kek, "acme", ids["acme"][1]))
    assert asyncio.run(_reads(db, kek, "globex", ids["globex"][1])) == b"raw body"

    # a subject's shred leaves retrieval data alone (files are the tenant's, not a subject's)
    assert main(["audit", "--config", str(config), "shred", "--tenant", "globex", "--subject", "bob"]) == 0
    assert "context store" not in capsys.readouterr().out

    new = tmp_path / "kek.new"
    generate_kek_file(new)
    assert main(["audit", "--config", str(config), "rotate-kek", "--new-kek-file", str(new)]) == 0
    assert "rewrapped 1 context data key(s)" in capsys.readouterr().out
    assert asyncio.run(_reads(db, kek_from_file(new), "globex", ids["globex"][1])) == b"raw body"
    with pytest.raises(AuditKeyError):
        asyncio.run(_reads(db, kek, "globex", ids["globex"][1]))


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A folder short enough for a Unix socket's path."""
    path = Path(tempfile.mkdtemp(prefix="bctx"))
    yield path
    shutil.rmtree(path)


async def test_a_running_node_shreds_and_rewraps_its_context_store(tmp_path: Path, short_dir: Path) -> None:
    setup = node_setup(tmp_path)
    assert setup.config.audit is not None
    kek = kek_from_file(tmp_path / "kek.key")
    db = tmp_path / "data" / "context.db"
    ids = await _fill(db, kek)
    new = tmp_path / "kek.new"
    generate_kek_file(new)
    client = AdminClient(short_dir / "admin.sock")
    backend = await SqliteBackend.open(db, kek)
    try:
        async with (
            await AuditLog.open(setup.config.audit) as log,
            admin_channel(short_dir / "admin.sock", log, context=backend),
        ):
            reply = await asyncio.to_thread(client.call, {"op": "shred", "tenant": "acme"})
            assert reply["ok"] and reply["context"] == {"stores": 1, "files": 1, "chunks": 1, "keys": 1}
            reply = await asyncio.to_thread(
                client.call, {"op": "shred", "tenant": "globex", "subject": "bob"}
            )
            assert reply["ok"] and "context" not in reply
            reply = await asyncio.to_thread(client.call, {"op": "rotate-kek", "new_kek_file": str(new)})
            assert reply["ok"] and reply["context_keys"] == 1
        assert await backend.list_stores("acme") == []
        assert await backend.file_content("globex", ids["globex"][1]) == b"raw body"
    finally:
        await backend.aclose()
    assert await _reads(db, kek_from_file(new), "globex", ids["globex"][1]) == b"raw body"
