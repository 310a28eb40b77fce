"""``/v1/vector_stores/{id}/search`` on a node with ``[context] reranker``: uvicorn on 127.0.0.1, the real
tiny embedding and reranker engines, the official ``openai`` client, the real audit log read back."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import dataclass

import openai
import pytest
import pytest_asyncio

from serving.embedding import LocalEmbedder
from serving.rerank import LocalReranker
from tests.conftest import TINY_EMBED_NAME, TINY_RERANK_NAME
from tests.harness import NodeSetup, RunningNode, audit_records_by_request, node_setup, running_node

pytestmark = [pytest.mark.engine, pytest.mark.asyncio(loop_scope="session")]

DOCS = {
    "ward.md": b"The usual metoprolol dose for our ward is 50 mg twice daily.",
    "liver.md": b"Halve the metoprolol dose for patients with liver disease.",
    "billing.txt": b"Refunds go to account AC-7731/2 within five working days.",
    "drill.txt": b"Fire drill: assemble at gate B every first Monday.",
}


@dataclass
class Ctx:
    running: RunningNode
    setup: NodeSetup

    def client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=self.running.url + "/v1", api_key=self.setup.keys["acme"], max_retries=0
        )


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def ctx(
    tmp_path_factory: pytest.TempPathFactory, embed_engine: LocalEmbedder, rerank_engine: LocalReranker
) -> AsyncIterator[Ctx]:
    tmp = tmp_path_factory.mktemp("rerank-api")
    setup = node_setup(
        tmp,
        tenants={"acme": f'models = ["{TINY_EMBED_NAME}"]\nresidency = "local-only"'},
        extra=f"""
[context]
embedding_model = "{TINY_EMBED_NAME}"
reranker = "{TINY_RERANK_NAME}"
rerank_candidates = 4
""",
    )
    engines = {TINY_EMBED_NAME: embed_engine, TINY_RERANK_NAME: rerank_engine}
    async with running_node(setup, engines) as running:
        yield Ctx(running=running, setup=setup)


async def test_search_is_reranked_audited_and_the_ranker_is_honoured(ctx: Ctx) -> None:
    c = ctx.client()
    vs = await c.vector_stores.create(name="ward")
    for name, data in DOCS.items():
        f = await c.files.create(file=(name, data), purpose="assistants")
        sf = await c.vector_stores.files.create_and_poll(
            vector_store_id=vs.id, file_id=f.id, poll_interval_ms=50
        )
        assert sf.status == "completed", sf.last_error

    async def search(**ranking: object) -> list[float]:
        page = await c.vector_stores.search(
            vs.id, query="metoprolol dose", max_num_results=4, ranking_options=ranking or None
        )
        return [r.score async for r in page]

    reranked = await search()
    assert len(reranked) == 4 and reranked == sorted(reranked, reverse=True)
    assert all(0 < s < 1 for s in reranked)
    assert await search(ranker="auto") == reranked
    assert await search(ranker=TINY_RERANK_NAME) == reranked
    fused = await search(ranker="none")
    assert fused != reranked and max(fused) == pytest.approx(1.0)  # first in both rankings
    threshold = (reranked[1] + reranked[2]) / 2
    assert await search(score_threshold=threshold) == reranked[:2]
    assert await search(ranker="default-2024-11-15") == reranked  # OpenAI's dated name: the default
    with pytest.raises(openai.BadRequestError) as refused:
        await search(ranker="default-2099-01-01")
    assert refused.value.status_code == 400 and "ranking_options.ranker" in str(refused.value.body)

    records = await audit_records_by_request(ctx.setup)
    searches = [r for rs in records.values() for r in rs if r["type"] == "context.search"]
    with_rerank = [r["meta"] for r in searches if "fused_scores" in r["meta"]]
    plain = [r["meta"] for r in searches if "fused_scores" not in r["meta"]]
    # five reranked searches (default, auto, named, OpenAI's dated default, threshold), one fused
    # only; the refused one is a context.rejected record
    assert len(with_rerank) == 5 and len(plain) == 1
    first = with_rerank[0]
    assert [round(s, 6) for s in reranked] == first["scores"] and len(first["chunks"]) == 4
    assert sorted(first["fused_scores"], reverse=True) == [round(s, 6) for s in fused]
    assert all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(plain[0]["scores"], fused, strict=True))
    rejected = [r for rs in records.values() for r in rs if r["type"] == "context.rejected"]
    assert any(r["meta"]["http_status"] == 400 for r in rejected)
