"""The node's context store as the HTTP layer uses it: the service, ingestion in the background, audit.

``open_context`` is ``build_node``'s part: with ``[context]`` it opens the
store (``<data_dir>/context.db``, data keys under the audit log's KEK) on the
embedding model that section names, and closes it (ingestion tasks first) when
the node stops. ``ContextApi`` is what the controllers (``node.context_http``)
and ``file_search`` (``node.file_search``) hold:

- ingestion runs as a task per file: a file is ``in_progress`` until it is
  ``completed`` or ``failed``, and clients poll (``create_and_poll``);
- file batches are the files they were created with, kept in memory: a batch
  id does not outlive the node (its files' statuses do);
- every upload, deletion and search is an audit event (``context.*``): who, which
  store, which files, which chunks and their scores; a query's text only in the
  event's encrypted ``content``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audit import AuditEvent, AuditLog
from audit.log import load_kek
from serving.embedding import Embedder
from serving.errors import BastionError
from serving.models import ModelsFile

from .config import ContextSection, NodeConfig
from .context import ContextService, FileTokenizer, NotFoundError, SqliteBackend, TextTokenizer
from .errors import to_bastion_error
from .startup import ExitCode, StartupError
from .tenancy import Principal

__all__ = ["Batch", "ContextApi", "open_context"]

_log = logging.getLogger("bastion.context")


@dataclass(frozen=True)
class Batch:
    id: str
    tenant: str
    store_id: str
    file_ids: tuple[str, ...]
    created_at: int


@dataclass
class ContextApi:
    service: ContextService
    settings: ContextSection
    audit: AuditLog | None
    #: tokenizers of the local chat models, by name (``file_search`` packs with the answering model's)
    tokenizers: Mapping[str, TextTokenizer] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _batches: dict[str, Batch] = field(default_factory=dict)

    # -- ingestion ----------------------------------------------------------------------------------

    def ingest_later(self, tenant: str, store_id: str, file_ids: tuple[str, ...]) -> None:
        """Ingest attached files one after another in a task (each ends ``completed`` or ``failed``)."""

        async def run() -> None:
            for file_id in file_ids:
                try:
                    await self.service.ingest(tenant, store_id, file_id)
                except NotFoundError:
                    continue  # detached or deleted meanwhile
                except Exception:  # the file is marked failed (server_error) by the service
                    _log.exception("ingesting %s into %s failed", file_id, store_id)

        task = asyncio.create_task(run(), name=f"context-ingest-{store_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def idle(self) -> None:
        """Wait for every ingestion task (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- batches ------------------------------------------------------------------------------------

    def new_batch(self, tenant: str, store_id: str, file_ids: tuple[str, ...]) -> Batch:
        batch = Batch(
            id="vsfb_" + uuid.uuid4().hex,
            tenant=tenant,
            store_id=store_id,
            file_ids=file_ids,
            created_at=int(time.time()),
        )
        self._batches[batch.id] = batch
        return batch

    def batch(self, tenant: str, store_id: str, batch_id: str) -> Batch:
        batch = self._batches.get(batch_id)
        if batch is None or batch.tenant != tenant or batch.store_id != store_id:
            raise NotFoundError(f"No file batch found with id '{batch_id}'.", param="batch_id")
        return batch

    # -- audit --------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def audited(
        self, principal: Principal, request_id: str, operation: str, **meta: Any
    ) -> AsyncIterator[dict[str, Any]]:
        """Around one operation: yields the event's meta to fill in (``content`` for what is
        encrypted as text); appends ``context.<operation>`` when it succeeds, ``context.rejected``
        (with the error's code) when it raises."""
        record: dict[str, Any] = {
            "request_id": request_id,
            "key_id": principal.key_id,
            "operation": operation,
            **meta,
        }
        try:
            yield record
        except BaseException as exc:
            err: BastionError | None = to_bastion_error(exc) if isinstance(exc, Exception) else None
            record.pop("content", None)
            record |= {
                "status": err.code if err else "cancelled",
                "http_status": err.status_code if err else 499,
            }
            await self._append("context.rejected", principal, record, None)
            raise
        content = record.pop("content", None)
        await self._append(f"context.{operation}", principal, record | {"status": "ok"}, content)

    async def _append(
        self, kind: str, principal: Principal, meta: dict[str, Any], content: dict[str, Any] | None
    ) -> None:
        if self.audit is not None:
            event = AuditEvent(type=kind, tenant=principal.tenant.name, meta=meta, content=content)
            await self.audit.append(event)


@contextlib.asynccontextmanager
async def open_context(
    config: NodeConfig,
    *,
    data_dir: Path,
    models: ModelsFile,
    engines: Mapping[str, Any],
    embedders: Mapping[str, Embedder],
    audit: AuditLog | None,
) -> AsyncIterator[ContextApi | None]:
    """The context store that ``[context]`` configures (None without one)."""
    settings = config.context
    if settings is None or not settings.enabled:
        yield None
        return
    if config.audit is None:  # NodeConfig refuses it; kept for the type checker
        raise StartupError(ExitCode.CONFIG, "[context] needs [audit] enabled (its KEK wraps the data keys)")
    embedder = embedders.get(settings.embedding_model)
    if embedder is None:
        raise StartupError(
            ExitCode.CONFIG,
            f"[context] embedding_model '{settings.embedding_model}' is not an embedding model this node "
            'serves (a models.toml model with task = "embed", in `serve`)',
        )
    backend = await SqliteBackend.open(
        data_dir / settings.path,
        load_kek(config.audit),
        vector_cache_bytes=settings.vector_cache_bytes,
        fulltext_cache_bytes=settings.fulltext_cache_bytes,
    )
    try:
        service = ContextService(
            backend,
            embedder,
            _tokenizer(embedder),
            settings,
            embed_max_tokens=models.get(settings.embedding_model).max_model_len,
        )
        tokenizers = {
            name: _tokenizer(engine)
            for name, engine in engines.items()
            if name not in embedders and getattr(engine, "model_dir", None) is not None
        }
        api = ContextApi(service=service, settings=settings, audit=audit, tokenizers=tokenizers)
        try:
            yield api
        finally:
            await api.aclose()
    finally:
        await backend.aclose()


def _tokenizer(engine: Any) -> FileTokenizer:
    """A local engine's tokenizer (its model folder's ``tokenizer.json``)."""
    return FileTokenizer.of_model(engine.model_dir)
