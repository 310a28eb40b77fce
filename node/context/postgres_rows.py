"""Rows of the PostgreSQL backend's tables as the context layer's records."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from .records import FileStatus, VectorStore

__all__ = ["STORE_COLS", "vector_store_of"]

STORE_COLS = "pk, id, tenant, name, metadata, created_at, embedding_model, dimensions, version"


def vector_store_of(row: Sequence[Any], counts: Sequence[Sequence[Any]]) -> VectorStore:
    """A ``STORE_COLS`` row and its ``(status, files, usage bytes)`` counts."""
    _, sid, tenant, name, metadata, created, model, dims, _ = row
    by_status = {s.value: 0 for s in FileStatus}
    usage = 0
    for status, n, used in counts:
        by_status[status] = int(n)
        usage += int(used or 0)
    return VectorStore(
        id=sid,
        tenant=tenant,
        name=name,
        metadata=msgspec.json.decode(metadata, type=dict[str, str]),
        created_at=created,
        embedding_model=model,
        dimensions=dims,
        file_counts=by_status,
        usage_bytes=usage,
    )
