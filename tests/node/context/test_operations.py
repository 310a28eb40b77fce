"""``bastion audit shred --tenant`` and ``rotate-kek`` cover the context store: offline through the CLI
(no node running: it opens ``<data_dir>/context.db`` and the PostgreSQL store ``[context]`` names itself),
live through the admin socket."""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from audit import AuditLog, generate_kek_file
from audit.errors import AuditKeyError
from audit.kek import KeyEncryptionKey, kek_from_file
from node.admin import AdminClient, admin_channel
from node.cli import main
from node.context import ContextBackend, NotFoundError, SqliteBackend
from node.context.postgres import PostgresBackend
from tests.conftest import TINY_EMBED_NAME
from tests.harness import node_setup
from tests.node.context.test_backend_contract import _store_with_file as contract_store
from tests.node.context.test_sqlite_backend import _store_with_file
from tests.postgres import PostgresServer

_T = TypeVar("_T")


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


PG_CONTEXT = f"""
[context]
embedding_model = "{TINY_EMBED_NAME}"
backend = "postgres"
[context.postgres]
postgres_url_file = "ctx-pg-url"
timeout_s = 1
"""


async def _pg(url: str, kek: KeyEncryptionKey, op: Callable[[ContextBackend], Awaitable[_T]]) -> _T:
    backend = await PostgresBackend.open(url, kek)
    try:
        return await op(backend)
    finally:
        await backend.aclose()


def test_offline_shred_and_rotation_cover_a_postgres_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pg_url: str
) -> None:
    (tmp_path / "ctx-pg-url").write_text(pg_url + "\n")
    setup = node_setup(tmp_path, extra=PG_CONTEXT)
    config = tmp_path / "node.toml"
    config.write_text(setup.toml)
    kek = kek_from_file(tmp_path / "kek.key")

    async def fill(b: ContextBackend) -> dict[str, tuple[str, str]]:
        return {t: await contract_store(b, t, [f"{t} text", "more"]) for t in ("acme", "globex")}

    ids = asyncio.run(_pg(pg_url, kek, fill))
    # a SQLite file left from before the move to PostgreSQL is covered as well
    sqlite_ids = asyncio.run(_fill(tmp_path / "data" / "context.db", kek))

    assert main(["audit", "--config", str(config), "shred", "--tenant", "acme"]) == 0
    out = capsys.readouterr().out
    assert "erased tenant 'acme' from the context store" in out
    assert "'stores': 2, 'files': 2, 'chunks': 3, 'keys': 2" in out
    with pytest.raises(NotFoundError):
        asyncio.run(_pg(pg_url, kek, lambda b: b.file_content("acme", ids["acme"][1])))
    assert asyncio.run(_pg(pg_url, kek, lambda b: b.list_stores("acme"))) == []
    with pytest.raises(NotFoundError):
        asyncio.run(_reads(tmp_path / "data" / "context.db", kek, "acme", sqlite_ids["acme"][1]))
    assert asyncio.run(_pg(pg_url, kek, lambda b: b.file_content("globex", ids["globex"][1]))) == b"raw"

    new = tmp_path / "kek.new"
    generate_kek_file(new)
    assert main(["audit", "--config", str(config), "rotate-kek", "--new-kek-file", str(new)]) == 0
    assert "rewrapped 2 context data key(s)" in capsys.readouterr().out  # globex's: PostgreSQL's and SQLite's

    def read(b: ContextBackend) -> Awaitable[bytes]:
        return b.file_content("globex", ids["globex"][1])

    assert asyncio.run(_pg(pg_url, kek_from_file(new), read)) == b"raw"
    with pytest.raises(AuditKeyError):
        asyncio.run(_pg(pg_url, kek, read))

    # another node on the same database (its own audit log, the fleet's old KEK) rotates to the same
    # new KEK: its log is rewrapped, the shared context keys are already under the new KEK and kept
    other = tmp_path / "b"
    other.mkdir(mode=0o700)
    (other / "ctx-pg-url").write_text(pg_url)
    b_config = other / "node.toml"
    b_config.write_text(node_setup(other, extra=PG_CONTEXT).toml)
    (other / "kek.key").write_bytes((tmp_path / "kek.key").read_bytes())  # the fleet's (old) KEK
    assert main(["audit", "--config", str(b_config), "shred", "--tenant", "nobody"]) == 0  # its log exists
    capsys.readouterr()
    assert main(["audit", "--config", str(b_config), "rotate-kek", "--new-kek-file", str(new)]) == 0
    assert "rewrapped 1 context data key(s)" in capsys.readouterr().out
    assert asyncio.run(_pg(pg_url, kek_from_file(new), read)) == b"raw"


def test_an_unreachable_postgres_store_stops_the_offline_command_before_the_log_changes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], postgres: PostgresServer, pg_url: str
) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    (tmp_path / "ctx-pg-url").write_text(pg_url.replace(f":{postgres.port}/", f":{closed}/"))
    setup = node_setup(tmp_path, extra=PG_CONTEXT)
    config = tmp_path / "node.toml"
    config.write_text(setup.toml)
    assert main(["audit", "--config", str(config), "shred", "--tenant", "acme"]) == 1
    err = capsys.readouterr().err
    assert "the context store's PostgreSQL database ([context.postgres]) cannot be reached" in err
    assert postgres.password not in err
    assert not (tmp_path / "audit.db").exists()  # the audit log was never opened
