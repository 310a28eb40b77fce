"""``POST /v1/feedback`` on a real node (tiny model, real audit log, HTTP on 127.0.0.1)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from node.feedback import FeedbackRequest, FeedbackStore, submit_feedback
from node.state import NodeState
from serving.errors import FeedbackExistsError
from serving.protocol import Provider
from tests.harness import TINY, bearer, chat, node_setup, running_node

pytestmark = pytest.mark.engine


def _feedback_count(state: NodeState, model: str, rating: str) -> float:
    value = state.metrics.registry.get_sample_value(
        "bastion_feedback_total", {"model": model, "rating": rating}
    )
    return value or 0.0


# -- tests -------------------------------------------------------------------------------------------------


async def test_own_request_is_rated_and_recorded_in_the_audit_log(
    tmp_path: Path, local_engine: Provider
) -> None:
    setup = node_setup(tmp_path)
    async with (
        running_node(setup, {TINY: local_engine}) as node,
        httpx.AsyncClient(base_url=node.url) as client,
    ):
        request_id = await chat(client, setup.keys["acme"])
        r = await client.post(
            "/v1/feedback",
            headers=bearer(setup.keys["acme"]),
            json={"request_id": request_id, "rating": 1, "comment": "useful"},
        )
        assert r.status_code == 201, r.text
        assert r.json() == {"object": "feedback", "request_id": request_id, "rating": 1}
        assert node.state.audit is not None
        hits = await node.state.audit.find(request_id=request_id, tenant="acme")
        assert [h.type for h in hits].count("feedback") == 1
        # counted under the model when build_node keeps the request index, else under "other"
        label = TINY if node.state.feedback is not None else "other"
        assert _feedback_count(node.state, label, "1") == 1

        again = await client.post(
            "/v1/feedback", headers=bearer(setup.keys["acme"]), json={"request_id": request_id, "rating": -1}
        )
        assert again.status_code == 409
        assert again.json()["error"]["code"] == "feedback_exists"
        assert _feedback_count(node.state, label, "-1") == 0


async def test_concurrent_ratings_of_one_request_count_once(tmp_path: Path, local_engine: Provider) -> None:
    setup = node_setup(tmp_path)
    async with (
        running_node(setup, {TINY: local_engine}) as node,
        httpx.AsyncClient(base_url=node.url) as client,
    ):
        request_id = await chat(client, setup.keys["acme"])
        # Eight ratings started in one loop turn: every duplicate check runs before any append.
        body = FeedbackRequest(request_id=request_id, rating=1)
        results = await asyncio.gather(
            *(submit_feedback(node.state, "acme", body) for _ in range(8)), return_exceptions=True
        )
        assert sum(isinstance(r, dict) for r in results) == 1
        assert all(isinstance(r, FeedbackExistsError) for r in results if not isinstance(r, dict))
        assert node.state.audit is not None
        hits = await node.state.audit.find(request_id=request_id, tenant="acme")
        assert [h.type for h in hits].count("feedback") == 1
        assert _feedback_count(node.state, TINY, "1") == 1


async def test_another_tenants_request_is_404_like_an_unknown_id(
    tmp_path: Path, local_engine: Provider
) -> None:
    setup = node_setup(tmp_path)
    async with (
        running_node(setup, {TINY: local_engine}) as node,
        httpx.AsyncClient(base_url=node.url) as client,
    ):
        request_id = await chat(client, setup.keys["acme"])
        theirs = await client.post(
            "/v1/feedback",
            headers=bearer(setup.keys["globex"]),
            json={"request_id": request_id, "rating": -1},
        )
        unknown = await client.post(
            "/v1/feedback",
            headers=bearer(setup.keys["globex"]),
            json={"request_id": "chatcmpl-0123456789abcdef", "rating": -1},
        )
        assert theirs.status_code == unknown.status_code == 404
        # the same body for both: nothing says the id exists for someone else
        assert theirs.json()["error"]["code"] == unknown.json()["error"]["code"] == "request_not_found"
        assert node.state.audit is not None
        assert [h.type for h in await node.state.audit.find(request_id=request_id, tenant="globex")] == []
        assert "feedback" not in [
            h.type for h in await node.state.audit.find(request_id=request_id, tenant="acme")
        ]
        # the owner can still rate it
        mine = await client.post(
            "/v1/feedback", headers=bearer(setup.keys["acme"]), json={"request_id": request_id, "rating": 0}
        )
        assert mine.status_code == 201


@pytest.mark.parametrize(
    "body",
    [
        {"request_id": "chatcmpl-x", "rating": 5},
        {"request_id": "chatcmpl-x", "rating": "good"},
        {"request_id": "chatcmpl-x", "rating": True},
        {"request_id": "chatcmpl-x"},
        {"request_id": "", "rating": 1},
        {"request_id": "chatcmpl-x", "rating": 1, "comment": "x" * 2001},
        {"request_id": "chatcmpl-x", "rating": 1, "stars": 3},
    ],
)
async def test_bad_bodies_are_400(tmp_path: Path, local_engine: Provider, body: dict[str, object]) -> None:
    setup = node_setup(tmp_path, audit=False)
    async with (
        running_node(setup, {TINY: local_engine}) as node,
        httpx.AsyncClient(base_url=node.url) as client,
    ):
        r = await client.post("/v1/feedback", headers=bearer(setup.keys["acme"]), json=body)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["type"] == "invalid_request_error"
        not_json = await client.post("/v1/feedback", headers=bearer(setup.keys["acme"]), content=b"{")
        assert not_json.status_code == 400


async def test_unauthenticated_is_401(tmp_path: Path, local_engine: Provider) -> None:
    setup = node_setup(tmp_path, audit=False)
    async with (
        running_node(setup, {TINY: local_engine}) as node,
        httpx.AsyncClient(base_url=node.url) as client,
    ):
        body = {"request_id": "chatcmpl-x", "rating": 1}
        assert (await client.post("/v1/feedback", json=body)).status_code == 401
        wrong = await client.post("/v1/feedback", headers=bearer("bst_deadbeef_nope"), json=body)
        assert wrong.status_code == 401
        # with the audit log off there is nowhere to store feedback: 503, not a silent drop
        off = await client.post("/v1/feedback", headers=bearer(setup.keys["acme"]), json=body)
        assert off.status_code == 503
        assert off.json()["error"]["code"] == "feedback_unavailable"


async def test_the_request_index_labels_feedback_by_model(tmp_path: Path, local_engine: Provider) -> None:
    """With the index attached (as build_node does), counts carry the model that served the request."""
    setup = node_setup(tmp_path)
    async with (
        running_node(setup, {TINY: local_engine}) as node,
        httpx.AsyncClient(base_url=node.url) as client,
    ):
        store = node.state.feedback
        opened = None
        if store is None:  # build_node does not open it (yet): attach one as it would
            opened = store = await FeedbackStore.open(tmp_path / "data" / "feedback.db")
            node.state.feedback = store
        try:
            request_id = await chat(client, setup.keys["acme"])
            if await store.alias_of(tenant="acme", request_id=request_id) is None:
                # the recorder hook is not wired (yet): record as it would on forwarding
                await store.remember(tenant="acme", request_id=request_id, alias=TINY)
            r = await client.post(
                "/v1/feedback",
                headers=bearer(setup.keys["acme"]),
                json={"request_id": request_id, "rating": -1},
            )
            assert r.status_code == 201
            assert _feedback_count(node.state, TINY, "-1") == 1
            assert _feedback_count(node.state, "other", "-1") == 0
        finally:
            if opened is not None:
                await opened.aclose()


async def test_feedback_store_survives_reopen_and_keys_by_tenant(tmp_path: Path) -> None:
    path = tmp_path / "data" / "feedback.db"
    async with await FeedbackStore.open(path) as store:
        await store.remember(tenant="acme", request_id="chatcmpl-1", alias=TINY)
        await store.remember(tenant="acme", request_id="chatcmpl-1", alias="changed")  # first write wins
    async with await FeedbackStore.open(path) as store:
        assert await store.alias_of(tenant="acme", request_id="chatcmpl-1") == TINY
        assert await store.alias_of(tenant="globex", request_id="chatcmpl-1") is None
        assert await store.alias_of(tenant="acme", request_id="chatcmpl-2") is None
    raw = path.read_bytes() + (tmp_path / "data" / "feedback.db-wal").read_bytes() if (
        tmp_path / "data" / "feedback.db-wal").exists() else path.read_bytes()  # fmt: skip
    # neither the tenant nor the request id is stored in the open
    assert b"chatcmpl-1" not in raw and b"acme" not in raw
    assert (path.with_name("feedback.db.key").stat().st_mode & 0o777) == 0o600
