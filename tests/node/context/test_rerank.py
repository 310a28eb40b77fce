"""Reranking in ``ContextService.search`` on the real engines: the tiny embedding model fuses, the tiny
cross-encoder re-scores; real SQLite underneath."""

from __future__ import annotations

import math

import pytest
import pytest_asyncio

from node.context import ContextService, FileTokenizer, Hit, SqliteBackend
from node.context.cli import format_report, index_folder
from node.context.evaluation import RERANKED, evaluate, load_queries
from serving.embedding import LocalEmbedder
from serving.errors import BadRequestError
from serving.rerank import LocalReranker, RerankRequest
from tests.conftest import TINY_RERANK_NAME
from tests.node.context.conftest import context_config
from tests.node.context.test_evaluation import CORPUS

pytestmark = pytest.mark.engine

DOCS = {
    "cardiology.md": "Metoprolol tartrate 50 mg twice daily lowers the heart rate.",
    "dosing.md": "The metoprolol dose is halved for patients with liver disease.",
    "accounts.txt": "Refunds for account ACC-77-1234 go through the treasury desk.",
    "gdpr.txt": "Article 17 grants the right to erasure of personal data.",
    "canteen.txt": "The canteen serves soup on Mondays and fish on Fridays.",
    "drill.txt": "Fire drill: assemble at gate B every first Monday of the month.",
}
QUERY = "metoprolol dose on Mondays"


@pytest_asyncio.fixture(loop_scope="session")
async def reranking(
    backend: SqliteBackend, embed_engine: LocalEmbedder, rerank_engine: LocalReranker
) -> ContextService:
    return ContextService(
        backend,
        embed_engine,
        FileTokenizer.of_model(embed_engine.model_dir),
        context_config(reranker=TINY_RERANK_NAME, rerank_candidates=5),
        embed_max_tokens=embed_engine.max_model_len,
        reranker=rerank_engine,
    )


async def _store(service: ContextService, tenant: str = "acme") -> str:
    store = await service.create_store(tenant, name="kb")
    for name, text in DOCS.items():
        f = await service.upload_file(tenant, name, text.encode())
        assert (await service.add_file(tenant, store.id, f.id)).chunks == 1
    return store.id


async def test_results_follow_the_rerankers_scores(
    reranking: ContextService, rerank_engine: LocalReranker
) -> None:
    sid = await _store(reranking)
    fused = await reranking.search("acme", [sid], QUERY, max_num_results=5, ranker="none")
    assert len(fused) == 5 and all(h.fused_score is None for h in fused)
    hits = await reranking.search("acme", [sid], QUERY, max_num_results=5)
    # the same five candidates (rerank_candidates = 5), re-scored by the cross-encoder itself
    assert {h.id for h in hits} == {h.id for h in fused}
    expected = await rerank_engine.rerank(
        RerankRequest(request_id="t", query=QUERY, documents=tuple(h.chunk.text for h in fused))
    )
    by_id = {h.id: s for h, s in zip(fused, expected.scores, strict=True)}
    assert [h.score for h in hits] == sorted(by_id.values(), reverse=True)
    assert all(math.isclose(h.score, by_id[h.id], rel_tol=1e-4) and 0 < h.score < 1 for h in hits)
    assert {h.id: h.fused_score for h in hits} == {h.id: h.score for h in fused}
    # ranking by the reranker is not ranking by fusion: the orders differ on this corpus
    assert [h.id for h in hits] != [h.id for h in fused]
    # naming the reranker is the same as ``auto``
    named = await reranking.search("acme", [sid], QUERY, max_num_results=5, ranker=TINY_RERANK_NAME)
    assert [h.id for h in named] == [h.id for h in hits]


async def test_the_threshold_applies_to_the_reranked_scores(reranking: ContextService) -> None:
    sid = await _store(reranking)
    every = await reranking.search("acme", [sid], QUERY, max_num_results=5)
    threshold = (every[1].score + every[2].score) / 2
    kept = await reranking.search("acme", [sid], QUERY, max_num_results=5, score_threshold=threshold)
    assert [h.id for h in kept] == [h.id for h in every[:2]]
    # a chunk only one ranking found (fused score <= 0.5) still passes on its reranked score
    low_fused = [h for h in every if h.fused_score is not None and h.fused_score <= 0.5]
    passing = await reranking.search(
        "acme", [sid], QUERY, max_num_results=5, score_threshold=min(h.score for h in every)
    )
    assert {h.id for h in low_fused} <= {h.id for h in passing}


async def test_ranker_none_skips_the_reranker_and_unknown_rankers_are_refused(
    reranking: ContextService, service: ContextService
) -> None:
    sid = await _store(reranking)
    plain: list[Hit] = await service.search("acme", [sid], QUERY, max_num_results=4)
    skipped = await reranking.search("acme", [sid], QUERY, max_num_results=4, ranker="none")
    assert [(h.id, h.score) for h in skipped] == [(h.id, h.score) for h in plain]
    for bad in ("default-2024-11-16", "bastion-tiny-rerak"):
        with pytest.raises(
            BadRequestError, match="'auto', 'default-2024-11-15', 'none', 'bastion-tiny-rerank'"
        ) as caught:
            await reranking.search("acme", [sid], QUERY, ranker=bad)
        assert caught.value.param == "ranking_options.ranker"
    # without a reranker only auto and none exist
    assert await service.search("acme", [sid], QUERY, max_num_results=4, ranker="auto") == plain
    with pytest.raises(BadRequestError, match=r"it has 'auto', 'default-2024-11-15', 'none'\)"):
        await service.search("acme", [sid], QUERY, ranker=TINY_RERANK_NAME)


def test_a_service_given_another_reranker_than_its_config_names_is_refused(
    backend: SqliteBackend, embed_engine: LocalEmbedder, rerank_engine: LocalReranker
) -> None:
    with pytest.raises(ValueError, match="reranker"):
        ContextService(
            backend,
            embed_engine,
            FileTokenizer.of_model(embed_engine.model_dir),
            context_config(),
            embed_max_tokens=embed_engine.max_model_len,
            reranker=rerank_engine,
        )


async def test_eval_adds_a_hybrid_rerank_row_with_a_reranker(reranking: ContextService) -> None:
    queries = load_queries(CORPUS / "queries.jsonl")[:8]
    store_id = await index_folder(reranking, "eval", CORPUS / "docs")
    report = await evaluate(reranking, "eval", [store_id], queries, k=5)
    assert list(report.overall) == ["hybrid", "vector", "fulltext", RERANKED]
    assert report.overall[RERANKED].queries == 8 and 0 <= report.overall[RERANKED].mrr <= 1
    # the modes rank without the reranker: hybrid is what a plain hybrid search gives
    plain = await reranking.search("eval", [store_id], queries[0].query, max_num_results=5, ranker="none")
    assert all(h.fused_score is None for h in plain)
    assert "hybrid+rerank" in format_report(report)
