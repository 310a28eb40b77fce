"""``[context] backend``: SQLite by default, PostgreSQL on ``[context.postgres]`` or the fleet's ``[state]``
database; what belongs to the other backend, or a PostgreSQL store with no database, is refused naming the
field (``bastion config check`` exit 2), and a server that cannot be reached stops start-up clearly."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from audit.kek import LocalKek
from node.cli import main
from node.config import ConfigError, NodeConfig, decode_config
from node.context.backends import ContextDatabaseError, open_backend, sqlite_path
from node.context.postgres import PostgresBackend
from node.startup import ExitCode
from tests.conftest import TINY_EMBED_NAME
from tests.harness import node_setup
from tests.postgres import PostgresServer

AUDITED = """
[audit]
path = "audit.db"
kek_file = "kek.key"
signing_key_file = "signing.key"
checkpoint_path = "checkpoints"
"""
CONTEXT = f'[context]\nembedding_model = "{TINY_EMBED_NAME}"\n'
PG = CONTEXT + 'backend = "postgres"\n'


def _decode(text: str) -> NodeConfig:
    return decode_config(AUDITED + text)


def test_sqlite_is_the_default_and_keeps_its_path() -> None:
    config = _decode(CONTEXT)
    assert config.context is not None and config.context.backend == "sqlite"
    assert config.context.database(config.state) is None
    assert sqlite_path(config.context, Path("/d")) == Path("/d/context.db")
    moved = _decode(CONTEXT + 'path = "retrieval/ctx.db"\n')
    assert sqlite_path(moved.context, Path("/d")) == Path("/d/retrieval/ctx.db")


def test_postgres_uses_the_fleets_state_database_by_default() -> None:
    config = _decode('[state]\npostgres_url_env = "FLEET_PG"\n' + CONTEXT + 'backend = "postgres"\n')
    assert config.context is not None
    assert config.context.database(config.state) == (config.state, "[state]")


def test_postgres_with_its_own_database() -> None:
    config = _decode(
        CONTEXT
        + 'backend = "postgres"\n[context.postgres]\npostgres_url_file = "ctx-pg-url"\nmax_connections = 4\n'
    )
    assert config.context is not None and config.context.postgres is not None
    db, section = config.context.database(config.state) or (None, "")
    assert section == "[context.postgres]" and db is config.context.postgres
    assert db.postgres_url_file == "ctx-pg-url" and db.max_connections == 4
    assert not config.state.shared  # [state] is untouched: limits stay on the node


@pytest.mark.parametrize(
    ("text", "names"),
    [
        # a PostgreSQL store and no database anywhere
        (CONTEXT + 'backend = "postgres"\n', ['backend = "postgres" needs a database', "[context.postgres]"]),
        # what only the other backend reads
        (CONTEXT + "[context.postgres]\npostgres_url_env = \"X\"\n", ["`postgres` is for backend"]),
        (CONTEXT + 'backend = "postgres"\npath = "ctx.db"\n[context.postgres]\npostgres_url_env = "PG"\n',
         ["`path` names the SQLite file", "$.context"]),
        (PG + "fulltext_cache_bytes = 1024\n[context.postgres]\npostgres_url_env = \"X\"\n",
         ["`fulltext_cache_bytes` caches SQLite"]),
        # a reranker's setting with no reranker
        (CONTEXT + "rerank_candidates = 5\n", ["`rerank_candidates`", "no reranker is set"]),
        # [context.postgres] with no URL in it
        (CONTEXT + 'backend = "postgres"\n[context.postgres]\nmax_connections = 3\n',
         ["[context.postgres] names no database"]),
        # the same rules as [state]: one source, never a password in the file
        (PG + '[context.postgres]\npostgres_url_env = "A"\npostgres_url_file = "f"\n',
         ["set one of postgres_url, postgres_url_env, postgres_url_file", "$.context.postgres"]),
        (CONTEXT + 'backend = "postgres"\n[context.postgres]\npostgres_url = "postgresql://u:hunter2@db/x"\n',
         ["holds a password", "postgres_url_env", "$.context.postgres"]),
        (CONTEXT + 'backend = "mysql"\n', ["$.context.backend"]),
    ],
)  # fmt: skip
def test_a_backend_config_that_cannot_work_is_refused_naming_the_field(text: str, names: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        _decode(text)
    for name in names:
        assert name in str(err.value)
    assert "hunter2" not in str(err.value)


def _closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _config_file(tmp_path: Path, base: str, extra: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(base + extra)
    return path


def test_config_check_exits_2_naming_the_missing_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    base = node_setup(tmp_path).toml
    path = _config_file(tmp_path, base, PG)
    assert main(["config", "check", "--config", str(path)]) == ExitCode.CONFIG
    assert "config: " in (out := capsys.readouterr().out) and 'backend = "postgres" needs a database' in out

    monkeypatch.delenv("BASTION_TEST_CTX_PG", raising=False)
    path = _config_file(tmp_path, base, PG + '[context.postgres]\npostgres_url_env = "BASTION_TEST_CTX_PG"\n')
    assert main(["config", "check", "--config", str(path)]) == ExitCode.CONFIG
    out = capsys.readouterr().out
    assert out.splitlines()[0] == (
        "config: [context.postgres] postgres_url_env: environment variable BASTION_TEST_CTX_PG is empty"
    )


async def test_an_unreachable_or_refusing_server_is_a_clear_error(
    tmp_path: Path, postgres: PostgresServer, pg_url: str
) -> None:
    kek = LocalKek(os.urandom(32))
    url_file = tmp_path / "ctx-pg-url"
    text = (
        CONTEXT
        + 'backend = "postgres"\n[context.postgres]\npostgres_url_file = "ctx-pg-url"\ntimeout_s = 1\n'
    )
    config = node_setup(tmp_path, extra=text).config

    url_file.write_text(pg_url.replace(postgres.password, "not-the-password"))
    with pytest.raises(ContextDatabaseError) as err:
        await open_backend(config, config_dir=tmp_path, data_dir=tmp_path / "data", kek=kek)
    assert "[context.postgres]" in err.value.message and "password authentication failed" in err.value.message
    assert "not-the-password" not in err.value.message

    closed = pg_url.replace(f":{postgres.port}/", f":{_closed_port()}/")
    url_file.write_text(closed)
    with pytest.raises(ContextDatabaseError) as err:
        await open_backend(config, config_dir=tmp_path, data_dir=tmp_path / "data", kek=kek)
    assert "cannot be reached" in err.value.message and postgres.password not in err.value.message

    url_file.write_text(pg_url)  # the right URL opens the PostgreSQL backend, nothing in data_dir
    backend = await open_backend(config, config_dir=tmp_path, data_dir=tmp_path / "data", kek=kek)
    try:
        assert isinstance(backend, PostgresBackend)
        assert await backend.list_stores("acme") == []
    finally:
        await backend.aclose()
    assert not (tmp_path / "data" / "context.db").exists()
