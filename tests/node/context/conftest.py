"""Fixtures for the context layer: a real SQLite database in tmp_path under a fresh KEK, and the
service on the session's real tiny embedding engine."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
import pytest_asyncio

from audit.kek import LocalKek
from node.context import ContextConfig, ContextService, FileTokenizer, SqliteBackend
from serving.embedding import LocalEmbedder
from tests.conftest import TINY_EMBED_NAME


@pytest.fixture
def kek() -> LocalKek:
    return LocalKek(os.urandom(32))


@pytest_asyncio.fixture(loop_scope="session")
async def backend(tmp_path: Path, kek: LocalKek) -> AsyncIterator[SqliteBackend]:
    store = await SqliteBackend.open(tmp_path / "data" / "context.db", kek)
    try:
        yield store
    finally:
        await store.aclose()


def context_config(**over: object) -> ContextConfig:
    return msgspec.convert({"embedding_model": TINY_EMBED_NAME, **over}, ContextConfig)


@pytest_asyncio.fixture(loop_scope="session")
async def service(backend: SqliteBackend, embed_engine: LocalEmbedder) -> ContextService:
    return ContextService(
        backend,
        embed_engine,
        FileTokenizer.of_model(embed_engine.model_dir),
        context_config(),
        embed_max_tokens=embed_engine.max_model_len,
    )


def db_bytes(path: Path) -> bytes:
    """Everything SQLite keeps on disk for the database: the file and its WAL."""
    wal = path.with_name(path.name + "-wal")
    return path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


def pdf_bytes(*lines: str) -> bytes:
    """A one-page PDF whose text layer holds ``lines`` (Helvetica), with a correct xref table."""
    ops = "BT /F1 12 Tf 72 720 Td 14 TL " + " ".join(f"({line}) Tj T*" for line in lines) + " ET"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(ops), ops.encode("latin-1")),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (i, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)
