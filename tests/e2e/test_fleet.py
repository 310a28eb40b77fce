"""Two nodes behind one load balancer share a tenant's limits through a real PostgreSQL server.

Both nodes run the same ``node.toml`` (``[state] postgres_url_env``) on the real
tiny engine, each under its own uvicorn on 127.0.0.1; requests alternate between
them as a round-robin balancer would send them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import msgspec
import psycopg
import pytest

from node.config import NodeConfig
from router.pg_limits import PgLimits
from serving.engine import LocalEngine
from serving.protocol import Delta, GenerationRequest, Health, ProviderInfo
from tests.harness import TINY, NodeSetup, bearer, chat, node_setup, running_node
from tests.postgres import PostgresServer

pytestmark = pytest.mark.engine

BODY = {"model": TINY, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}


class Counting:
    """The real engine, counting the requests that reach it."""

    def __init__(self, engine: LocalEngine) -> None:
        self.engine = engine
        self.calls = 0

    def describe(self) -> ProviderInfo:
        return self.engine.describe()

    async def health(self) -> Health:
        return await self.engine.health()

    def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        self.calls += 1
        return self.engine.stream(request)


def _fleet_setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_url: str, limits: str) -> NodeSetup:
    monkeypatch.setenv("BASTION_PG_URL", pg_url)
    return node_setup(
        tmp_path,
        audit=False,
        tenants={"acme": f'models = ["{TINY}"]\nresidency = "local-only"\n{limits}'},
        extra='[state]\npostgres_url_env = "BASTION_PG_URL"\ntimeout_s = 1.0\n',
    )


async def test_eleventh_request_in_the_minute_is_refused_by_whichever_node_gets_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_url: str, local_engine: LocalEngine
) -> None:
    setup = _fleet_setup(tmp_path, monkeypatch, pg_url, "rpm = 10")
    engine = Counting(local_engine)
    # 12:00:05 UTC for both nodes: the minute cannot turn over between the requests
    frozen = dt.datetime(2026, 3, 31, 12, 0, 5, tzinfo=dt.UTC).timestamp()
    async with AsyncExitStack() as stack:
        nodes = []
        for _ in range(2):
            limits = await stack.enter_async_context(PgLimits.open(pg_url, wall_clock=lambda: frozen))
            node = await stack.enter_async_context(running_node(setup, {TINY: engine}, limits=limits))
            nodes.append(await stack.enter_async_context(httpx.AsyncClient(base_url=node.url, timeout=60)))
        key = bearer(setup.keys["acme"])
        statuses = [
            (await nodes[i % 2].post("/v1/chat/completions", headers=key, json=BODY)).status_code
            for i in range(10)
        ]
        assert statuses == [200] * 10
        refused = await nodes[10 % 2].post("/v1/chat/completions", headers=key, json=BODY)
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert "10 requests per minute" in refused.json()["error"]["message"]
        assert refused.headers["retry-after"] == "55"
        assert (await nodes[1].post("/v1/chat/completions", headers=key, json=BODY)).status_code == 429
        assert engine.calls == 10


async def _charged_tokens(pg_url: str, tenant: str) -> float:
    """Wait until the nodes' charge writers have stored ``tenant``'s tokens for today."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        while True:
            cur = await conn.execute(
                "SELECT coalesce(sum(value), 0) FROM bastion_usage WHERE tenant = %s AND kind = 'day_tokens'",
                (tenant,),
            )
            row = await cur.fetchone()
            assert row is not None
            if row[0] > 0:
                return float(row[0])
            assert loop.time() < deadline, "no node wrote the tokens it charged"
            await asyncio.sleep(0.02)


async def test_a_day_budget_spent_on_one_node_is_spent_on_the_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_url: str, local_engine: LocalEngine
) -> None:
    setup = _fleet_setup(tmp_path, monkeypatch, pg_url, "tokens_per_day = 5")
    engine = Counting(local_engine)
    key = bearer(setup.keys["acme"])
    async with (
        running_node(setup, {TINY: engine}) as a,
        running_node(setup, {TINY: engine}) as b,
        httpx.AsyncClient(base_url=a.url, timeout=60) as node_a,
        httpx.AsyncClient(base_url=b.url, timeout=60) as node_b,
    ):
        first = await node_a.post("/v1/chat/completions", headers=key, json=BODY)
        assert first.status_code == 200, first.text
        usage = first.json()["usage"]
        assert await _charged_tokens(pg_url, "acme") == usage["prompt_tokens"] + usage["completion_tokens"]
        refused = await node_b.post("/v1/chat/completions", headers=key, json=BODY)
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "budget_exceeded"
        assert engine.calls == 1


async def test_limits_fail_closed_when_postgres_is_down(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    pg_url: str,
    postgres: PostgresServer,
    local_engine: LocalEngine,
) -> None:
    setup = _fleet_setup(tmp_path, monkeypatch, pg_url, "rpm = 100")
    engine = Counting(local_engine)
    key = bearer(setup.keys["acme"])
    async with (
        running_node(setup, {TINY: engine}) as a,
        httpx.AsyncClient(base_url=a.url, timeout=60) as http,
    ):
        assert (await http.post("/v1/chat/completions", headers=key, json=BODY)).status_code == 200
        postgres.stop()
        try:
            for stream in (False, True):
                r = await http.post("/v1/chat/completions", headers=key, json={**BODY, "stream": stream})
                assert r.status_code == 503, r.text
                error = r.json()["error"]
                assert error["code"] == "state_unavailable"
                assert "refused and not forwarded" in error["message"]
                assert postgres.password not in r.text
                assert r.headers["retry-after"]
            assert engine.calls == 1  # nothing reached the engine while the state was unknown
        finally:
            postgres.start()
        assert (await http.post("/v1/chat/completions", headers=key, json=BODY)).status_code == 200


def _two_audited_nodes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_url: str
) -> tuple[NodeSetup, NodeSetup]:
    """Two nodes with one node.toml but each its own audit log, KEK and signing key."""
    monkeypatch.setenv("BASTION_PG_URL", pg_url)
    dirs = [tmp_path / "a", tmp_path / "b"]
    for d in dirs:
        d.mkdir(mode=0o700)
    state = '[state]\npostgres_url_env = "BASTION_PG_URL"\ntimeout_s = 1.0\n'
    a = node_setup(dirs[0], audit=True, extra=state)
    own = node_setup(dirs[1], audit=True, extra=state).config
    mine = {"audit": msgspec.to_builtins(own.audit), "data_dir": own.data_dir}
    config_b = msgspec.convert(msgspec.to_builtins(a.config) | mine, NodeConfig)
    return a, NodeSetup(config=config_b, config_dir=dirs[1], keys=a.keys)


async def test_a_request_served_by_one_node_is_rated_once_through_any_node(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    pg_url: str,
    postgres: PostgresServer,
    local_engine: LocalEngine,
) -> None:
    setup_a, setup_b = _two_audited_nodes(tmp_path, monkeypatch, pg_url)
    acme, globex = bearer(setup_a.keys["acme"]), bearer(setup_a.keys["globex"])
    async with (
        running_node(setup_a, {TINY: local_engine}) as a,
        running_node(setup_b, {TINY: local_engine}) as b,
        httpx.AsyncClient(base_url=a.url, timeout=60) as node_a,
        httpx.AsyncClient(base_url=b.url, timeout=60) as node_b,
    ):
        request_id = await chat(node_a, setup_a.keys["acme"])
        rating = {"request_id": request_id, "rating": 1}
        other = await node_b.post("/v1/feedback", headers=globex, json=rating)
        assert other.status_code == 404, other.text  # another tenant's request: not revealed
        first = await node_b.post("/v1/feedback", headers=acme, json=rating)
        assert first.status_code == 201, first.text
        for node in (node_a, node_b):  # one rating per request, whichever node is asked
            again = await node.post("/v1/feedback", headers=acme, json=rating)
            assert again.status_code == 409, again.text
            assert again.json()["error"]["code"] == "feedback_exists"
        assert b.state.audit is not None
        hits = await b.state.audit.find(request_id=request_id, tenant="acme")
        assert [h.type for h in hits] == ["feedback"]  # recorded in the log of the node that took it

        unrated = await chat(node_a, setup_a.keys["acme"])
        postgres.stop()
        try:
            refused = await node_b.post(
                "/v1/feedback", headers=acme, json={"request_id": unrated, "rating": -1}
            )
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "feedback_unavailable"
        finally:
            postgres.start()
        # the pool reconnects with backoff (psycopg_pool): ratings are refused, never taken unchecked,
        # until it is back; then the rating the outage refused goes through
        deadline = time.monotonic() + 30
        while True:
            late = await node_b.post("/v1/feedback", headers=acme, json={"request_id": unrated, "rating": -1})
            if late.status_code != 503 or time.monotonic() > deadline:
                break
            assert late.json()["error"]["code"] == "feedback_unavailable"
            await asyncio.sleep(0.2)
        assert late.status_code == 201, late.text
