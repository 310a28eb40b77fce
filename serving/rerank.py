"""Reranking: a pinned ``task = "rerank"`` cross-encoder served by vLLM's pooling runner in process.

``LocalReranker`` is a ``PoolingEngine`` (``serving.pooling``) on vLLM's
``classify`` task: the task vLLM's own score API runs for a cross-encoder (a
``*ForSequenceClassification`` model with one label). Each query-document pair
is tokenized by vLLM's cross-encoder score path (``CrossEncoderIOProcessor``:
the tokenizer's pair framing, or the model's score template where it has one),
truncated longest-first to the model's context, and pooled to one logit; the
score is ``sigmoid(logit)``, in (0, 1), so a threshold keeps its meaning
whatever the model's own activation is. Nothing leaves the node.
"""

from __future__ import annotations

import math
from typing import Any, Protocol, runtime_checkable

import msgspec

from serving.errors import BadRequestError, EngineUnavailableError
from serving.pooling import PoolingEngine
from serving.protocol import Health, ProviderInfo

__all__ = ["LocalReranker", "RerankRequest", "Reranked", "Reranker"]

#: documents one request may rerank (each is one engine request)
MAX_DOCUMENTS = 1000


class RerankRequest(msgspec.Struct, frozen=True, kw_only=True):
    request_id: str
    query: str
    documents: tuple[str, ...]


class Reranked(msgspec.Struct, frozen=True, kw_only=True):
    #: per document, in document order: ``sigmoid(logit)`` of the pair (query, document)
    scores: tuple[float, ...]
    #: the cross-encoder's logit per document (what the score is the sigmoid of)
    logits: tuple[float, ...]
    prompt_tokens: int


@runtime_checkable
class Reranker(Protocol):
    """A model that scores documents against a query (only local engines: nothing leaves the node)."""

    name: str

    def describe(self) -> ProviderInfo: ...

    async def health(self) -> Health: ...

    async def rerank(self, request: RerankRequest) -> Reranked: ...


class LocalReranker(PoolingEngine):
    """A pinned cross-encoder on vLLM's pooling runner (``classify``, one label). Use ``async with``."""

    _task = "classify"
    _use = "a reranker; it serves [context] search only"
    _input_param = "query"
    _scorer: Any = None

    async def start(self) -> None:
        await super().start()
        try:
            self._scorer = self._cross_encoder()
        except ValueError as exc:
            await self.aclose()
            raise EngineUnavailableError(f"model {self.name!r} cannot rerank: {exc}") from exc

    def _cross_encoder(self) -> Any:
        """vLLM's cross-encoder score path (what its ``/score`` endpoint and ``LLM.score`` use)."""
        from vllm.entrypoints.pooling.scoring.io_processor import CrossEncoderIOProcessor
        from vllm.renderers.chat_utils import ChatTemplateConfig

        labels = getattr(self._llm.model_config.hf_config, "num_labels", 0)
        if labels != 1:
            raise ValueError(f"a cross-encoder has one label (one logit per pair); this model has {labels}")
        return CrossEncoderIOProcessor(  # type: ignore[no-untyped-call]
            vllm_config=self._llm.vllm_config,
            renderer=self._llm.renderer,
            chat_template_config=ChatTemplateConfig(),
        )

    def _pair_ids(self, query: str, document: str) -> list[int]:
        _, prompt = self._scorer.get_score_prompt(
            query,
            document,
            encode_kwargs={
                "add_special_tokens": True,
                "truncation": "longest_first",
                "max_length": self.max_model_len,
            },
        )
        ids: list[int] = list(prompt["prompt_token_ids"])
        return ids

    async def rerank(self, request: RerankRequest) -> Reranked:
        """Every document's score against the query, computed concurrently; all or none."""
        self._check_alive()
        if not self._health.ready or self._llm is None or self._scorer is None:
            raise self._unavailable()
        if not request.query.strip():
            raise BadRequestError("the query to rerank against is empty.", param="query")
        if len(request.documents) > MAX_DOCUMENTS:
            raise BadRequestError(f"rerank at most {MAX_DOCUMENTS} documents at once.", param="documents")
        if not request.documents:
            return Reranked(scores=(), logits=(), prompt_tokens=0)
        pairs = [self._pair_ids(request.query, d) for d in request.documents]
        # the raw logit: the score's mapping to (0, 1) is ours, not the model's configured activation
        pooled = await self._pool_all(request.request_id, pairs, self._params(use_activation=False))
        logits = tuple(float(p.reshape(-1)[0]) for p in pooled)
        return Reranked(
            scores=tuple(_sigmoid(x) for x in logits), logits=logits, prompt_tokens=sum(len(p) for p in pairs)
        )


def _sigmoid(x: float) -> float:
    """``1 / (1 + e^-x)``, without overflow for large ``|x|``."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)
