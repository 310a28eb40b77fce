"""Ranking: reciprocal rank fusion, de-duplication of overlapping chunks, packing under a token budget.

Reciprocal rank fusion (Cormack, Clarke and Buettcher, SIGIR 2009): a chunk's
fused score is the sum over the rankings it appears in of ``1 / (k + rank)``,
rank counted from 1, ``k = 60`` by default. It needs no calibration between
BM25 and cosine scores, which are on unrelated scales. The score this layer
reports is that sum divided by its maximum (first in every ranking used), so it
lies in (0, 1]: 1.0 is first in every ranking; in hybrid mode 0.5 is first in one
ranking and absent from the other, so a ``score_threshold`` above 0.5 keeps only
chunks that both full text and vectors found. In a one-ranking mode the score
is ``(k + 1) / (k + rank)``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence

import msgspec

from .records import Candidate, Chunk

__all__ = ["Fused", "Hit", "Packed", "SearchMode", "dedupe", "pack", "reciprocal_rank_fusion"]


class SearchMode(enum.StrEnum):
    HYBRID = "hybrid"
    VECTOR = "vector"
    FULLTEXT = "fulltext"


class Fused(msgspec.Struct, frozen=True, kw_only=True):
    store_id: str
    key: int
    score: float
    fulltext_rank: int | None
    vector_rank: int | None


class Hit(msgspec.Struct, frozen=True, kw_only=True):
    """One search result: the chunk, its score and where each ranking placed it. ``score`` is the
    fused score, or the reranker's when one re-scored the hit (the fused one is then ``fused_score``)."""

    chunk: Chunk
    score: float
    fulltext_rank: int | None
    vector_rank: int | None
    fused_score: float | None = None

    @property
    def id(self) -> str:
        return self.chunk.id


def reciprocal_rank_fusion(
    fulltext: Sequence[Candidate] | None, vector: Sequence[Candidate] | None, k: int
) -> list[Fused]:
    """Fuse the rankings given (None: that ranking is not used); best first."""
    used = [r for r in (fulltext, vector) if r is not None]
    if not used:
        return []
    best = len(used) / (k + 1)
    ranks: dict[tuple[str, int], list[int | None]] = {}
    for slot, ranking in enumerate((fulltext, vector)):
        for rank, cand in enumerate(ranking or (), start=1):
            pair = ranks.setdefault((cand.store_id, cand.key), [None, None])
            if pair[slot] is None:
                pair[slot] = rank
    fused = [
        Fused(
            store_id=store_id,
            key=key,
            score=sum(1.0 / (k + r) for r in pair if r is not None) / best,
            fulltext_rank=pair[0],
            vector_rank=pair[1],
        )
        for (store_id, key), pair in ranks.items()
    ]
    fused.sort(key=lambda f: (-f.score, f.store_id, f.key))
    return fused


def dedupe(hits: Sequence[Hit]) -> list[Hit]:
    """Drop a hit whose tokens overlap a better hit of the same file in the same store (static
    chunks overlap by design: the better of two neighbours already holds the shared text)."""
    kept: list[Hit] = []
    spans: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for hit in hits:
        c = hit.chunk
        taken = spans.setdefault((c.store_id, c.file_id), [])
        if any(c.start_token < end and start < c.end_token for start, end in taken):
            continue
        taken.append((c.start_token, c.end_token))
        kept.append(hit)
    return kept


class Packed(msgspec.Struct, frozen=True, kw_only=True):
    hits: tuple[Hit, ...]
    tokens: int
    #: hits left out because they did not fit
    dropped: int


def pack(
    hits: Sequence[Hit],
    *,
    budget_tokens: int,
    count_tokens: Callable[[str], int],
    overhead: int = 0,
    render: Callable[[int, Hit], str] | None = None,
) -> Packed:
    """The best hits whose text fits ``budget_tokens`` (counted with the generating model's
    tokenizer, ``overhead`` tokens of framing per hit), in rank order. A hit that does not fit is
    skipped and smaller ones after it may still go in: whole chunks only, never a cut one.
    ``render(n, hit)``: the hit as the prompt will hold it (numbered from 1, with its header),
    counted instead of its bare text."""
    chosen: list[Hit] = []
    used = 0
    for hit in hits:
        text = render(len(chosen) + 1, hit) if render is not None else hit.chunk.text
        cost = count_tokens(text) + overhead
        if used + cost <= budget_tokens:
            chosen.append(hit)
            used += cost
    return Packed(hits=tuple(chosen), tokens=used, dropped=len(hits) - len(chosen))
