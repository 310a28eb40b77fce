"""Context and retrieval: files, vector stores and hybrid search that never leave the node.

Layer: part of ``node`` (may import ``serving`` for the embedding engine and
``audit`` for its crypto and key-encryption key). Below HTTP: the OpenAI
``/v1/files``, ``/v1/vector_stores`` and Responses ``file_search`` endpoints are
built on ``ContextService`` and the ``ContextBackend`` it holds.

Modules: ``records`` (what the interface takes and returns), ``backend`` (the
storage Protocol), ``sqlite``/``sqlite_schema`` (the embedded backend: SQLite,
sqlite-vec, FTS5), ``postgres``/``postgres_schema`` (the fleet's: PostgreSQL),
``backends`` (the one ``[context] backend`` names, opened), ``sealing``
(per-file data keys under the audit KEK),
``parse`` (text, Markdown, HTML, PDF), ``chunking`` (OpenAI static chunks),
``filters`` (attribute filters), ``fusion`` (RRF, de-duplication, token
budget), ``service`` (ingestion and search), ``evaluation`` and ``cli``
(``bastion context eval``).
"""

from serving.errors import FileParseError, FileTooLargeError, NotFoundError, UnsupportedFileError

from .backend import BatchRepository, ChunkIndex, ContextBackend, FileRepository, StoreRepository
from .chunking import FileTokenizer, TextTokenizer, static_chunks
from .filters import Comparison, Compound, Filter, parse_filter
from .fusion import Hit, Packed, SearchMode, dedupe, pack, reciprocal_rank_fusion
from .parse import SUPPORTED_EXTENSIONS, parse_file
from .records import (
    AttributeValue,
    Candidate,
    Chunk,
    ChunkIn,
    ContextConfig,
    Erased,
    FileBatch,
    FileObject,
    FileStatus,
    StaticChunking,
    StoreFile,
    VectorStore,
    chunk_id,
)
from .service import ContextService, query_terms
from .sqlite import SqliteBackend

__all__ = [
    "SUPPORTED_EXTENSIONS",
    "AttributeValue",
    "BatchRepository",
    "Candidate",
    "Chunk",
    "ChunkIn",
    "ChunkIndex",
    "Comparison",
    "Compound",
    "ContextBackend",
    "ContextConfig",
    "ContextService",
    "Erased",
    "FileBatch",
    "FileObject",
    "FileParseError",
    "FileRepository",
    "FileStatus",
    "FileTokenizer",
    "FileTooLargeError",
    "Filter",
    "Hit",
    "NotFoundError",
    "Packed",
    "SearchMode",
    "SqliteBackend",
    "StaticChunking",
    "StoreFile",
    "StoreRepository",
    "TextTokenizer",
    "UnsupportedFileError",
    "VectorStore",
    "chunk_id",
    "dedupe",
    "pack",
    "parse_file",
    "parse_filter",
    "query_terms",
    "reciprocal_rank_fusion",
    "static_chunks",
]
