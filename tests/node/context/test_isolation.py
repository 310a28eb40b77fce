"""Property: no search ever returns another tenant's chunk, and another tenant's store is 404.

Hypothesis draws tenants, their stores and documents from one shared vocabulary
(so every query matches text of several tenants) and searches with every mode,
sometimes naming another tenant's store among the tenant's own. The backend
property runs with drawn vectors (many examples, fast); the service property
runs the real tiny embedding engine."""

from __future__ import annotations

import random
import struct
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.context import ChunkIn, ContextService, NotFoundError, SearchMode, SqliteBackend, StaticChunking

WORDS = ["alpha", "beta", "gamma", "delta", "ledger", "dose", "article", "DE-44-01", "erasure", "policy"]
TENANTS = ["acme", "globex", "initech"]
DIMS = 8

docs = st.lists(
    st.lists(st.sampled_from(WORDS), min_size=1, max_size=6).map(" ".join), min_size=1, max_size=3
)
stores = st.lists(docs, min_size=1, max_size=2)
worlds = st.dictionaries(st.sampled_from(TENANTS), stores, min_size=2, max_size=3)
queries = st.lists(st.sampled_from(WORDS), min_size=1, max_size=3).map(" ".join)
_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _vec(text: str) -> bytes:
    rng = random.Random(text)
    return struct.pack(f"<{DIMS}f", *(rng.uniform(-1, 1) for _ in range(DIMS)))


async def _build_backend(
    backend: SqliteBackend, world: dict[str, list[list[str]]]
) -> dict[str, dict[str, set[str]]]:
    """tenant -> store id -> its texts, written straight through the backend."""
    owned: dict[str, dict[str, set[str]]] = {}
    for tenant, its_stores in world.items():
        for texts in its_stores:
            store = await backend.create_store(
                tenant, name=None, metadata={}, embedding_model="m", dimensions=DIMS
            )
            for text in texts:
                f = await backend.put_file(
                    tenant, filename="d.txt", purpose="assistants", content=text.encode()
                )
                await backend.attach_file(tenant, store.id, f.id, attributes={}, chunking=StaticChunking())
                chunk = ChunkIn(index=0, text=text, start_token=0, end_token=1, vector=_vec(text))
                await backend.write_chunks(tenant, store.id, f.id, [chunk])
            owned.setdefault(tenant, {})[store.id] = set(texts)
    return owned


@_SETTINGS
@given(world=worlds, query=queries, data=st.data())
async def test_backend_rankings_never_cross_tenants(
    backend: SqliteBackend, world: dict[str, list[list[str]]], query: str, data: st.DataObject
) -> None:
    owned = await _build_backend(backend, world)
    for tenant, its in owned.items():
        for store_id in its:
            found = await backend.fulltext(tenant, store_id, query.split(), 50, None)
            found += await backend.nearest(tenant, store_id, _vec(query), 50, None)
            chunks = await backend.read_chunks(tenant, [(c.store_id, c.key) for c in found])
            assert chunks and all(c.store_id == store_id and c.text in its[store_id] for c in chunks)
        foreign = [s for t, theirs in owned.items() if t != tenant for s in theirs]
        target = data.draw(st.sampled_from(foreign))
        for call in (
            backend.fulltext(tenant, target, query.split(), 50, None),
            backend.nearest(tenant, target, _vec(query), 50, None),
            backend.read_chunks(tenant, [(target, 1)]),
        ):
            with pytest.raises(NotFoundError):
                await call


async def _build_service(
    service: ContextService, world: dict[str, list[list[str]]]
) -> dict[str, dict[str, set[str]]]:
    owned: dict[str, dict[str, set[str]]] = {}
    for tenant, its_stores in world.items():
        for texts in its_stores:
            store = await service.create_store(tenant)
            for text in texts:
                f = await service.upload_file(tenant, "d.txt", text.encode())
                await service.add_file(tenant, store.id, f.id)
            owned.setdefault(tenant, {})[store.id] = set(texts)
    return owned


def _all_texts(its: dict[str, set[str]], store_ids: Sequence[str]) -> set[str]:
    return set().union(*(its[s] for s in store_ids))


@pytest.mark.engine
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(world=worlds, query=queries, data=st.data())
async def test_search_never_returns_another_tenants_chunk(
    service: ContextService, world: dict[str, list[list[str]]], query: str, data: st.DataObject
) -> None:
    owned = await _build_service(service, world)
    for tenant, its in owned.items():
        mine = list(its)
        for mode in SearchMode:
            hits = await service.search(tenant, mine, query, max_num_results=50, mode=mode)
            assert all(h.chunk.store_id in its and h.chunk.text in _all_texts(its, mine) for h in hits)
            if mode is not SearchMode.FULLTEXT:
                assert hits  # vectors rank every chunk: the tenant's own are there, and only they
        foreign = [s for t, theirs in owned.items() if t != tenant for s in theirs]
        mixed = [*mine, data.draw(st.sampled_from(foreign))]
        with pytest.raises(NotFoundError):
            await service.search(tenant, data.draw(st.permutations(mixed)), query)
