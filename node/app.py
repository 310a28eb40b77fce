"""The HTTP layer: ``create_app(node)`` serves a node that ``node.assembly.build_node`` built.

The app holds no services of its own: the endpoints are ``node.controllers``,
the node reaches them by injection (``node.dependencies``), every failure goes
through one exception handler (``node.errors``). Closing the node is the
caller's (the ``build_node`` context), so the app has no lifespan.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from litestar import Litestar
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from .assembly import AUDIT_HEADER
from .context_http import upload_router
from .controllers import CONTROLLERS
from .dependencies import node_dependency
from .errors import exception_handlers
from .server import read_deadline_middleware
from .state import NodeState

__all__ = ["create_app"]


def create_app(node: NodeState) -> Litestar:
    """The node's HTTP API over ``node`` (its engines, router, audit log, tenants, metrics)."""
    return Litestar(
        route_handlers=[*CONTROLLERS, upload_router(node)],
        dependencies={"node": node_dependency(node)},
        exception_handlers=exception_handlers,  # type: ignore[arg-type]
        middleware=[_request_id_middleware, read_deadline_middleware],
        before_send=[_audit_header(enabled=node.audit is not None)],
        request_max_body_size=node.config.server.max_body_bytes,
        openapi_config=None,
        debug=False,
    )


def _request_id_middleware(app: ASGIApp) -> ASGIApp:
    """Every response carries ``x-request-id`` (handlers may set their own id first)."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # type: ignore[comparison-overlap]
            await app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state.setdefault("request_id", "req-" + uuid.uuid4().hex)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(k.lower() == b"x-request-id" for k, _ in headers):
                    headers.append((b"x-request-id", str(state["request_id"]).encode()))
                message["headers"] = headers
            await send(message)

        await app(scope, receive, send_with_id)

    return middleware


def _audit_header(*, enabled: bool) -> Callable[[Message, Scope], Awaitable[None]]:
    """A ``before_send`` hook: it sees every response, unknown paths included, so no
    client can miss that a node does not record its requests."""
    header = (AUDIT_HEADER.encode(), b"enabled" if enabled else b"disabled")

    async def before_send(message: Message, scope: Scope) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), header]

    return before_send
