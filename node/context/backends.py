"""The context store that ``[context]`` names, opened: SQLite in ``data_dir`` or PostgreSQL at its URL.

``backend = "sqlite"`` (the default) is ``<data_dir>/<path>`` (``context.db``),
one file per node. ``backend = "postgres"`` is the database of
``[context.postgres]``, else the fleet's ``[state]`` database, its URL read from
the variable or file the config names (``node.budgets.postgres_url``, never
logged). A server that cannot be reached or refuses the node is a
``ContextDatabaseError`` naming the section and the server's reason (the
password never in it): ``bastion serve`` exits 9, the offline CLI 1.

``stored_backends`` is every store that may hold this node's retrieval data,
for the offline ``bastion audit shred --tenant`` and ``rotate-kek``
(``node.context.operations``): the configured PostgreSQL database, and the
SQLite file too when it exists (a node moved to PostgreSQL may have left one).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import psycopg

from audit.kek import KeyEncryptionKey
from serving.errors import StartupFailure

from ..budgets import postgres_url
from ..config import ContextSection, NodeConfig, PostgresConfig, resolve
from .backend import ContextBackend
from .postgres import PostgresBackend
from .sqlite import SqliteBackend

__all__ = [
    "CONTEXT_DB",
    "ContextDatabaseError",
    "check_database",
    "open_backend",
    "open_postgres",
    "sqlite_path",
    "stored_backends",
]

#: the node's context database in ``data_dir`` when ``[context] path`` is left out
CONTEXT_DB = "context.db"


class ContextDatabaseError(StartupFailure):
    """The context store's PostgreSQL database cannot be reached or refuses the node."""


def sqlite_path(settings: ContextSection | None, data_dir: Path) -> Path:
    return data_dir / (settings.path if settings is not None and settings.path else CONTEXT_DB)


def _url(config: NodeConfig, config_dir: Path) -> tuple[str, PostgresConfig, str] | None:
    """The PostgreSQL URL of the context store, its settings and section; None for SQLite."""
    database = config.context.database(config.state) if config.context is not None else None
    if database is None:
        return None
    db, section = database
    return postgres_url(db, config_dir=config_dir, section=section), db, section


def _unreachable(section: str, url: str, exc: BaseException) -> ContextDatabaseError:
    reason = str(exc).strip() or type(exc).__name__
    password = urlsplit(url).password
    if password:
        reason = reason.replace(password, "***").replace(unquote(password), "***")
    return ContextDatabaseError(
        f"the context store's PostgreSQL database ({section}) cannot be reached: {reason}"
    )


def check_database(config: NodeConfig, config_dir: Path) -> None:
    """Connect once to the context store's PostgreSQL database (nothing for SQLite): before an
    offline operation changes anything. ``ConfigError`` or ``ContextDatabaseError``."""
    found = _url(config, config_dir)
    if found is None:
        return
    url, db, section = found
    try:
        with psycopg.connect(url, connect_timeout=max(1, round(db.timeout_s))):
            pass
    except psycopg.Error as exc:
        raise _unreachable(section, url, exc) from None


async def open_postgres(
    url: str, db: PostgresConfig, section: str, kek: KeyEncryptionKey, *, vector_cache_bytes: int
) -> PostgresBackend:
    """The backend on ``url``; one connection is tried first so that the error is the server's."""
    try:
        probe = await psycopg.AsyncConnection.connect(url, connect_timeout=max(1, round(db.timeout_s)))
        await probe.close()
        return await PostgresBackend.open(
            url, kek, vector_cache_bytes=vector_cache_bytes, max_connections=db.max_connections
        )
    except (psycopg.Error, TimeoutError) as exc:  # psycopg_pool's PoolTimeout is a psycopg.Error
        raise _unreachable(section, url, exc) from None


async def open_backend(
    config: NodeConfig, *, config_dir: Path, data_dir: Path, kek: KeyEncryptionKey
) -> ContextBackend:
    """The backend ``[context]`` names, open (the caller closes it)."""
    settings = config.context
    assert settings is not None
    found = _url(config, config_dir)
    if found is None:
        return await SqliteBackend.open(
            sqlite_path(settings, data_dir),
            kek,
            vector_cache_bytes=settings.vector_cache_bytes,
            fulltext_cache_bytes=settings.fulltext_cache_bytes,
        )
    return await open_postgres(*found, kek, vector_cache_bytes=settings.vector_cache_bytes)


@contextlib.asynccontextmanager
async def stored_backends(
    config: NodeConfig, config_dir: Path, kek: KeyEncryptionKey
) -> AsyncIterator[list[ContextBackend]]:
    """Every store holding this node's retrieval data, open while the context is (possibly none)."""
    db = sqlite_path(config.context, resolve(config_dir, config.data_dir))
    found = _url(config, config_dir)
    async with contextlib.AsyncExitStack() as stack:
        backends: list[ContextBackend] = []
        if db.exists():
            backends.append(await SqliteBackend.open(db, kek))
            stack.push_async_callback(backends[-1].aclose)
        if found is not None:
            backends.append(await open_postgres(*found, kek, vector_cache_bytes=0))
            stack.push_async_callback(backends[-1].aclose)
        yield backends
