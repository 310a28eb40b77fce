"""The storage interface of the context layer: files, vector stores, chunks and their two indexes.

A backend keeps every tenant's data apart by structure: each method takes the
tenant, an id the tenant does not own is ``NotFoundError`` (as one that never
existed), and a search reads the indexes of the stores it names, which hold
only their own chunks (the SQLite backend keeps one FTS5 and one vec0 table per
store). No method searches across tenants, so no caller can forget a filter.

The embedded default is ``node.context.sqlite.SqliteBackend`` (one SQLite file
per node). A PostgreSQL backend (``tsvector`` + ``pgvector``, one partition or
schema per tenant) is another module satisfying the same Protocol; the service
(``node.context.service``) needs nothing else. Rankings return candidates (lower
``raw`` is better); fusing them, filters, thresholds and packing are the
service's, so every backend ranks alike.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Protocol, runtime_checkable

from audit.kek import KeyEncryptionKey

from .records import (
    AttributeValue,
    Candidate,
    Chunk,
    ChunkIn,
    Erased,
    FileBatch,
    FileObject,
    StaticChunking,
    StoreFile,
    VectorStore,
)

__all__ = ["BatchRepository", "ChunkIndex", "ContextBackend", "FileRepository", "StoreRepository"]


@runtime_checkable
class FileRepository(Protocol):
    """Uploaded files: contents and names encrypted under a per-file data key."""

    async def put_file(self, tenant: str, *, filename: str, purpose: str, content: bytes) -> FileObject: ...

    async def get_file(self, tenant: str, file_id: str) -> FileObject: ...

    async def list_files(self, tenant: str, *, purpose: str | None = None) -> list[FileObject]:
        """Oldest first."""
        ...

    async def file_content(self, tenant: str, file_id: str) -> bytes: ...

    async def delete_file(self, tenant: str, file_id: str) -> Erased:
        """The file, its chunks in every store, their index entries and vectors, and its data key."""
        ...


@runtime_checkable
class StoreRepository(Protocol):
    """Vector stores and the files they hold."""

    async def create_store(
        self,
        tenant: str,
        *,
        name: str | None,
        metadata: Mapping[str, str],
        embedding_model: str,
        dimensions: int,
    ) -> VectorStore: ...

    async def get_store(self, tenant: str, store_id: str) -> VectorStore: ...

    async def list_stores(self, tenant: str) -> list[VectorStore]:
        """Oldest first."""
        ...

    async def delete_store(self, tenant: str, store_id: str) -> Erased:
        """The store, its chunks and both its indexes (its files stay: they are the tenant's)."""
        ...

    async def attach_file(
        self,
        tenant: str,
        store_id: str,
        file_id: str,
        *,
        attributes: Mapping[str, AttributeValue],
        chunking: StaticChunking,
    ) -> StoreFile:
        """Adds the file ``in_progress`` (again, if it was there: its old chunks are erased)."""
        ...

    async def store_file(self, tenant: str, store_id: str, file_id: str) -> StoreFile: ...

    async def list_store_files(self, tenant: str, store_id: str) -> list[StoreFile]: ...

    async def detach_file(self, tenant: str, store_id: str, file_id: str) -> Erased:
        """Removes the file from the store with its chunks, index entries and vectors."""
        ...


@runtime_checkable
class BatchRepository(Protocol):
    """File batches, kept with the store they belong to (erased with it, or with their tenant)."""

    async def create_batch(self, tenant: str, store_id: str, file_ids: Sequence[str]) -> FileBatch:
        """A batch of ``file_ids`` (attached to the store already; a repeated id counts once)."""
        ...

    async def get_batch(self, tenant: str, store_id: str, batch_id: str) -> FileBatch:
        """The batch with those of its files still in the store (one detached or deleted since
        leaves it); ``NotFoundError`` for a batch of another store or tenant."""
        ...


@runtime_checkable
class ChunkIndex(Protocol):
    """Chunks and their full-text and vector indexes."""

    async def write_chunks(
        self, tenant: str, store_id: str, file_id: str, chunks: Sequence[ChunkIn]
    ) -> StoreFile:
        """Stores the chunks and marks the file ``completed``, in one transaction."""
        ...

    async def fail_file(self, tenant: str, store_id: str, file_id: str, code: str, error: str) -> StoreFile:
        """Marks the file ``failed``: ``code`` is OpenAI's (``server_error``, ``unsupported_file``,
        ``invalid_file``), ``error`` the message."""
        ...

    async def fulltext(
        self, tenant: str, store_id: str, terms: Sequence[str], k: int, file_ids: Collection[str] | None
    ) -> list[Candidate]:
        """BM25 over the store's chunks holding any of ``terms``; ``file_ids`` limits the files."""
        ...

    async def nearest(
        self, tenant: str, store_id: str, vector: bytes, k: int, file_ids: Collection[str] | None
    ) -> list[Candidate]:
        """The ``k`` chunks nearest ``vector`` by cosine distance."""
        ...

    async def read_chunks(self, tenant: str, keys: Sequence[tuple[str, int]]) -> list[Chunk]:
        """The chunks of these ``(store_id, key)`` candidates, decrypted, in the order asked; a key
        whose chunk is gone (erased since it was ranked) is left out. A store not the tenant's is
        ``NotFoundError``."""
        ...


@runtime_checkable
class ContextBackend(FileRepository, StoreRepository, BatchRepository, ChunkIndex, Protocol):
    """Everything the context service needs from storage."""

    async def erase_tenant(self, tenant: str) -> Erased:
        """Every store, file, chunk, index entry, vector and data key of the tenant."""
        ...

    async def rewrap(self, new_kek: KeyEncryptionKey) -> int:
        """Every data key rewrapped under ``new_kek`` (with ``bastion audit rotate-kek``)."""
        ...

    async def aclose(self) -> None: ...
