"""Model access, decided once (``node.access``): one 404 for unknown and not allowed, 400 for a wrong use."""

from __future__ import annotations

import pytest

from node.access import Use, check_model, listed_models
from node.config import decode_config
from node.tenancy import Principal, TenantRegistry, create_key
from serving.errors import BadRequestError, BastionError, ModelNotFoundError

_ROUTED = ("chat-a", "chat-b")
_EMBEDDING = ("embed-a",)


def _principal() -> Principal:
    key = create_key()
    config = decode_config(
        f"""
[[tenants]]
name = "alpha"
models = ["chat-a", "embed-a", "not-served"]
keys = [{key.config_line()}]

[audit]
enabled = false
"""
    )
    return TenantRegistry(config.tenants).authenticate(f"Bearer {key.key}")


@pytest.mark.parametrize(("model", "use"), [("chat-a", "generate"), ("embed-a", "embed")])
def test_an_allowed_model_for_its_use_passes(model: str, use: Use) -> None:
    check_model(_principal(), model, use=use, routed=_ROUTED, embedding=_EMBEDDING)


_NOT_FOUND = "The model '{}' does not exist or you do not have access to it."


@pytest.mark.parametrize(
    ("model", "use", "error", "message"),
    [
        # another tenant's model, one that exists nowhere, one allowed but not served: one answer
        ("chat-b", "generate", ModelNotFoundError, _NOT_FOUND.format("chat-b")),
        ("chat-b", "embed", ModelNotFoundError, _NOT_FOUND.format("chat-b")),
        ("nothing", "generate", ModelNotFoundError, _NOT_FOUND.format("nothing")),
        ("not-served", "generate", ModelNotFoundError, _NOT_FOUND.format("not-served")),
        ("not-served", "embed", ModelNotFoundError, _NOT_FOUND.format("not-served")),
        # the tenant's own model on the other endpoint
        (
            "embed-a",
            "generate",
            BadRequestError,
            "The model 'embed-a' is an embedding model; use /v1/embeddings.",
        ),
        ("chat-a", "embed", BadRequestError, "The model 'chat-a' is not an embedding model"),
    ],
)
def test_refusals(model: str, use: Use, error: type[BastionError], message: str) -> None:
    with pytest.raises(error) as caught:
        check_model(_principal(), model, use=use, routed=_ROUTED, embedding=_EMBEDDING)
    assert type(caught.value) is error
    assert caught.value.message.startswith(message)
    assert caught.value.param == "model"
    assert caught.value.status_code == (404 if error is ModelNotFoundError else 400)


def test_listed_models_are_the_allowed_ones_served_here() -> None:
    assert listed_models(_principal(), routed=_ROUTED, embedding=_EMBEDDING) == ["chat-a", "embed-a"]
