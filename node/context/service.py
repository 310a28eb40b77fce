"""The context service: what the HTTP layer calls. Ingestion (parse, chunk, embed, store) and search.

    service = ContextService(backend, embedder, tokenizer, config, embed_max_tokens=spec.max_model_len)
    f = await service.upload_file(tenant, "notes.pdf", data)            # FileParseError: 400 naming why
    vs = await service.create_store(tenant, name="policies")
    sf = await service.add_file(tenant, vs.id, f.id, attributes={"year": 2025})  # completed or failed
    hits = await service.search(tenant, [vs.id], "metoprolol dose", max_num_results=5,
                                filters=parse_filter({...}), score_threshold=0.3, ranker="auto")
    packed = pack(hits, budget_tokens=2000, count_tokens=chat_tokenizer.count)

Every other read and delete is the backend's (``service.backend``), which
takes the tenant with every call. Embeddings come from the node's own engine,
so neither files nor queries leave the node; so does reranking. ``ingest`` and
``search`` take a ``charge``: it is told the tokens of every embedding (and
reranked pair) made for the tenant (the HTTP layer charges them to the tenant's
limits, as ``/v1/embeddings`` does).

Reranking (``[context] reranker``, optional): after fusion the best
``rerank_candidates`` chunks (at least ``max_num_results``) are read, decrypted
and scored against the query by the pinned cross-encoder; they are ordered by
that score, which is what ``score`` then reports (``sigmoid`` of the model's
logit, in (0, 1)) and what ``score_threshold`` applies to; the fused score stays
in ``Hit.fused_score``. A request's ``ranker`` picks: ``auto`` (the default: the
reranker where one is configured), ``none`` (fusion only) or the reranker's name.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable, Mapping, Sequence

import msgspec

from serving.embedding import Embedder, EmbeddingRequest
from serving.errors import BadRequestError, BastionError, FileTooLargeError, UnsupportedFileError
from serving.rerank import Reranker, RerankRequest

from .backend import ContextBackend
from .chunking import TextTokenizer, static_chunks
from .filters import Filter
from .fusion import Hit, SearchMode, dedupe, reciprocal_rank_fusion
from .parse import parse_file
from .records import (
    AttributeValue,
    Candidate,
    ChunkIn,
    ContextConfig,
    FileObject,
    StaticChunking,
    StoreFile,
    VectorStore,
)

#: OpenAI's dated name for its default ranker: apps send it, and it means this node's default here
_OPENAI_DEFAULT_RANKER = "default-2024-11-15"

__all__ = ["Charge", "ContextService", "query_terms"]

#: told the input tokens of each embedding made on a tenant's behalf (as the engine counted them)
Charge = Callable[[int], None]

#: OpenAI's limits on a file's attributes
_MAX_ATTRIBUTES = 16
_MAX_KEY = 64
_MAX_STRING = 512
_MAX_TERMS = 64
_TERM = re.compile(r"[^\W_](?:[\w.+/-]*[^\W_])?")


#: English function words, left out of the full-text query: they carry no evidence, and on a small
#: store (where even "of" is rare) BM25 would rank a chunk for holding them
_STOPWORDS = frozenset(
    "a an and are as at be by can do does for from how i in is it its me my of on or our should the "
    "their there this to was we what when where which who why will with you your".split()
)


def query_terms(query: str) -> list[str]:
    """The words and identifiers of a query, for BM25: ``"AC-1234/7"`` stays one term (FTS5 reads it
    as the phrase ``ac 1234 7``), surrounding punctuation and English function words go (all of
    them, when the query has nothing else)."""
    terms = _TERM.findall(query)
    return ([t for t in terms if t.lower() not in _STOPWORDS] or terms)[:_MAX_TERMS]


def _check_attributes(attributes: Mapping[str, AttributeValue]) -> None:
    if len(attributes) > _MAX_ATTRIBUTES:
        raise BadRequestError(f"`attributes` holds at most {_MAX_ATTRIBUTES} keys.", param="attributes")
    for key, value in attributes.items():
        if not key or len(key) > _MAX_KEY:
            raise BadRequestError(f"attribute keys are 1 to {_MAX_KEY} characters.", param="attributes")
        if not isinstance(value, str | int | float | bool):
            raise BadRequestError(
                f"attribute {key!r} must be a string, number or boolean.", param="attributes"
            )
        if isinstance(value, str) and len(value) > _MAX_STRING:
            raise BadRequestError(
                f"attribute {key!r} is longer than {_MAX_STRING} characters.", param="attributes"
            )


class ContextService:
    def __init__(
        self,
        backend: ContextBackend,
        embedder: Embedder,
        tokenizer: TextTokenizer,
        config: ContextConfig,
        *,
        embed_max_tokens: int,
        reranker: Reranker | None = None,
    ) -> None:
        if (reranker.name if reranker is not None else None) != config.reranker:
            raise ValueError(f"[context] reranker is {config.reranker!r}; the service was given another")
        self.backend = backend
        self.embedder = embedder
        self.tokenizer = tokenizer
        self.config = config
        self.reranker = reranker
        self._embed_max_tokens = embed_max_tokens
        self._dimensions: int | None = None

    # -- files and stores -------------------------------------------------------------------------

    async def upload_file(
        self, tenant: str, filename: str, content: bytes, *, purpose: str = "assistants"
    ) -> FileObject:
        """Stores the file after checking it parses (FileParseError / FileTooLargeError otherwise)."""
        if len(content) > self.config.max_file_bytes:
            raise FileTooLargeError(
                f"'{filename}' is {len(content)} bytes, more than this node's limit of "
                f"{self.config.max_file_bytes}.",
                param="file",
            )
        await asyncio.to_thread(parse_file, filename, content, max_chars=self.config.max_text_chars)
        return await self.backend.put_file(tenant, filename=filename, purpose=purpose, content=content)

    async def create_store(
        self, tenant: str, *, name: str | None = None, metadata: Mapping[str, str] | None = None
    ) -> VectorStore:
        return await self.backend.create_store(
            tenant,
            name=name,
            metadata=metadata or {},
            embedding_model=self.config.embedding_model,
            dimensions=await self._embedding_dimensions(),
        )

    async def _embedding_dimensions(self) -> int:
        if self._dimensions is None:
            (vector,) = await self._embed(["dimensions"], "ctx-dims")
            self._dimensions = len(vector) // 4
        return self._dimensions

    # -- ingestion --------------------------------------------------------------------------------

    async def attach(
        self,
        tenant: str,
        store_id: str,
        file_id: str,
        *,
        attributes: Mapping[str, AttributeValue] | None = None,
        chunking: StaticChunking | None = None,
    ) -> StoreFile:
        """The file in the store, ``in_progress``: ``ingest`` next (inline or as a task)."""
        strategy = chunking or StaticChunking()
        _check_attributes(attributes or {})
        # the engine adds its special tokens (BOS) to every input: leave them room
        if strategy.max_chunk_size_tokens > self._embed_max_tokens - 8:
            raise BadRequestError(
                f"`max_chunk_size_tokens` {strategy.max_chunk_size_tokens} is more than the embedding model "
                f"'{self.config.embedding_model}' reads ({self._embed_max_tokens - 8} tokens).",
                param="chunking_strategy.static.max_chunk_size_tokens",
            )
        store = await self.backend.get_store(tenant, store_id)
        if store.embedding_model != self.config.embedding_model:
            raise BadRequestError(
                f"vector store '{store_id}' was embedded with '{store.embedding_model}'; "
                f"this node embeds with '{self.config.embedding_model}'.",
                param="vector_store_id",
            )
        return await self.backend.attach_file(
            tenant, store_id, file_id, attributes=attributes or {}, chunking=strategy
        )

    async def ingest(
        self, tenant: str, store_id: str, file_id: str, *, charge: Charge | None = None
    ) -> StoreFile:
        """Parse, chunk, embed and index an attached file: ``completed``, or ``failed`` with
        ``last_error`` saying why (a client's error: the engine failing raises instead)."""
        current = await self.backend.store_file(tenant, store_id, file_id)
        meta = await self.backend.get_file(tenant, file_id)
        content = await self.backend.file_content(tenant, file_id)
        try:
            text = await asyncio.to_thread(
                parse_file, meta.filename, content, max_chars=self.config.max_text_chars
            )
            spans = await asyncio.to_thread(static_chunks, text, self.tokenizer, current.chunking)
            if len(spans) > self.config.max_chunks_per_file:
                raise FileTooLargeError(
                    f"'{meta.filename}' makes {len(spans)} chunks, more than this node's limit of "
                    f"{self.config.max_chunks_per_file} per file.",
                    param="file",
                )
            chunks: list[ChunkIn] = []
            batch = self.config.embed_batch
            for i in range(0, len(spans), batch):
                part = spans[i : i + batch]
                vectors = await self._embed([s.text for s in part], f"ctx-{file_id}-{i}", charge)
                chunks += [
                    ChunkIn(
                        index=s.index, text=s.text, start_token=s.start_token, end_token=s.end_token, vector=v
                    )
                    for s, v in zip(part, vectors, strict=True)
                ]
        except UnsupportedFileError as exc:
            return await self.backend.fail_file(tenant, store_id, file_id, "unsupported_file", exc.message)
        except (BadRequestError, FileTooLargeError) as exc:
            return await self.backend.fail_file(tenant, store_id, file_id, "invalid_file", exc.message)
        except Exception as exc:
            # the engine (or the disk) failed: the file must not stay in_progress for ever
            message = (
                exc.message if isinstance(exc, BastionError) else f"ingestion failed: {type(exc).__name__}"
            )
            await self.backend.fail_file(tenant, store_id, file_id, "server_error", message)
            raise
        return await self.backend.write_chunks(tenant, store_id, file_id, chunks)

    async def add_file(
        self,
        tenant: str,
        store_id: str,
        file_id: str,
        *,
        attributes: Mapping[str, AttributeValue] | None = None,
        chunking: StaticChunking | None = None,
    ) -> StoreFile:
        await self.attach(tenant, store_id, file_id, attributes=attributes, chunking=chunking)
        return await self.ingest(tenant, store_id, file_id)

    async def _embed(
        self, texts: Sequence[str], request_id: str, charge: Charge | None = None
    ) -> tuple[bytes, ...]:
        result = await self.embedder.embed(
            EmbeddingRequest(
                request_id=f"{request_id}-{uuid.uuid4().hex[:8]}",
                model=self.config.embedding_model,
                texts=tuple(texts),
            )
        )
        if charge is not None:
            charge(result.prompt_tokens)
        return result.vectors

    # -- search -----------------------------------------------------------------------------------

    async def search(
        self,
        tenant: str,
        store_ids: Sequence[str],
        query: str,
        *,
        max_num_results: int = 10,
        filters: Filter | None = None,
        score_threshold: float = 0.0,
        mode: SearchMode = SearchMode.HYBRID,
        charge: Charge | None = None,
        ranker: str | None = None,
    ) -> list[Hit]:
        """The best chunks of the tenant's stores for ``query``: fused (see ``node.context.fusion``),
        reranked where ``ranker`` asks for it, de-duplicated, at most ``max_num_results``, none
        scoring below ``score_threshold``."""
        reranker = self.ranker(ranker)
        if not query.strip():
            raise BadRequestError("`query` must not be empty.", param="query")
        if not 1 <= max_num_results <= 50:
            raise BadRequestError("`max_num_results` must be between 1 and 50.", param="max_num_results")
        if not 0.0 <= score_threshold <= 1.0:
            raise BadRequestError(
                "`score_threshold` must be between 0 and 1.", param="ranking_options.score_threshold"
            )
        if not store_ids:
            raise BadRequestError("name at least one vector store.", param="vector_store_ids")
        allowed = {sid: await self._allowed(tenant, sid, filters) for sid in dict.fromkeys(store_ids)}
        depth = max(self.config.candidates, 2 * max_num_results)
        fulltext: list[Candidate] | None = None
        vector: list[Candidate] | None = None
        if mode is not SearchMode.VECTOR:
            terms = query_terms(query)
            fulltext = []
            for sid, files in allowed.items():
                fulltext += await self.backend.fulltext(tenant, sid, terms, depth, files)
            fulltext = sorted(fulltext, key=lambda c: c.raw)[:depth]
        if mode is not SearchMode.FULLTEXT:
            (qvec,) = await self._embed([query], "ctx-query", charge)
            vector = []
            for sid, files in allowed.items():
                vector += await self.backend.nearest(tenant, sid, qvec, depth, files)
            vector = sorted(vector, key=lambda c: c.raw)[:depth]
        fused = reciprocal_rank_fusion(fulltext, vector, self.config.rrf_k)
        if reranker is None:
            # read a few more than asked: de-duplication may drop some
            fused = [f for f in fused if f.score >= score_threshold][: 3 * max_num_results]
        else:
            fused = fused[: max(self.config.rerank_candidates, max_num_results)]
        chunks = await self.backend.read_chunks(tenant, [(f.store_id, f.key) for f in fused])
        read = {(c.store_id, c.key): c for c in chunks}  # a chunk erased since it was ranked is gone
        hits = [
            Hit(
                chunk=read[f.store_id, f.key],
                score=f.score,
                fulltext_rank=f.fulltext_rank,
                vector_rank=f.vector_rank,
            )
            for f in fused
            if (f.store_id, f.key) in read
        ]
        if reranker is not None:
            reranked = await _rerank(reranker, query, hits, charge)
            hits = [h for h in reranked if h.score >= score_threshold]
        return dedupe(hits)[:max_num_results]

    def ranker(self, ranker: str | None) -> Reranker | None:
        """The reranker a request's ``ranking_options.ranker`` asks for: ``auto`` (or none given, or
        OpenAI's other documented value, ``default-2024-11-15``: this node's default ranking) the
        configured one if any, ``none`` no reranking, or the configured one by name; else a 400."""
        if ranker in (None, "auto", _OPENAI_DEFAULT_RANKER):
            return self.reranker
        if ranker == "none":
            return None
        if self.reranker is not None and ranker == self.reranker.name:
            return self.reranker
        known = ", ".join(
            repr(r)
            for r in (
                "auto",
                _OPENAI_DEFAULT_RANKER,
                "none",
                *((self.reranker.name,) if self.reranker else ()),
            )
        )
        raise BadRequestError(
            f"`ranker` {ranker!r} is not a ranker of this node (it has {known}).",
            param="ranking_options.ranker",
        )

    async def _allowed(self, tenant: str, store_id: str, filters: Filter | None) -> list[str] | None:
        """The store's files a filter lets through (None: no filter, every file). Without a filter
        nothing is read here: each ranking resolves the store for the tenant (NotFoundError) before
        it reads a chunk, and a search returns nothing until every store answered."""
        if filters is None:
            return None
        files = await self.backend.list_store_files(tenant, store_id)  # NotFoundError for another tenant's
        return [f.file_id for f in files if filters.matches(f.attributes)]


async def _rerank(reranker: Reranker, query: str, hits: Sequence[Hit], charge: Charge | None) -> list[Hit]:
    """``hits`` re-scored against ``query`` by the cross-encoder, best first (ties keep fused order)."""
    if not hits:
        return []
    out = await reranker.rerank(
        RerankRequest(
            request_id=f"ctx-rerank-{uuid.uuid4().hex[:8]}",
            query=query,
            documents=tuple(h.chunk.text for h in hits),
        )
    )
    if charge is not None:
        charge(out.prompt_tokens)
    rescored = [
        msgspec.structs.replace(h, score=score, fused_score=h.score)
        for h, score in zip(hits, out.scores, strict=True)
    ]
    return sorted(rescored, key=lambda h: -h.score)
