"""The wire schema of ``/v1/files`` and ``/v1/vector_stores`` (OpenAI's), over ``node.context`` records.

Requests are decoded strictly (an unknown field is a 400 naming it); answers are
the objects the official client parses: ``file``, ``vector_store``,
``vector_store.file``, ``vector_store.files_batch``, the search results page and
cursor-paged lists (``limit``, ``after``, ``before``, ``order``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, TypeVar

import msgspec

from serving.errors import BadRequestError

from .context import AttributeValue, FileBatch, FileObject, Hit, StaticChunking, StoreFile, VectorStore

__all__ = [
    "AddFile",
    "CreateBatch",
    "CreateStore",
    "SearchRequest",
    "UpdateStore",
    "batch_object",
    "chunking_of",
    "file_object",
    "page",
    "search_page",
    "store_file_object",
    "store_object",
]

_T = TypeVar("_T")
_Attributes = dict[str, AttributeValue]
_Metadata = dict[str, Annotated[str, msgspec.Meta(max_length=512)]]
_FileIds = Annotated[list[str], msgspec.Meta(max_length=500)]


class CreateStore(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str | None = None
    file_ids: _FileIds | None = None
    chunking_strategy: dict[str, Any] | None = None
    metadata: _Metadata | None = None
    description: str | None = None
    #: stores here do not expire: only absent or null
    expires_after: None = None


class UpdateStore(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str | None = None
    metadata: _Metadata | None = None
    expires_after: None = None


class AddFile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    file_id: str
    attributes: _Attributes | None = None
    chunking_strategy: dict[str, Any] | None = None


class BatchFile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    file_id: str
    attributes: _Attributes | None = None
    chunking_strategy: dict[str, Any] | None = None


class CreateBatch(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    file_ids: _FileIds | None = None
    files: Annotated[list[BatchFile], msgspec.Meta(max_length=500)] | None = None
    attributes: _Attributes | None = None
    chunking_strategy: dict[str, Any] | None = None

    def entries(self) -> list[AddFile]:
        if (self.file_ids is None) == (self.files is None):
            raise BadRequestError("give exactly one of `file_ids` and `files`.", param="file_ids")
        if self.files is not None:
            return [
                AddFile(file_id=f.file_id, attributes=f.attributes, chunking_strategy=f.chunking_strategy)
                for f in self.files
            ]
        return [
            AddFile(file_id=i, attributes=self.attributes, chunking_strategy=self.chunking_strategy)
            for i in self.file_ids or ()
        ]


class _Ranking(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    #: ``auto``, ``none`` or the reranker's name (``ContextService.ranker`` refuses anything else)
    ranker: Annotated[str, msgspec.Meta(max_length=128)] | None = None
    score_threshold: float = 0.0


class SearchRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    query: str | Annotated[list[str], msgspec.Meta(min_length=1, max_length=8)]
    max_num_results: int = 10
    filters: dict[str, Any] | None = None
    ranking_options: _Ranking | None = None
    rewrite_query: bool = False

    def __post_init__(self) -> None:
        if self.rewrite_query:
            raise ValueError(
                "`rewrite_query` is not supported: this node searches the query as given - at "
                "`$.rewrite_query`"
            )

    def text(self) -> str:
        return self.query if isinstance(self.query, str) else "\n".join(self.query)


def chunking_of(strategy: Mapping[str, Any] | None, default: StaticChunking) -> StaticChunking:
    """A ``chunking_strategy`` (``auto``: the node's default; ``static`` with its sizes)."""
    param = "chunking_strategy"
    if strategy is None or (strategy.get("type") == "auto" and set(strategy) == {"type"}):
        return default
    if strategy.get("type") != "static" or set(strategy) != {"type", "static"}:
        raise BadRequestError(
            '`chunking_strategy` is {"type": "auto"} or {"type": "static", "static": {...}}.', param=param
        )
    try:
        return msgspec.convert(strategy["static"], StaticChunking)
    except (msgspec.ValidationError, ValueError) as exc:
        raise BadRequestError(f"`chunking_strategy.static`: {exc}", param=param + ".static") from None


# -- objects ------------------------------------------------------------------------------------------


def file_object(f: FileObject) -> dict[str, Any]:
    return {
        "id": f.id,
        "object": "file",
        "bytes": f.bytes,
        "created_at": f.created_at,
        "filename": f.filename,
        "purpose": f.purpose,
        "status": "processed",
        "expires_at": None,
        "status_details": None,
    }


def _counts(counts: Mapping[str, int]) -> dict[str, int]:
    out = {k: int(counts.get(k, 0)) for k in ("in_progress", "completed", "failed", "cancelled")}
    return out | {"total": sum(out.values())}


def store_object(vs: VectorStore) -> dict[str, Any]:
    counts = _counts(vs.file_counts)
    return {
        "id": vs.id,
        "object": "vector_store",
        "created_at": vs.created_at,
        "name": vs.name or "",
        "metadata": vs.metadata,
        "file_counts": counts,
        "status": "in_progress" if counts["in_progress"] else "completed",
        "usage_bytes": vs.usage_bytes,
        "last_active_at": vs.created_at,
        "expires_after": None,
        "expires_at": None,
    }


def _chunking_object(c: StaticChunking) -> dict[str, Any]:
    return {"type": "static", "static": msgspec.to_builtins(c)}


def store_file_object(sf: StoreFile) -> dict[str, Any]:
    error = None
    if sf.last_error is not None:
        error = {"code": sf.last_error_code or "server_error", "message": sf.last_error}
    return {
        "id": sf.file_id,
        "object": "vector_store.file",
        "created_at": sf.created_at,
        "vector_store_id": sf.store_id,
        "status": sf.status.value,
        "usage_bytes": sf.usage_bytes,
        "last_error": error,
        "attributes": sf.attributes,
        "chunking_strategy": _chunking_object(sf.chunking),
    }


def batch_object(batch: FileBatch) -> dict[str, Any]:
    """The batch, its counts from its files' statuses in the store."""
    counts = _counts(
        {
            s: sum(1 for f in batch.files if f.status.value == s)
            for s in ("in_progress", "completed", "failed")
        }
    )
    return {
        "id": batch.id,
        "object": "vector_store.files_batch",
        "created_at": batch.created_at,
        "vector_store_id": batch.store_id,
        "status": "in_progress" if counts["in_progress"] else "completed",
        "file_counts": counts,
    }


def search_page(query: str, hits: Sequence[Hit]) -> dict[str, Any]:
    return {
        "object": "vector_store.search_results.page",
        "search_query": [query],
        "data": [
            {
                "file_id": h.chunk.file_id,
                "filename": h.chunk.filename,
                "score": h.score,
                "attributes": h.chunk.attributes,
                "content": [{"type": "text", "text": h.chunk.text}],
            }
            for h in hits
        ],
        "has_more": False,
        "next_page": None,
    }


def page(
    items: Sequence[_T],
    id_of: Callable[[_T], str],
    render: Callable[[_T], dict[str, Any]],
    query: Mapping[str, str],
) -> dict[str, Any]:
    """A cursor page of ``items`` (oldest first) as ``limit``/``after``/``before``/``order`` ask."""
    try:
        limit = int(query.get("limit", "20"))
    except ValueError:
        raise BadRequestError("`limit` must be an integer.", param="limit") from None
    if not 1 <= limit <= 10_000:
        raise BadRequestError("`limit` must be between 1 and 10000.", param="limit")
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise BadRequestError("`order` must be asc or desc.", param="order")
    ordered = list(items) if order == "asc" else list(reversed(items))
    ids = [id_of(i) for i in ordered]
    if after := query.get("after"):
        ordered = ordered[ids.index(after) + 1 :] if after in ids else []
    elif before := query.get("before"):
        ordered = ordered[: ids.index(before)] if before in ids else []
    chosen = ordered[:limit]
    data = [render(i) for i in chosen]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(ordered) > limit,
    }
