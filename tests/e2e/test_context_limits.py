"""The context endpoints under the tenant's limits, and file batches across a restart: uvicorn on
127.0.0.1, the real tiny chat and embedding engines, the official ``openai`` client, the real audit log
read back decrypted.

Every ``/v1/files`` and ``/v1/vector_stores`` call is a request against ``rpm``; the embedding tokens
of a search query and of an ingestion are charged like ``/v1/embeddings``' (the same counters), and a
tenant over a limit gets the same 429 as on chat, recorded as ``context.rejected``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import openai
import pytest

from router.limits import Limiter
from serving.embedding import LocalEmbedder
from serving.engine import LocalEngine
from tests.conftest import TINY_EMBED_NAME
from tests.harness import TINY, NodeSetup, RunningNode, audit_records_by_request, node_setup, running_node

pytestmark = [pytest.mark.engine, pytest.mark.asyncio(loop_scope="session")]

EMBED = TINY_EMBED_NAME
MODELS = f'models = ["{TINY}", "{EMBED}"]\nresidency = "local-only"'
NOTE = b"Refunds go to account AC-7731/2 within five working days of the request."
QUERY = "Where do refunds go?"


def _setup(tmp_path: Path) -> NodeSetup:
    return node_setup(
        tmp_path,
        tenants={
            "acme": MODELS,
            "globex": MODELS,
            "tight": MODELS + "\nrpm = 2",
            "tiny": MODELS + "\ntokens_per_day = 1",
        },
        extra=f'[context]\nembedding_model = "{EMBED}"\n',
    )


def _client(running: RunningNode, setup: NodeSetup, tenant: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=running.url + "/v1", api_key=setup.keys[tenant], max_retries=0)


def _day_tokens(running: RunningNode, tenant: str) -> int:
    limits = running.state.router.limits
    assert isinstance(limits, Limiter)  # a single node counts in memory
    return limits.usage(tenant).day_tokens


async def _wait_until(predicate: Callable[[], bool], *, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def test_context_calls_count_against_rpm_and_embedding_tokens_against_the_budgets(
    tmp_path: Path, local_engine: LocalEngine, embed_engine: LocalEmbedder
) -> None:
    setup = _setup(tmp_path)
    async with running_node(setup, {TINY: local_engine, EMBED: embed_engine}) as running:
        # rpm = 2: any two context calls, then the same 429 as chat, with Retry-After
        tight = _client(running, setup, "tight")
        await tight.files.create(file=("note.txt", NOTE), purpose="assistants")
        await tight.vector_stores.list()
        with pytest.raises(openai.RateLimitError) as limited:
            await tight.files.list()
        assert limited.value.code == "rate_limit_exceeded"
        assert int(limited.value.response.headers["retry-after"]) > 0
        assert limited.value.response.json()["error"]["type"] == "rate_limit_error"
        refused_id = limited.value.response.headers["x-request-id"]

        # ingestion and search are charged the tokens the engine embedded, as /v1/embeddings is
        acme = _client(running, setup, "acme")
        f = await acme.files.create(file=("note.txt", NOTE), purpose="assistants")
        vs = await acme.vector_stores.create(name="billing")
        assert _day_tokens(running, "acme") == 0  # uploads and stores embed nothing of the tenant's
        sf = await acme.vector_stores.files.create_and_poll(
            vector_store_id=vs.id, file_id=f.id, poll_interval_ms=50
        )
        assert sf.status == "completed", sf.last_error
        globex = _client(running, setup, "globex")
        note = await globex.embeddings.create(model=EMBED, input=NOTE.decode(), encoding_format="float")
        assert _day_tokens(running, "acme") == note.usage.prompt_tokens > 0
        hits = [h async for h in await acme.vector_stores.search(vs.id, query=QUERY)]
        assert hits and hits[0].file_id == f.id
        query = await globex.embeddings.create(model=EMBED, input=QUERY, encoding_format="float")
        assert _day_tokens(running, "acme") == note.usage.prompt_tokens + query.usage.prompt_tokens

        # tokens_per_day = 1: the search that crosses it completes; the next search and attach are refused
        tiny = _client(running, setup, "tiny")
        tf = await tiny.files.create(file=("note.txt", NOTE), purpose="assistants")
        tvs = await tiny.vector_stores.create(name="mine")
        assert [h async for h in await tiny.vector_stores.search(tvs.id, query=QUERY)] == []
        assert _day_tokens(running, "tiny") == query.usage.prompt_tokens
        for refused in (
            tiny.vector_stores.search(tvs.id, query=QUERY),
            tiny.vector_stores.files.create(vector_store_id=tvs.id, file_id=tf.id),
            tiny.vector_stores.file_batches.create(vector_store_id=tvs.id, file_ids=[tf.id]),
        ):
            with pytest.raises(openai.RateLimitError) as spent:
                await refused  # type: ignore[misc]
            assert spent.value.code == "budget_exceeded"
            assert int(spent.value.response.headers["retry-after"]) > 0
        assert _day_tokens(running, "tiny") == query.usage.prompt_tokens  # nothing embedded since

    records = await audit_records_by_request(setup)
    (rejected,) = records[refused_id]
    assert rejected["type"] == "context.rejected" and rejected["tenant"] == "tight"
    meta = rejected["meta"]
    assert (meta["http_status"], meta["status"], meta["route_error"]) == (
        429,
        "rate_limit_exceeded",
        "rate-limit-rpm",
    )
    assert meta["operation"] == "list_files" and meta["path"] == "/v1/files"
    searches = [
        r for rs in records.values() for r in rs if r["type"] == "context.search" and r["tenant"] == "acme"
    ]
    assert [s["meta"]["embedding_tokens"] for s in searches] == [query.usage.prompt_tokens]
    budget = [
        r for rs in records.values() for r in rs if r["type"] == "context.rejected" and r["tenant"] == "tiny"
    ]
    assert [r["meta"]["status"] for r in budget] == ["budget_exceeded"] * 3


async def test_a_file_batch_outlives_the_node_and_stays_its_tenants(
    tmp_path: Path, local_engine: LocalEngine, embed_engine: LocalEmbedder
) -> None:
    setup = _setup(tmp_path)
    engines = {TINY: local_engine, EMBED: embed_engine}
    async with running_node(setup, engines) as first:
        acme = _client(first, setup, "acme")
        ids = [(await acme.files.create(file=(f"{n}.txt", NOTE), purpose="assistants")).id for n in range(2)]
        vs = await acme.vector_stores.create(name="billing")
        made = await acme.vector_stores.file_batches.create_and_poll(
            vector_store_id=vs.id, file_ids=ids, poll_interval_ms=50
        )
        assert made.status == "completed" and made.file_counts.completed == 2
    async with running_node(setup, engines) as second:  # a restart on the same data_dir
        acme = _client(second, setup, "acme")
        batch = await acme.vector_stores.file_batches.retrieve(made.id, vector_store_id=vs.id)
        assert (batch.id, batch.created_at, batch.status) == (made.id, made.created_at, "completed")
        assert batch.file_counts.completed == batch.file_counts.total == 2
        listed = [
            f.id async for f in acme.vector_stores.file_batches.list_files(made.id, vector_store_id=vs.id)
        ]
        assert sorted(listed) == sorted(ids)
        await acme.vector_stores.files.delete(ids[0], vector_store_id=vs.id)
        batch = await acme.vector_stores.file_batches.retrieve(made.id, vector_store_id=vs.id)
        assert batch.file_counts.total == 1  # counted from the store's files
        globex = _client(second, setup, "globex")
        own = await globex.vector_stores.create(name="mine")
        for attempt in (
            globex.vector_stores.file_batches.retrieve(made.id, vector_store_id=vs.id),
            globex.vector_stores.file_batches.retrieve(made.id, vector_store_id=own.id),
            globex.vector_stores.file_batches.list_files(made.id, vector_store_id=vs.id),
            globex.vector_stores.file_batches.cancel(made.id, vector_store_id=own.id),
        ):
            with pytest.raises(openai.NotFoundError):
                await attempt  # type: ignore[misc]
        await acme.vector_stores.delete(vs.id)
        with pytest.raises(openai.NotFoundError):
            await acme.vector_stores.file_batches.retrieve(made.id, vector_store_id=vs.id)
