"""Model access, decided in one place: may this tenant use this model, and for what.

Every path that takes a ``model`` asks here before anything else happens to the
request: chat and completions (``node.completions``, and ``/v1/responses`` through
it), embeddings (``node.embeddings``), and the listing of ``/v1/models``. Pure
over what it is given (the tenant's allow-list, the router's aliases, the
embedding models), testable the way ``router.policy`` is.

A model the tenant may not use and one that does not exist get the same answer,
OpenAI's 404 ``model_not_found`` ("does not exist or you do not have access to
it"), so a tenant cannot learn which models other tenants are served. A model the
tenant may use on the wrong endpoint (an embedding model on chat, a chat model on
``/v1/embeddings``) is a 400 naming the right one.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Literal

from serving.errors import BadRequestError, ModelNotFoundError

from .tenancy import Principal

__all__ = ["Use", "check_model", "listed_models"]

#: what the request wants of the model: text (chat, completions, responses) or vectors
Use = Literal["generate", "embed"]


def check_model(
    principal: Principal, model: str, *, use: Use, routed: Collection[str], embedding: Collection[str]
) -> None:
    """Raises unless ``principal``'s tenant may use ``model`` for ``use``.

    ``routed``: the router's aliases (chat and completions); ``embedding``: the
    local embedding models. 404 outside the tenant's allow-list or served by
    neither; 400 for a model served for the other use.
    """
    if model not in principal.tenant.models:
        raise ModelNotFoundError.of(model)
    if use == "generate":
        if model in embedding:
            raise BadRequestError(
                f"The model '{model}' is an embedding model; use /v1/embeddings.", param="model"
            )
        if model not in routed:
            raise ModelNotFoundError.of(model)
        return
    if model in embedding:
        return
    if model in routed:
        raise BadRequestError(
            f"The model '{model}' is not an embedding model; /v1/embeddings needs a model served with "
            'task = "embed".',
            param="model",
        )
    raise ModelNotFoundError.of(model)


def listed_models(principal: Principal, *, routed: Collection[str], embedding: Collection[str]) -> list[str]:
    """The models ``/v1/models`` shows the tenant: its allow-list, as far as this node serves it."""
    return [m for m in principal.tenant.models if m in routed or m in embedding]
