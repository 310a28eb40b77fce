"""Embeddings: a pinned ``task = "embed"`` model served by vLLM's pooling runner in process.

``LocalEmbedder`` is a ``PoolingEngine`` (``serving.pooling``: a ``LocalEngine``
with the same pin checks, egress switches, probe-based health and shutdown,
on vLLM's pooling runner) whose probe is a one-input embedding. It satisfies ``Embedder``: the node asks
it for the vectors of one request's inputs, already tokenized or as text. It
validates what vLLM would otherwise reject deep in the engine (an empty input,
a token id outside the vocabulary, an input longer than the context, an
unsupported ``dimensions``) as ``BadRequestError``s naming the parameter.

Vectors travel as little-endian float32 bytes: what ``encoding_format:
"base64"`` sends as they are, and what ``float`` reads back without rounding.
There is no external embedding provider: embeddings are always computed here.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol, runtime_checkable

import msgspec

from serving.errors import BadRequestError, ContextLengthExceededError
from serving.pooling import PoolingEngine
from serving.protocol import Health, ProviderInfo

__all__ = ["Embedder", "EmbeddingRequest", "Embeddings", "LocalEmbedder"]


class EmbeddingRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One request's inputs: exactly one of ``texts`` and ``token_ids`` is set."""

    request_id: str
    model: str
    texts: tuple[str, ...] | None = None
    token_ids: tuple[tuple[int, ...], ...] | None = None
    #: keep the first ``dimensions`` components and renormalise (Matryoshka models only)
    dimensions: int | None = None


class Embeddings(msgspec.Struct, frozen=True, kw_only=True):
    #: one vector per input, in input order, as little-endian float32 bytes
    vectors: tuple[bytes, ...]
    prompt_tokens: int


@runtime_checkable
class Embedder(Protocol):
    """A model that turns inputs into vectors (only local engines: embeddings never leave the node)."""

    def describe(self) -> ProviderInfo: ...

    async def health(self) -> Health: ...

    async def embed(self, request: EmbeddingRequest) -> Embeddings: ...


class LocalEmbedder(PoolingEngine):
    """A pinned embedding model on vLLM's pooling runner. Use ``async with``."""

    _task = "embed"
    _use = "an embedding model; use /v1/embeddings"
    _vocab_size = 0
    _embedding_size = 0
    _matryoshka = False
    _matryoshka_dims: tuple[int, ...] | None = None

    async def start(self) -> None:
        await super().start()
        config = self._llm.model_config
        self._vocab_size = int(config.get_vocab_size())
        # reads the model folder's optional sentence-transformers modules: off the event loop
        self._embedding_size = int(await asyncio.to_thread(lambda: config.embedding_size))
        self._matryoshka = bool(config.is_matryoshka)
        dims = config.matryoshka_dimensions
        self._matryoshka_dims = tuple(int(d) for d in dims) if dims else None

    @property
    def embedding_size(self) -> int:
        return self._embedding_size

    # -- embeddings ----------------------------------------------------------------

    def _token_ids(self, request: EmbeddingRequest) -> list[list[int]]:
        if self._renderer is None:
            raise self._unavailable()
        if request.token_ids is not None:
            ids = [list(t) for t in request.token_ids]
            for i, seq in enumerate(ids):
                bad = next((t for t in seq if not 0 <= t < self._vocab_size), None)
                if bad is not None:
                    raise BadRequestError(
                        f"input[{i}] holds token id {bad}, outside this model's vocabulary "
                        f"(0 to {self._vocab_size - 1}).",
                        param="input",
                    )
        else:
            tokenizer = self._llm.get_tokenizer()
            ids = [
                list(t) for t in tokenizer(list(request.texts or ()), add_special_tokens=True)["input_ids"]
            ]
        for i, seq in enumerate(ids):
            if not seq:
                raise BadRequestError(
                    f"input[{i}] is empty; every input needs at least one token.", param="input"
                )
            if len(seq) > self.max_model_len:
                raise ContextLengthExceededError(
                    f"This model's maximum context length is {self.max_model_len} tokens. However, "
                    f"input[{i}] resulted in {len(seq)} tokens. Please reduce the length of the input.",
                    param="input",
                )
        return ids

    def _check_dimensions(self, dimensions: int | None) -> None:
        if dimensions is None:
            return
        if not self._matryoshka:
            raise BadRequestError(
                f"The model '{self.name}' does not support `dimensions` (it is not a Matryoshka model).",
                param="dimensions",
            )
        if not 1 <= dimensions <= self._embedding_size:
            raise BadRequestError(
                f"`dimensions` must be between 1 and {self._embedding_size} for '{self.name}'.",
                param="dimensions",
            )
        if self._matryoshka_dims is not None and dimensions not in self._matryoshka_dims:
            allowed = ", ".join(str(d) for d in self._matryoshka_dims)
            raise BadRequestError(
                f"The model '{self.name}' supports `dimensions` of {allowed} only.", param="dimensions"
            )

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        """The vectors of every input, computed concurrently; all or none (a failure aborts the rest)."""
        self._check_alive()
        if not self._health.ready or self._llm is None:
            raise self._unavailable()
        self._check_dimensions(request.dimensions)
        ids = self._token_ids(request)
        pooled = await self._pool_all(request.request_id, ids, self._params(dimensions=request.dimensions))
        return Embeddings(
            vectors=tuple(_le_float32(p) for p in pooled), prompt_tokens=sum(len(s) for s in ids)
        )


def _le_float32(data: Any) -> bytes:
    """A pooled tensor as little-endian float32 bytes."""
    import numpy as np

    array = data.detach().to("cpu").float().numpy()
    raw: bytes = np.ascontiguousarray(array, dtype="<f4").tobytes()
    return raw
