"""What the HTTP layer injects into handlers (``Provide``): the node, the request id, the tenant.

Authentication happens here and nowhere else: a handler that takes ``principal``
is served only to a valid API key (401 otherwise, before the handler runs).
A handler's ``opt["request_id_prefix"]`` (``chatcmpl-``, ``cmpl-``, ``embd-``)
names its request ids; the id is set before authentication, so a refused key's
401 carries it too.
"""

from __future__ import annotations

import uuid
from typing import Any, Final, TypeAlias

from litestar import Request
from litestar.di import NamedDependency, Provide
from litestar.params import SkipValidation

from .state import NodeState
from .tenancy import Principal

__all__ = ["ID_PREFIX", "TENANT_DEPENDENCIES", "Node", "RequestId", "Tenant", "node_dependency"]

#: the route handler ``opt`` key that names the prefix of the handler's request ids
ID_PREFIX: Final = "request_id_prefix"

# What a handler declares to be given them, by parameter name (``node``, ``principal``,
# ``request_id``). Our own objects are handed over as they are: Litestar would otherwise
# validate them field by field on every request.
Node: TypeAlias = NamedDependency[SkipValidation[NodeState]]
Tenant: TypeAlias = NamedDependency[SkipValidation[Principal]]
RequestId: TypeAlias = NamedDependency[str]


def node_dependency(node: NodeState) -> Provide:
    """``node``: the services ``build_node`` assembled (one object for the app's life)."""

    def provide_node() -> NodeState:
        return node

    return Provide(provide_node, sync_to_thread=False, use_cache=True)


async def _request_id(request: Request[Any, Any, Any]) -> str:
    state = request.scope["state"]
    if prefix := request.route_handler.opt.get(ID_PREFIX):
        state["request_id"] = prefix + uuid.uuid4().hex
    return str(state["request_id"])  # else the one the request-id middleware gave it


async def _principal(node: Node, request: Request[Any, Any, Any], request_id: RequestId) -> Principal:
    # request_id first: a refused key's 401 carries the handler's own id
    return node.tenants.authenticate(request.headers.get("authorization"))


#: the dependencies of every tenant-facing controller: ``request_id`` and ``principal``
TENANT_DEPENDENCIES: Final = {"request_id": Provide(_request_id), "principal": Provide(_principal)}
