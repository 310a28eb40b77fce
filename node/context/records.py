"""The context layer's records and settings: what the storage interface takes and returns.

These are internal records, not wire schemas: the HTTP layer turns them into
OpenAI's ``file``, ``vector_store``, ``vector_store.file`` and search-result
objects. Ids are opaque strings (``vs_...``, ``file-...``); a chunk's id is
``<file_id>#<index>`` so a ``file_citation`` can name the file and the chunk.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Annotated, Any

import msgspec

__all__ = [
    "AttributeValue",
    "Candidate",
    "Chunk",
    "ChunkIn",
    "ContextConfig",
    "Erased",
    "FileBatch",
    "FileObject",
    "FileStatus",
    "StaticChunking",
    "StoreFile",
    "VectorStore",
    "chunk_id",
    "store_file_of",
]

#: a file attribute's value (OpenAI: string, number or boolean)
AttributeValue = str | int | float | bool


def chunk_id(file_id: str, index: int) -> str:
    """A chunk's public id: its file and its position in that file's chunking."""
    return f"{file_id}#{index}"


class FileStatus(enum.StrEnum):
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"


class StaticChunking(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """OpenAI's ``static`` chunking strategy (``auto`` is this with its defaults), counted in the
    embedding model's tokens."""

    max_chunk_size_tokens: Annotated[int, msgspec.Meta(ge=100, le=4096)] = 800
    chunk_overlap_tokens: Annotated[int, msgspec.Meta(ge=0)] = 400

    def __post_init__(self) -> None:
        if self.chunk_overlap_tokens > self.max_chunk_size_tokens // 2:
            raise ValueError(
                f"chunk_overlap_tokens ({self.chunk_overlap_tokens}) must not exceed half of "
                f"max_chunk_size_tokens ({self.max_chunk_size_tokens})"
            )


class ContextConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The ``[context]`` settings: where the store lives, which model embeds, the limits."""

    #: the SQLite database, relative to ``data_dir`` (left out: ``context.db``); SQLite only
    path: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    #: the pinned ``task = "embed"`` model that embeds chunks and queries
    embedding_model: Annotated[str, msgspec.Meta(min_length=1)]
    max_file_bytes: Annotated[int, msgspec.Meta(ge=1, le=2**31)] = 64 * 2**20
    #: characters of text parsed from one file (a small PDF can expand a lot)
    max_text_chars: Annotated[int, msgspec.Meta(ge=1, le=2**31)] = 64 * 2**20
    max_chunks_per_file: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] = 100_000
    #: inputs per embedding request while ingesting
    embed_batch: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 64
    #: reciprocal rank fusion's k (Cormack et al. 2009): a larger k flattens the rank weights
    rrf_k: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 60
    #: memory for stores' vectors as in-memory matrices (0: every vector search scans vec0)
    vector_cache_bytes: Annotated[int, msgspec.Meta(ge=0, le=2**40)] = 256 * 2**20
    #: memory for phrases' BM25 score lists (0: FTS5 ranks every full-text search itself)
    fulltext_cache_bytes: Annotated[int, msgspec.Meta(ge=0, le=2**40)] = 64 * 2**20
    #: candidates taken from each ranking before fusion (at least ``max_num_results``)
    candidates: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 50
    #: a pinned ``task = "rerank"`` model (served by this node) that re-scores the best fused
    #: candidates against the query; none: results keep their fused order and scores
    reranker: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    #: fused candidates the reranker re-scores (at least ``max_num_results``): one engine pass each
    rerank_candidates: Annotated[int, msgspec.Meta(ge=1, le=200)] = 20


class FileObject(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    tenant: str
    filename: str
    bytes: int
    purpose: str
    created_at: int


class VectorStore(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    tenant: str
    name: str | None
    metadata: dict[str, str]
    created_at: int
    embedding_model: str
    dimensions: int
    #: files by status (``in_progress``, ``completed``, ``failed``)
    file_counts: dict[str, int]
    #: bytes of the chunk text this store indexes
    usage_bytes: int


class StoreFile(msgspec.Struct, frozen=True, kw_only=True):
    """A file's membership of a store (OpenAI's ``vector_store.file``)."""

    store_id: str
    file_id: str
    status: FileStatus
    attributes: dict[str, AttributeValue]
    chunking: StaticChunking
    created_at: int
    usage_bytes: int = 0
    chunks: int = 0
    last_error: str | None = None
    #: OpenAI's ``last_error.code``: ``server_error``, ``unsupported_file`` or ``invalid_file``
    last_error_code: str | None = None


class FileBatch(msgspec.Struct, frozen=True, kw_only=True):
    """A file batch (OpenAI's ``vector_store.files_batch``): the files it added that are still in
    its store, whose statuses make its counts."""

    id: str
    store_id: str
    created_at: int
    files: tuple[StoreFile, ...] = ()


class ChunkIn(msgspec.Struct, frozen=True, kw_only=True):
    """One chunk to store: its text (encrypted at rest), token span and vector."""

    index: int
    text: str
    start_token: int
    end_token: int
    #: little-endian float32, the store's ``dimensions`` long
    vector: bytes


class Candidate(msgspec.Struct, frozen=True, kw_only=True):
    """One ranking's hit: lower ``raw`` is better (BM25 as FTS5 gives it; cosine distance)."""

    store_id: str
    key: int
    raw: float


class Chunk(msgspec.Struct, frozen=True, kw_only=True):
    """A stored chunk, decrypted for the tenant that owns it."""

    store_id: str
    #: the backend's key for it (a ``Candidate``'s)
    key: int
    file_id: str
    filename: str
    index: int
    start_token: int
    end_token: int
    text: str
    attributes: dict[str, AttributeValue]

    @property
    def id(self) -> str:
        return chunk_id(self.file_id, self.index)


class Erased(msgspec.Struct, frozen=True, kw_only=True):
    """What an erasure removed (for the audit record: counts and ids, never text)."""

    stores: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    chunks: int = 0
    keys: int = 0


def store_file_of(row: Sequence[Any]) -> StoreFile:
    """A ``StoreFile`` from both backends' row of (store id, file id, status, attributes JSON,
    chunking JSON, created, usage bytes, chunks, last error, its code)."""
    store_id, file_id, status, attributes, chunking, created, usage, chunks, error, code = row
    return StoreFile(
        store_id=store_id,
        file_id=file_id,
        status=FileStatus(status),
        attributes=msgspec.json.decode(attributes, type=dict[str, AttributeValue]),
        chunking=msgspec.json.decode(chunking, type=StaticChunking),
        created_at=created,
        usage_bytes=usage,
        chunks=chunks,
        last_error=error,
        last_error_code=code,
    )
