"""The HTTP endpoints, one ``Controller`` per resource.

A handler gets what it needs by injection (``node.dependencies``): ``node``
(the services ``build_node`` assembled), and on the tenant-facing controllers
``request_id`` and ``principal`` (the authenticated tenant: no valid key, no
handler). The request paths themselves live in ``node.completions``,
``node.embeddings`` and ``node.feedback``; a new endpoint is a controller here
(added to ``CONTROLLERS``), its wire Structs and its request path.
"""

from __future__ import annotations

import hmac
import os
import time
from typing import Any, Final

from litestar import Controller, Request, Response, get, post
from litestar.types import ControllerRouterHandler

from serving.errors import AuditFailedError, AuthenticationError, EngineUnavailableError

from .access import listed_models
from .completions import handle_generation
from .context_http import CONTEXT_CONTROLLERS
from .dependencies import ID_PREFIX, TENANT_DEPENDENCIES, Node, RequestId, Tenant
from .embeddings import handle_embeddings
from .feedback import FeedbackRequest, submit_feedback
from .recorder import RequestRecord
from .responses import handle_responses
from .wire import decode_request

__all__ = ["CONTROLLERS"]


class GenerationController(Controller):
    """``/v1/chat/completions`` and ``/v1/completions`` (``node.completions``)."""

    dependencies = TENANT_DEPENDENCIES

    @post("/v1/chat/completions", status_code=200, opt={ID_PREFIX: "chatcmpl-"})
    async def chat_completions(
        self, node: Node, request: Request[Any, Any, Any], principal: Tenant, request_id: RequestId
    ) -> Response[Any]:
        return await handle_generation(node, request, principal, request_id, chat=True)

    @post("/v1/completions", status_code=200, opt={ID_PREFIX: "cmpl-"})
    async def completions(
        self, node: Node, request: Request[Any, Any, Any], principal: Tenant, request_id: RequestId
    ) -> Response[Any]:
        return await handle_generation(node, request, principal, request_id, chat=False)


class ResponsesController(Controller):
    """``/v1/responses``: the Responses API, stateless, over the chat path (``node.responses``)."""

    dependencies = TENANT_DEPENDENCIES

    @post("/v1/responses", status_code=200, opt={ID_PREFIX: "resp_"})
    async def responses(
        self, node: Node, request: Request[Any, Any, Any], principal: Tenant, request_id: RequestId
    ) -> Response[Any]:
        return await handle_responses(node, request, principal, request_id)


class EmbeddingsController(Controller):
    """``/v1/embeddings`` (``node.embeddings``)."""

    dependencies = TENANT_DEPENDENCIES

    @post("/v1/embeddings", status_code=200, opt={ID_PREFIX: "embd-"})
    async def embeddings(
        self, node: Node, request: Request[Any, Any, Any], principal: Tenant, request_id: RequestId
    ) -> Response[Any]:
        return await handle_embeddings(node, request, principal, request_id)


class ModelsController(Controller):
    """``/v1/models``: the models the caller's tenant may use, as the OpenAI API lists them."""

    dependencies = TENANT_DEPENDENCIES

    @get("/v1/models")
    async def list_models(self, node: Node, principal: Tenant) -> dict[str, Any]:
        data = []
        for name in listed_models(principal, routed=node.router.aliases(), embedding=node.embedders):
            entry: dict[str, Any] = {
                "id": name,
                "object": "model",
                "created": int(node.started_at),
                "owned_by": "bastion",
            }
            if revision := node.revision_of(name):
                entry["revision"] = revision
            data.append(entry)
        return {"object": "list", "data": data}


class FeedbackController(Controller):
    """``/v1/feedback``: a tenant rates one of its own requests (``node.feedback``)."""

    dependencies = TENANT_DEPENDENCIES

    @post("/v1/feedback", status_code=201)
    async def feedback(
        self, node: Node, request: Request[Any, Any, Any], principal: Tenant, request_id: RequestId
    ) -> dict[str, Any]:
        # a refused rating (bad body, another tenant's id, a second rating) leaves request.rejected
        record = RequestRecord(
            state=node,
            principal=principal,
            request_id=request_id,
            endpoint="feedback",
            started=time.monotonic(),
        )
        async with record.refusals_recorded():
            body = decode_request(await request.body(), FeedbackRequest)
            return await submit_feedback(node, principal.tenant.name, body)


class HealthController(Controller):
    """``/healthz`` (liveness: the process answers) and ``/readyz`` (take me into rotation)."""

    @get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "alive"}

    @get("/readyz")
    async def readyz(self, node: Node) -> Response[dict[str, Any]]:
        if node.drain.draining:  # out of rotation at once; /healthz (liveness) stays 200
            return Response({"status": "draining"}, status_code=503, headers={"retry-after": "5"})
        engines = {}
        for name, engine in node.engines.items():
            h = await engine.health()
            engines[name] = {
                "healthy": h.healthy,
                "revision": node.revision_of(name),
                "detail": h.detail,
                "waiting": h.waiting,
                "running": h.running,
            }
        ready = all(e["healthy"] for e in engines.values())
        if not ready:
            err = EngineUnavailableError("A local engine is not ready.")
            body = err.to_body() | {"engines": engines}
            return Response(body, status_code=503, headers={"retry-after": "5"})
        if node.audit is None:
            # an operator's explicit choice, so still ready, but never silently
            return Response({"status": "ready", "engines": engines, "audit": {"enabled": False}})
        if not node.audit.accepting:
            # Every request would be refused (fail closed): take this node out of rotation.
            failed = AuditFailedError("The audit log is not accepting records; requests are refused.")
            audit_state = {"enabled": True, "accepting": False}
            refused: dict[str, Any] = failed.to_body() | {"engines": engines, "audit": audit_state}
            return Response(refused, status_code=503, headers={"retry-after": "5"})
        ready_audit = {"enabled": True, "accepting": True}
        return Response({"status": "ready", "engines": engines, "audit": ready_audit})


class MetricsController(Controller):
    """``/metrics``: Prometheus exposition, behind ``[metrics] token_env``'s bearer token when set."""

    @get("/metrics")
    async def metrics(self, node: Node, request: Request[Any, Any, Any]) -> Response[bytes]:
        _check_metrics_token(node, request.headers.get("authorization"))
        # The exposition format's own content type, charset included, as the header itself:
        # given as a text/* media type, Litestar appends a second "; charset=utf-8".
        return Response(node.metrics.render(), headers={"content-type": node.metrics.content_type})


def _check_metrics_token(node: Node, authorization: str | None) -> None:
    env = node.config.metrics.token_env
    if not env:
        return
    expected = os.environ.get(env, "")
    scheme, _, token = (authorization or "").partition(" ")
    if not expected or scheme.lower() != "bearer" or not hmac.compare_digest(token.strip(), expected):
        raise AuthenticationError("The metrics endpoint needs its bearer token.")


#: every endpoint of the node
CONTROLLERS: Final[list[ControllerRouterHandler]] = [
    GenerationController,
    ResponsesController,
    EmbeddingsController,
    ModelsController,
    FeedbackController,
    HealthController,
    MetricsController,
    *CONTEXT_CONTROLLERS,  # /v1/vector_stores (/v1/files: node.context_http.upload_router)
]
