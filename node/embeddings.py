"""The request path of ``/v1/embeddings``.

(authenticated: ``node.dependencies``) the request's record -> decode (400 naming the parameter) ->
model access (the tenant's allow-list, then: the model must be an embedding
model) -> the tenant's limits (``rpm``, ``tpm``, ``tokens_per_day``: the same
counters chat draws on, so embeddings are no way around them) -> start record
(the input encrypted, like a prompt) -> the local embedding engine -> the input
tokens charged -> end record (usage; the vectors are not stored) -> response.

Residency: embeddings are always computed by this node's own engine. There is
no external embedding provider, so no request can leave the node and every
residency policy (and ``x-bastion-residency`` header) is satisfied as it is;
the route is always ``local``. A header that cannot be read is still a 400
``bad_residency_header``, as on chat: a client's typo is never read loosely.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
from litestar import Request, Response

from router import ForwardDecision
from router.policy import RESIDENCY_HEADER, effective_residency
from serving.embedding import Embedder, EmbeddingRequest

from .access import check_model
from .embedding_wire import EmbeddingsRequest, embeddings_body
from .recorder import RequestRecord
from .state import NodeState
from .tenancy import Principal
from .wire import decode_request

__all__ = ["handle_embeddings"]

#: the route reason every embedding request carries (``x-bastion-route-reason``)
REASON = "embeddings-local"


async def handle_embeddings(
    state: NodeState, request: Request[Any, Any, Any], principal: Principal, request_id: str
) -> Response[Any]:
    """``principal``: the authenticated tenant (``node.dependencies``); ``request_id``: its ``embd-`` id."""
    started = time.monotonic()
    record = RequestRecord(
        state=state,
        principal=principal,
        request_id=request_id,
        endpoint="embeddings",
        started=started,
        refusal_headers=request.scope["state"].setdefault("route_headers", {}),
    )
    async with record.refusals_recorded():
        wire = decode_request(await request.body(), EmbeddingsRequest)
        texts, token_ids = wire.inputs()
        embedder = _embedder(state, principal, wire.model)
        effective_residency(
            principal.tenant,
            tuple(request.headers.getall(RESIDENCY_HEADER, [])),
            regions={p.region for p in state.config.providers},
        )
        limits = state.router.limits
        await limits.admit(principal.tenant.name, principal.tenant)
        record.alias, record.subject = wire.model, wire.user
        record.content = {"input": list(texts) if texts is not None else [list(t) for t in token_ids or ()]}
        record.params = {
            "embedding": {
                "inputs": len(texts or token_ids or ()),
                "encoding_format": wire.encoding_format,
                "dimensions": wire.dimensions,
            }
        }
        await record.on_forward(
            ForwardDecision(
                route="local",
                reason=REASON,
                provider="local",
                model=wire.model,
                revision=state.revision_of(wire.model),
                redactions={},
                attempt=0,
            )
        )
        result = await embedder.embed(
            EmbeddingRequest(
                request_id=request_id,
                model=wire.model,
                texts=texts,
                token_ids=token_ids,
                dimensions=wire.dimensions,
            )
        )
        record.charged_tokens = (result.prompt_tokens, 0)
        limits.record(principal.tenant.name, tokens=result.prompt_tokens)
        with anyio.CancelScope(shield=True):
            await record.ended(status="ok", text="", error=None)
    body = embeddings_body(
        model=wire.model,
        vectors=result.vectors,
        prompt_tokens=result.prompt_tokens,
        encoding_format=wire.encoding_format,
    )
    return Response(body, media_type="application/json", headers=record.headers())


def _embedder(state: NodeState, principal: Principal, model: str) -> Embedder:
    """The tenant's embedding model ``model``: 404 outside its allow-list, 400 for a chat model."""
    check_model(principal, model, use="embed", routed=state.router.aliases(), embedding=state.embedders)
    return state.embedders[model]
