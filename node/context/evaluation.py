"""Retrieval evaluation: recall@k, MRR and nDCG@k of hybrid, full-text-only and vector-only search.

A labelled query set is JSON Lines, one query a line::

    {"query": "overdraft limit of account DE-4471-0093", "relevant": ["accounts-4471.txt"]}

``relevant`` names files (by file name or file id) that answer the query. A
ranking is judged at the file level: a file's rank is that of its best chunk
(de-duplication already keeps one of two overlapping chunks). Binary relevance:

- recall@k: the share of a query's relevant files in the first k;
- MRR: 1 / rank of the first relevant file in the first k (0 when none is);
- nDCG@k: DCG = sum of 1/log2(rank + 1) over relevant files in the first k,
  divided by the DCG of a perfect ranking.

Each is the mean over the queries. An optional ``"tag"`` per query groups the
figures (``by_tag``), so an operator can see where each ranking wins. With a
reranker (``[context] reranker``) a ``hybrid+rerank`` row shows what it adds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import msgspec

from .fusion import SearchMode
from .service import ContextService

__all__ = ["RERANKED", "LabelledQuery", "Metrics", "Report", "evaluate", "load_queries", "score_ranking"]

#: the report's row for hybrid search reranked by the configured reranker
RERANKED = "hybrid+rerank"


class LabelledQuery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    query: str
    relevant: tuple[str, ...]
    tag: str | None = None

    def __post_init__(self) -> None:
        if not self.query.strip():
            raise ValueError("`query` is empty")
        if not self.relevant:
            raise ValueError("`relevant` names no file")


class Metrics(msgspec.Struct, frozen=True, kw_only=True):
    queries: int
    recall: float
    mrr: float
    ndcg: float


class Report(msgspec.Struct, frozen=True, kw_only=True):
    k: int
    #: mode ("hybrid", "fulltext", "vector", and "hybrid+rerank" with a reranker) -> figures
    overall: dict[str, Metrics]
    #: tag -> mode -> figures over that tag's queries
    by_tag: dict[str, dict[str, Metrics]]


def load_queries(path: str | Path) -> list[LabelledQuery]:
    """Raises ValueError naming the line of the first bad query."""
    out = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append(msgspec.json.decode(line, type=LabelledQuery))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ValueError(f"{path}:{number}: {exc}") from None
    if not out:
        raise ValueError(f"{path}: no queries")
    return out


def score_ranking(ranked: Sequence[str], relevant: set[str], k: int) -> tuple[float, float, float]:
    """(recall@k, reciprocal rank, nDCG@k) of one ranking of file keys."""
    top = list(dict.fromkeys(ranked))[:k]
    hits = [i for i, key in enumerate(top, start=1) if key in relevant]
    recall = len(hits) / len(relevant)
    rr = 1.0 / hits[0] if hits else 0.0
    dcg = sum(1.0 / math.log2(i + 1) for i in hits)
    ideal = sum(1.0 / math.log2(i + 1) for i in range(1, min(len(relevant), k) + 1))
    return recall, rr, dcg / ideal


def _mean(rows: list[tuple[float, float, float]]) -> Metrics:
    n = len(rows)
    return Metrics(
        queries=n,
        recall=sum(r[0] for r in rows) / n,
        mrr=sum(r[1] for r in rows) / n,
        ndcg=sum(r[2] for r in rows) / n,
    )


async def evaluate(
    service: ContextService,
    tenant: str,
    store_ids: Sequence[str],
    queries: Sequence[LabelledQuery],
    *,
    k: int = 5,
) -> Report:
    """Every query in every mode, over the tenant's stores; the same service, filters none. The
    modes rank without the reranker; with one, ``hybrid+rerank`` is hybrid's candidates reranked."""
    names = {}
    for store_id in store_ids:
        for sf in await service.backend.list_store_files(tenant, store_id):
            names[sf.file_id] = (await service.backend.get_file(tenant, sf.file_id)).filename
    rows: dict[str, dict[str, list[tuple[float, float, float]]]] = {}
    runs = [(mode.value, mode, "none") for mode in SearchMode]
    if service.reranker is not None:
        runs.append((RERANKED, SearchMode.HYBRID, service.reranker.name))
    for q in queries:
        relevant = set(q.relevant)
        for row, mode, ranker in runs:
            hits = await service.search(
                tenant, store_ids, q.query, max_num_results=k, mode=mode, ranker=ranker
            )
            ranked = [
                h.chunk.file_id if h.chunk.file_id in relevant else names[h.chunk.file_id] for h in hits
            ]
            score = score_ranking(ranked, relevant, k)
            for group in ("", *((q.tag,) if q.tag else ())):
                rows.setdefault(group, {}).setdefault(row, []).append(score)
    overall = {mode: _mean(r) for mode, r in rows.pop("", {}).items()}
    by_tag = {tag: {mode: _mean(r) for mode, r in modes.items()} for tag, modes in sorted(rows.items())}
    return Report(k=k, overall=overall, by_tag=by_tag)
