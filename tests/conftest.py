"""Fixtures shared by the whole suite: the tiny model and one real engine on it.

The engine takes 15-25 s to start on two CPU cores, so one instance serves the
whole session; tests that break an engine on purpose start their own.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import msgspec
import pytest
import pytest_asyncio

from serving.embedding import LocalEmbedder
from serving.engine import LocalEngine
from serving.model_commands import ensure_model
from serving.models import ModelSpec, load_models_file
from serving.rerank import LocalReranker
from tests.postgres import PostgresServer, postgres_available

ROOT = Path(__file__).resolve().parent.parent
TINY_NAME = "bastion-tiny"
TINY_EMBED_NAME = "bastion-tiny-embed"
TINY_RERANK_NAME = "bastion-tiny-rerank"


@pytest.fixture(scope="session")
def models_file() -> Path:
    """The committed ``models.toml``."""
    return ROOT / "models.toml"


@pytest.fixture(scope="session")
def tiny_spec(models_file: Path) -> ModelSpec:
    return load_models_file(models_file).get(TINY_NAME)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder for the session; ``<data_dir>/models/bastion-tiny`` holds the tiny model."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_spec: ModelSpec, models_file: Path, data_dir: Path) -> Path:
    """The tiny model, built once per session (about 2 s) and verified against the committed pins."""
    return ensure_model(tiny_spec, models_file, data_dir)


@pytest.fixture(scope="session")
def eager_tiny_spec(tiny_spec: ModelSpec) -> ModelSpec:
    """The tiny model's spec with ``enforce_eager = true``: same pins, engine start ~2x
    faster (no torch.compile), which is what a test suite on two cores wants."""
    return msgspec.convert({**msgspec.to_builtins(tiny_spec), "enforce_eager": True}, ModelSpec)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def local_engine(eager_tiny_spec: ModelSpec, tiny_model_dir: Path) -> AsyncIterator[LocalEngine]:
    """One started engine on the tiny model for the whole session. Do not break it:
    start your own ``LocalEngine`` for fault drills."""
    async with LocalEngine(eager_tiny_spec, tiny_model_dir) as engine:
        yield engine


@pytest.fixture(scope="session")
def tiny_embed_spec(models_file: Path) -> ModelSpec:
    return load_models_file(models_file).get(TINY_EMBED_NAME)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def embed_engine(
    tiny_embed_spec: ModelSpec, models_file: Path, data_dir: Path
) -> AsyncIterator[LocalEmbedder]:
    """One started engine on the tiny embedding model for the whole session (pooling runner)."""
    model_dir = ensure_model(tiny_embed_spec, models_file, data_dir)
    async with LocalEmbedder(tiny_embed_spec, model_dir) as engine:
        yield engine


@pytest.fixture(scope="session")
def tiny_rerank_spec(models_file: Path) -> ModelSpec:
    return load_models_file(models_file).get(TINY_RERANK_NAME)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def rerank_engine(
    tiny_rerank_spec: ModelSpec, models_file: Path, data_dir: Path
) -> AsyncIterator[LocalReranker]:
    """One started engine on the tiny reranker for the whole session (pooling runner, ``classify``)."""
    model_dir = ensure_model(tiny_rerank_spec, models_file, data_dir)
    async with LocalReranker(tiny_rerank_spec, model_dir) as engine:
        yield engine


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session (a test that stops it starts it again)."""
    if not postgres_available():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL 15 is not installed (/usr/lib/postgresql/15/bin); CI needs it")
        pytest.skip("PostgreSQL 15 is not installed here")
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def pg_url(postgres: PostgresServer) -> str:
    """A fresh, empty database on the session's server; its URL holds the password."""
    import psycopg

    name = "t_" + secrets.token_hex(6)
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return postgres.url.rsplit("/", 1)[0] + "/" + name
