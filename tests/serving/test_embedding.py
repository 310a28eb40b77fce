"""``LocalEmbedder``'s own checks that need no engine (the e2e tests drive a started one)."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.embedding import EmbeddingRequest, LocalEmbedder
from serving.errors import BadRequestError, EngineUnavailableError
from serving.models import ModelSpec


def test_dimensions_on_a_model_that_is_not_matryoshka_is_a_400_naming_it(
    tiny_embed_spec: ModelSpec, tmp_path: Path
) -> None:
    embedder = LocalEmbedder(tiny_embed_spec, tmp_path)  # not started: it knows no Matryoshka support
    with pytest.raises(BadRequestError, match="does not support `dimensions`") as caught:
        embedder._check_dimensions(8)
    assert caught.value.param == "dimensions"
    embedder._check_dimensions(None)


async def test_an_engine_that_is_not_started_refuses_with_503(
    tiny_embed_spec: ModelSpec, tmp_path: Path
) -> None:
    embedder = LocalEmbedder(tiny_embed_spec, tmp_path)
    with pytest.raises(EngineUnavailableError):
        await embedder.embed(EmbeddingRequest(request_id="r", model=tiny_embed_spec.name, texts=("x",)))


async def test_generation_on_an_embedding_model_is_a_400_naming_model(
    tiny_embed_spec: ModelSpec, tmp_path: Path
) -> None:
    from serving.protocol import ChatMessage, GenerationRequest

    embedder = LocalEmbedder(tiny_embed_spec, tmp_path)
    stream = embedder.stream(
        GenerationRequest(request_id="r", model="m", messages=(ChatMessage(role="user", content="hi"),))
    )
    with pytest.raises(BadRequestError) as caught:
        await stream.__anext__()
    assert caught.value.param == "model"
