"""The node's context store as the HTTP layer uses it: the service, ingestion in the background, audit.

``open_context`` is ``build_node``'s part: with ``[context]`` it opens the
store (``backend``: ``<data_dir>/context.db`` or PostgreSQL, ``node.context.backends``;
data keys under the audit log's KEK) on the
embedding model that section names, and closes it (ingestion tasks first) when
the node stops. ``ContextApi`` is what the controllers (``node.context_http``)
and ``file_search`` (``node.file_search``) hold:

- ingestion runs as a task per file: a file is ``in_progress`` until it is
  ``completed`` or ``failed``, and clients poll (``create_and_poll``);
- file batches are kept by the backend with their store (``create_batch``,
  ``get_batch``): a batch id outlives the node, and its counts are its files'
  statuses in the store;
- every call is a request against the tenant's ``rpm`` and is refused (429,
  ``Retry-After``) while the tenant is over ``rpm``, ``tpm`` or
  ``tokens_per_day`` (``admit``: the counters ``/v1/embeddings`` and chat draw
  on); the embedding tokens a search query or an ingestion spends are charged to
  the same counters as they are spent (``Meter``), an ingestion's in the
  background: like a chat stream, the ingestion that crosses a token limit
  completes, and the tenant's next call is refused;
- every upload, deletion and search is an audit event (``context.*``): who, which
  store, which files, which chunks and their scores; a query's text only in the
  event's encrypted ``content``. A call refused (by a limit or otherwise) is
  ``context.rejected`` with the error's code and HTTP status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audit import AuditEvent, AuditLog
from audit.log import load_kek
from router.limits import LimitState
from serving.embedding import Embedder
from serving.errors import BastionError
from serving.models import ModelsFile
from serving.rerank import Reranker

from .config import ConfigError, ContextSection, NodeConfig
from .context import ContextService, FileTokenizer, Hit, NotFoundError, TextTokenizer
from .context.backends import ContextDatabaseError, open_backend
from .errors import to_bastion_error
from .startup import ExitCode, StartupError
from .tenancy import Principal

__all__ = ["ContextApi", "Meter", "open_context", "search_record"]

_log = logging.getLogger("bastion.context")


@dataclass
class Meter:
    """A ``Charge`` for one tenant: each embedding's tokens go to its limits as they are spent
    (``LimitState.record``, as ``/v1/embeddings`` charges), and add up in ``tokens`` for the
    audit record."""

    limits: LimitState
    tenant: str
    tokens: int = 0

    def __call__(self, tokens: int) -> None:
        self.tokens += tokens
        self.limits.record(self.tenant, tokens=tokens)


@dataclass
class ContextApi:
    service: ContextService
    settings: ContextSection
    audit: AuditLog | None
    #: tokenizers of the local chat models, by name (``file_search`` packs with the answering model's)
    tokenizers: Mapping[str, TextTokenizer] = field(default_factory=dict)
    #: the local chat models' context windows (``max_model_len``), by name: retrieved text must fit
    windows: Mapping[str, int] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    # -- limits -------------------------------------------------------------------------------------

    async def admit(
        self, limits: LimitState, principal: Principal, request_id: str, operation: str, path: str
    ) -> None:
        """Count the call against the tenant's ``rpm``, or refuse it (429 with ``Retry-After``; 503
        when a fleet's counters cannot answer) as ``context.rejected``."""
        try:
            await limits.admit(principal.tenant.name, principal.tenant)
        except Exception as exc:
            meta = {"request_id": request_id, "key_id": principal.key_id, "operation": operation}
            await self._rejected(principal, meta | {"path": path}, exc)
            raise

    # -- ingestion ----------------------------------------------------------------------------------

    def ingest_later(self, meter: Meter, store_id: str, file_ids: tuple[str, ...]) -> None:
        """Ingest attached files one after another in a task (each ends ``completed`` or ``failed``),
        charging ``meter``'s tenant for the embeddings."""
        tenant = meter.tenant

        async def run() -> None:
            for file_id in file_ids:
                try:
                    await self.service.ingest(tenant, store_id, file_id, charge=meter)
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
            record.pop("content", None)
            await self._rejected(principal, record, exc)
            raise
        content = record.pop("content", None)
        await self._append(f"context.{operation}", principal, record | {"status": "ok"}, content)

    async def _rejected(self, principal: Principal, meta: dict[str, Any], exc: BaseException) -> None:
        err: BastionError | None = to_bastion_error(exc) if isinstance(exc, Exception) else None
        meta |= {"status": err.code if err else "cancelled", "http_status": err.status_code if err else 499}
        if err is not None and err.reason:
            meta["route_error"] = err.reason
        await self._append("context.rejected", principal, meta, None)

    async def _append(
        self, kind: str, principal: Principal, meta: dict[str, Any], content: dict[str, Any] | None
    ) -> None:
        if self.audit is not None:
            event = AuditEvent(type=kind, tenant=principal.tenant.name, meta=meta, content=content)
            await self.audit.append(event)


def search_record(hits: Sequence[Hit]) -> dict[str, Any]:
    """A search's audit meta: the chunk ids and their scores (the reported ones); where a reranker
    re-scored them, its scores are ``scores`` and the fused ones ``fused_scores``."""
    record: dict[str, Any] = {"chunks": [h.id for h in hits], "scores": [round(h.score, 6) for h in hits]}
    if any(h.fused_score is not None for h in hits):
        record["fused_scores"] = [
            round(h.fused_score if h.fused_score is not None else h.score, 6) for h in hits
        ]
    return record


@contextlib.asynccontextmanager
async def open_context(
    config: NodeConfig,
    *,
    config_dir: Path,
    data_dir: Path,
    models: ModelsFile,
    engines: Mapping[str, Any],
    embedders: Mapping[str, Embedder],
    audit: AuditLog | None,
) -> AsyncIterator[ContextApi | None]:
    """The context store that ``[context]`` configures (None without one): SQLite in ``data_dir`` or
    PostgreSQL (``node.context.backends``); a database that cannot be reached stops start-up (exit 9)."""
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
    reranker = _reranker(settings, engines)
    try:
        backend = await open_backend(
            config, config_dir=config_dir, data_dir=data_dir, kek=load_kek(config.audit)
        )
    except ContextDatabaseError as exc:
        raise StartupError(ExitCode.DATABASE, f"refusing to serve: {exc.message}") from None
    except ConfigError as exc:
        raise StartupError(ExitCode.CONFIG, exc.message) from None
    try:
        service = ContextService(
            backend,
            embedder,
            _tokenizer(embedder),
            settings,
            embed_max_tokens=models.get(settings.embedding_model).max_model_len,
            reranker=reranker,
        )
        tokenizers = {
            name: _tokenizer(engine)
            for name, engine in engines.items()
            if name not in embedders
            and not isinstance(engine, Reranker)
            and getattr(engine, "model_dir", None) is not None
        }
        windows = {name: int(engines[name].max_model_len) for name in tokenizers}
        api = ContextApi(
            service=service, settings=settings, audit=audit, tokenizers=tokenizers, windows=windows
        )
        try:
            yield api
        finally:
            await api.aclose()
    finally:
        await backend.aclose()


def _reranker(settings: ContextSection, engines: Mapping[str, Any]) -> Reranker | None:
    """The engine of ``[context] reranker`` (None without one); a StartupError naming it when this
    node does not serve it as a reranker."""
    if settings.reranker is None:
        return None
    engine = engines.get(settings.reranker)
    if not isinstance(engine, Reranker):
        raise StartupError(
            ExitCode.CONFIG,
            f"[context] reranker '{settings.reranker}' is not a reranker this node serves "
            '(a models.toml model with task = "rerank", served)',
        )
    return engine


def _tokenizer(engine: Any) -> FileTokenizer:
    """A local engine's tokenizer (its model folder's ``tokenizer.json``)."""
    return FileTokenizer.of_model(engine.model_dir)
