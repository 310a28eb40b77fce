"""``/v1/files`` and ``/v1/vector_stores``: the context store's endpoints (OpenAI's shapes).

Every handler is the authenticated tenant's (``node.dependencies``) and passes
the tenant to every call of ``node.context`` (whose backend answers another
tenant's id as 404, like one that never existed). Uploads, deletions and
searches are audited (``ContextApi.audited``). Adding a file to a store answers
``in_progress`` at once and ingests in the background: clients poll
(``create_and_poll``, ``upload_and_poll``), told how often by
``openai-poll-after-ms``.

Every call is counted against the tenant's limits before its handler runs
(``CONTEXT_DEPENDENCIES``: ``principal`` is the authenticated *and admitted*
tenant, or a 429 recorded as ``context.rejected``); searches and ingestions
charge the embedding tokens they spend (``ContextApi.admit``, ``Meter``).

The ``/v1/files`` routes have their own body limit (``[context] max_file_bytes`` plus the
form's framing: ``upload_router``); the others keep ``[server] max_body_bytes``.
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, Router, delete, get, post
from litestar.datastructures import State
from litestar.di import Provide
from litestar.params import FromPath

from serving.errors import BadRequestError

from .context import NotFoundError, StoreFile, parse_filter
from .context_api import ContextApi, Meter, search_record
from .context_wire import (
    AddFile,
    CreateBatch,
    CreateStore,
    SearchRequest,
    batch_object,
    chunking_of,
    file_object,
    page,
    search_page,
    store_file_object,
    store_object,
)
from .dependencies import TENANT_DEPENDENCIES, Node, RequestId, Tenant
from .multipart_form import read_form
from .state import NodeState
from .tenancy import Principal
from .wire import decode_request

__all__ = ["CONTEXT_CONTROLLERS", "CONTEXT_DEPENDENCIES", "context_api", "meter", "upload_router"]

#: what a client waits between polls of an ``in_progress`` file or batch: OpenAI's client's own default,
#: as each poll counts against the tenant's rpm
POLL_HEADERS = {"openai-poll-after-ms": "1000"}
#: room for the multipart framing and the ``purpose`` field around a file of the maximum size
_FORM_OVERHEAD = 64 * 1024

_Req = Request[Any, Any, State]


def context_api(node: NodeState) -> ContextApi:
    if node.context is None:
        raise NotFoundError(
            "This node has no file or vector store service (no [context] section in its node.toml).",
            param=None,
        )
    return node.context


def _tenant(principal: Principal) -> str:
    return principal.tenant.name


def meter(node: NodeState, principal: Principal) -> Meter:
    """What charges ``principal``'s tenant for the embeddings of its search or ingestion."""
    return Meter(node.router.limits, _tenant(principal))


async def _admitted(node: Node, request: _Req, request_id: RequestId, authenticated: Tenant) -> Principal:
    """The authenticated tenant, once this call is counted against its limits."""
    api = context_api(node)  # a node without [context] answers 404 and counts nothing
    operation = request.route_handler.handler_name
    await api.admit(node.router.limits, authenticated, request_id, operation, request.url.path)
    return authenticated


#: the context controllers' dependencies: ``principal`` is authenticated, then admitted
CONTEXT_DEPENDENCIES = {
    **TENANT_DEPENDENCIES,
    "authenticated": TENANT_DEPENDENCIES["principal"],
    "principal": Provide(_admitted),
}


class FilesController(Controller):
    """``/v1/files`` (in its own router: its body limit is ``[context] max_file_bytes``)."""

    dependencies = CONTEXT_DEPENDENCIES

    @post("/v1/files", status_code=200)
    async def upload(
        self, node: Node, request: _Req, principal: Tenant, request_id: RequestId
    ) -> dict[str, Any]:
        api = context_api(node)
        async with api.audited(principal, request_id, "upload") as record:
            form = read_form(request.headers.get("content-type"), await request.body())
            unknown = sorted(
                set(form) - {"file", "purpose", "expires_after[anchor]", "expires_after[seconds]"}
            )
            if unknown or any(k.startswith("expires_after") for k in form):
                name = unknown[0] if unknown else "expires_after"
                raise BadRequestError(f"Unrecognized request argument supplied: {name}", param=name)
            purpose = form["purpose"].data.decode() if "purpose" in form else None
            if purpose != "assistants":
                raise BadRequestError(
                    f"`purpose` {purpose!r} is not supported: this node keeps files for retrieval only "
                    '(purpose = "assistants").',
                    param="purpose",
                )
            part = form.get("file")
            if part is None or not part.filename:
                raise BadRequestError("the form needs a `file` part with a filename.", param="file")
            f = await api.service.upload_file(_tenant(principal), part.filename, part.data, purpose=purpose)
            record |= {"file_id": f.id, "bytes": f.bytes, "content": {"filename": f.filename}}
            return file_object(f)

    @get("/v1/files")
    async def list_files(self, node: Node, request: _Req, principal: Tenant) -> dict[str, Any]:
        purpose = request.query_params.get("purpose")
        files = await context_api(node).service.backend.list_files(_tenant(principal), purpose=purpose)
        return page(files, lambda f: f.id, file_object, request.query_params)

    @get("/v1/files/{file_id:str}")
    async def retrieve(self, node: Node, file_id: FromPath[str], principal: Tenant) -> dict[str, Any]:
        return file_object(await context_api(node).service.backend.get_file(_tenant(principal), file_id))

    @get("/v1/files/{file_id:str}/content")
    async def content(self, node: Node, file_id: FromPath[str], principal: Tenant) -> Response[bytes]:
        data = await context_api(node).service.backend.file_content(_tenant(principal), file_id)
        return Response(data, media_type="application/octet-stream")

    @delete("/v1/files/{file_id:str}", status_code=200)
    async def remove(
        self, node: Node, file_id: FromPath[str], principal: Tenant, request_id: RequestId
    ) -> dict[str, Any]:
        api = context_api(node)
        async with api.audited(principal, request_id, "file.delete", file_id=file_id) as record:
            erased = await api.service.backend.delete_file(_tenant(principal), file_id)
            record |= {"stores": list(erased.stores), "chunks": erased.chunks, "keys": erased.keys}
        return {"id": file_id, "object": "file", "deleted": True}


class VectorStoresController(Controller):
    """``/v1/vector_stores``: stores, their files, file batches and search."""

    dependencies = CONTEXT_DEPENDENCIES

    @post("/v1/vector_stores", status_code=200)
    async def create(
        self, node: Node, request: _Req, principal: Tenant, request_id: RequestId
    ) -> dict[str, Any]:
        api, tenant = context_api(node), _tenant(principal)
        body = decode_request(await request.body(), CreateStore)
        chunking = chunking_of(body.chunking_strategy, api.settings.chunking)
        async with api.audited(principal, request_id, "store.create", file_ids=body.file_ids or []) as record:
            for file_id in body.file_ids or ():
                await api.service.backend.get_file(tenant, file_id)  # 404 before the store exists
            vs = await api.service.create_store(tenant, name=body.name, metadata=body.metadata)
            record["store_id"] = vs.id
            if body.file_ids:
                for file_id in body.file_ids:
                    await api.service.attach(tenant, vs.id, file_id, chunking=chunking)
                api.ingest_later(meter(node, principal), vs.id, tuple(body.file_ids))
                vs = await api.service.backend.get_store(tenant, vs.id)
        return store_object(vs)

    @get("/v1/vector_stores")
    async def list_stores(self, node: Node, request: _Req, principal: Tenant) -> dict[str, Any]:
        stores = await context_api(node).service.backend.list_stores(_tenant(principal))
        return page(stores, lambda s: s.id, store_object, request.query_params)

    @get("/v1/vector_stores/{store_id:str}")
    async def retrieve(
        self, node: Node, store_id: FromPath[str], principal: Tenant
    ) -> Response[dict[str, Any]]:
        vs = await context_api(node).service.backend.get_store(_tenant(principal), store_id)
        return Response(store_object(vs), headers=POLL_HEADERS)

    @post("/v1/vector_stores/{store_id:str}", status_code=200)
    async def modify(self, node: Node, store_id: FromPath[str], principal: Tenant) -> dict[str, Any]:
        await context_api(node).service.backend.get_store(_tenant(principal), store_id)  # 404 first
        raise BadRequestError("modifying a vector store is not supported on this node: create a new one.")

    @delete("/v1/vector_stores/{store_id:str}", status_code=200)
    async def remove(
        self, node: Node, store_id: FromPath[str], principal: Tenant, request_id: RequestId
    ) -> dict[str, Any]:
        api = context_api(node)
        async with api.audited(principal, request_id, "store.delete", store_id=store_id) as record:
            erased = await api.service.backend.delete_store(_tenant(principal), store_id)
            record |= {"chunks": erased.chunks}
        return {"id": store_id, "object": "vector_store.deleted", "deleted": True}

    # -- files of a store ---------------------------------------------------------------------------

    @post("/v1/vector_stores/{store_id:str}/files", status_code=200)
    async def add_file(
        self, node: Node, store_id: FromPath[str], request: _Req, principal: Tenant, request_id: RequestId
    ) -> Response[dict[str, Any]]:
        api = context_api(node)
        body = decode_request(await request.body(), AddFile)
        async with api.audited(
            principal, request_id, "store.file.add", store_id=store_id, file_id=body.file_id
        ):
            sf = await _attach(api, _tenant(principal), store_id, body)
            api.ingest_later(meter(node, principal), store_id, (body.file_id,))
        return Response(store_file_object(sf), headers=POLL_HEADERS)

    @get("/v1/vector_stores/{store_id:str}/files")
    async def list_store_files(
        self, node: Node, store_id: FromPath[str], request: _Req, principal: Tenant
    ) -> dict[str, Any]:
        files = await context_api(node).service.backend.list_store_files(_tenant(principal), store_id)
        if status := request.query_params.get("filter"):
            files = [f for f in files if f.status.value == status]
        return page(files, lambda f: f.file_id, store_file_object, request.query_params)

    @get("/v1/vector_stores/{store_id:str}/files/{file_id:str}")
    async def store_file(
        self, node: Node, store_id: FromPath[str], file_id: FromPath[str], principal: Tenant
    ) -> Response[dict[str, Any]]:
        sf = await context_api(node).service.backend.store_file(_tenant(principal), store_id, file_id)
        return Response(store_file_object(sf), headers=POLL_HEADERS)

    @delete("/v1/vector_stores/{store_id:str}/files/{file_id:str}", status_code=200)
    async def detach(
        self,
        node: Node,
        store_id: FromPath[str],
        file_id: FromPath[str],
        principal: Tenant,
        request_id: RequestId,
    ) -> dict[str, Any]:
        api = context_api(node)
        async with api.audited(
            principal, request_id, "store.file.delete", store_id=store_id, file_id=file_id
        ) as r:
            erased = await api.service.backend.detach_file(_tenant(principal), store_id, file_id)
            r |= {"chunks": erased.chunks}
        return {"id": file_id, "object": "vector_store.file.deleted", "deleted": True}

    # -- file batches -------------------------------------------------------------------------------

    @post("/v1/vector_stores/{store_id:str}/file_batches", status_code=200)
    async def create_batch(
        self, node: Node, store_id: FromPath[str], request: _Req, principal: Tenant, request_id: RequestId
    ) -> Response[dict[str, Any]]:
        api, tenant = context_api(node), _tenant(principal)
        entries = decode_request(await request.body(), CreateBatch).entries()
        ids = tuple(e.file_id for e in entries)
        async with api.audited(
            principal, request_id, "store.batch.add", store_id=store_id, file_ids=list(ids)
        ):
            await api.service.backend.get_store(tenant, store_id)
            for e in entries:
                await api.service.backend.get_file(tenant, e.file_id)  # every id checked before any attach
            for e in entries:
                await _attach(api, tenant, store_id, e)
            batch = await api.service.backend.create_batch(tenant, store_id, ids)
            api.ingest_later(meter(node, principal), store_id, ids)
        return Response(batch_object(batch), headers=POLL_HEADERS)

    @get("/v1/vector_stores/{store_id:str}/file_batches/{batch_id:str}")
    async def retrieve_batch(
        self, node: Node, store_id: FromPath[str], batch_id: FromPath[str], principal: Tenant
    ) -> Response[dict[str, Any]]:
        batch = await context_api(node).service.backend.get_batch(_tenant(principal), store_id, batch_id)
        return Response(batch_object(batch), headers=POLL_HEADERS)

    @get("/v1/vector_stores/{store_id:str}/file_batches/{batch_id:str}/files")
    async def batch_files(
        self, node: Node, store_id: FromPath[str], batch_id: FromPath[str], request: _Req, principal: Tenant
    ) -> dict[str, Any]:
        batch = await context_api(node).service.backend.get_batch(_tenant(principal), store_id, batch_id)
        files = list(batch.files)
        if status := request.query_params.get("filter"):
            files = [f for f in files if f.status.value == status]
        return page(files, lambda f: f.file_id, store_file_object, request.query_params)

    @post("/v1/vector_stores/{store_id:str}/file_batches/{batch_id:str}/cancel", status_code=200)
    async def cancel_batch(
        self, node: Node, store_id: FromPath[str], batch_id: FromPath[str], principal: Tenant
    ) -> dict[str, Any]:
        await context_api(node).service.backend.get_batch(_tenant(principal), store_id, batch_id)
        raise BadRequestError("cancelling a file batch is not supported: delete its files instead.")

    # -- search -------------------------------------------------------------------------------------

    @post("/v1/vector_stores/{store_id:str}/search", status_code=200)
    async def search(
        self, node: Node, store_id: FromPath[str], request: _Req, principal: Tenant, request_id: RequestId
    ) -> dict[str, Any]:
        api = context_api(node)
        async with api.audited(principal, request_id, "search", store_ids=[store_id]) as record:
            body = decode_request(await request.body(), SearchRequest)
            ranking, spent = body.ranking_options, meter(node, principal)
            hits = await api.service.search(
                _tenant(principal),
                [store_id],
                body.text(),
                max_num_results=body.max_num_results,
                filters=parse_filter(body.filters) if body.filters is not None else None,
                score_threshold=ranking.score_threshold if ranking is not None else 0.0,
                charge=spent,
                ranker=ranking.ranker if ranking is not None else None,
            )
            record |= search_record(hits) | {
                "embedding_tokens": spent.tokens,
                "content": {"query": body.text()},
            }
        return search_page(body.text(), hits)


async def _attach(api: ContextApi, tenant: str, store_id: FromPath[str], entry: AddFile) -> StoreFile:
    return await api.service.attach(
        tenant,
        store_id,
        entry.file_id,
        attributes=entry.attributes,
        chunking=chunking_of(entry.chunking_strategy, api.settings.chunking),
    )


def upload_router(node: NodeState) -> Router:
    """``/v1/files`` with its own body limit (a file up to ``[context] max_file_bytes``)."""
    limit = node.config.server.max_body_bytes
    if node.context is not None:
        limit = max(limit, node.context.settings.max_file_bytes + _FORM_OVERHEAD)
    return Router(path="/", route_handlers=[FilesController], request_max_body_size=limit)


#: the context store's endpoints other than ``/v1/files`` (``upload_router``)
CONTEXT_CONTROLLERS = [VectorStoresController]
