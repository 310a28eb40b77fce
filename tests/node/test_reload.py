"""Reload: tenant, key, limit and route changes reach a running node without a restart; streams in
flight finish; a reload that fails validation changes nothing and says why; each writes config.loaded."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx

from node.admin import AdminClient, admin_socket_path
from node.keystore import KeyStore
from node.tenancy import create_key
from serving.engine import LocalEngine
from tests.e2e.test_routing_and_faults import _export
from tests.harness import TINY, NodeSetup, bearer, chat, node_setup, running_node

_NEW_TENANT = f"""
[[routes]]
alias = "chat"
local = "{TINY}"

[[tenants]]
name = "initech"
models = ["{TINY}", "chat"]
residency = "local-only"
rpm = 2
"""


def _reload(setup: NodeSetup) -> dict[str, Any]:
    return AdminClient(admin_socket_path(setup.config, setup.config_dir)).reload()


async def _models(http: httpx.AsyncClient, key: str) -> int:
    return (await http.get("/v1/models", headers=bearer(key))).status_code


async def test_a_reload_applies_tenants_keys_and_limits_while_a_stream_finishes(
    tmp_path: Path, local_engine: LocalEngine
) -> None:
    setup = node_setup(tmp_path)
    config_file = tmp_path / "node.toml"
    config_file.write_text(setup.toml)
    new = create_key()
    body = {
        "model": TINY,
        "messages": [{"role": "user", "content": "go on"}],
        "max_tokens": 1500,
        "min_tokens": 1500,
        "ignore_eos": True,
        "stream": True,
    }
    async with running_node(setup, {TINY: local_engine}, config_file=config_file) as node:
        async with httpx.AsyncClient(base_url=node.url, timeout=300) as http:
            config_file.write_text(setup.toml + _NEW_TENANT)
            KeyStore.in_data_dir(tmp_path / "data").add("initech", new, expires=None)
            assert await _models(http, new.key) == 401  # written, not yet reloaded
            async with http.stream(
                "POST", "/v1/chat/completions", headers=bearer(setup.keys["acme"]), json=body
            ) as stream:
                lines = stream.aiter_lines()
                first = await anext(lines)
                assert first.startswith("data: "), first
                reply = await asyncio.to_thread(_reload, setup)
                assert reply["reloaded"] is True, reply
                # the new tenant, its stored key, its route and its limit, while the stream still runs
                assert await _models(http, new.key) == 200
                await chat(http, new.key)
                routed = await http.post(
                    "/v1/chat/completions",
                    headers=bearer(new.key),
                    json={"model": "chat", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2},
                )
                assert routed.status_code == 200, routed.text
                assert routed.headers["x-bastion-route"] == "local"
                limited = await http.post(
                    "/v1/chat/completions",
                    headers=bearer(new.key),
                    json={"model": TINY, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2},
                )
                assert limited.status_code == 429, limited.text
                rest = [line async for line in lines if line]
            assert rest[-1] == "data: [DONE]"
            assert not any(line.startswith("event: error") for line in rest)
            deltas = [json.loads(line[6:]) for line in [first, *rest[:-1]] if line.startswith("data: ")]
            assert sum(1 for d in deltas if d["choices"] and d["choices"][0]["delta"].get("content")) > 100
    records = await _export(setup.config.audit)
    loaded = [r for r in records if r["type"] == "config.loaded"]
    assert [r["meta"]["reason"] for r in loaded] == ["start", "reload"]  # type: ignore[index]
    start, reloaded = (r["meta"] for r in loaded)
    assert isinstance(start, dict) and isinstance(reloaded, dict)
    assert start["config_sha256"] != reloaded["config_sha256"]
    assert reloaded["api_keys"]["initech"] == [new.key_id]
    assert new.key not in json.dumps(records)
    # the stream ended after the reload took effect: its request.end comes later in the chain
    long_end = [
        r
        for r in records
        if r["type"] == "request.end" and r["meta"]["completion_tokens"] == 1500  # type: ignore[index]
    ]
    assert len(long_end) == 1
    assert int(long_end[0]["seq"]) > int(loaded[1]["seq"])  # type: ignore[call-overload]


async def test_a_refused_reload_changes_nothing_and_says_why(
    tmp_path: Path, local_engine: LocalEngine
) -> None:
    setup = node_setup(tmp_path)
    config_file = tmp_path / "node.toml"
    config_file.write_text(setup.toml)
    store = KeyStore.in_data_dir(tmp_path / "data")
    stored = create_key()
    store.add("globex", stored, expires=None)
    async with running_node(setup, {TINY: local_engine}, config_file=config_file) as node:
        before = node.state.config
        async with httpx.AsyncClient(base_url=node.url, timeout=120) as http:
            assert await _models(http, stored.key) == 200
            # a misspelt model and a revocation: the whole reload is refused, the key still works
            config_file.write_text(setup.toml.replace(f'models = ["{TINY}"]', 'models = ["bastion-tiyn"]', 1))
            store.revoke(stored.key_id)
            reply = await asyncio.to_thread(_reload, setup)
            assert reply["reloaded"] is False
            assert any("names model 'bastion-tiyn'" in p and "bastion-tiny" in p for p in reply["problems"])
            assert node.state.config is before
            assert await _models(http, stored.key) == 200
            await chat(http, setup.keys["acme"])
            # a setting that takes a restart is refused by name
            config_file.write_text(setup.toml.replace("checkpoint_every_s = 0.5", "checkpoint_every_s = 2"))
            reply = await asyncio.to_thread(_reload, setup)
            assert reply["reloaded"] is False
            assert any(p.startswith("`audit` changed") for p in reply["problems"]), reply
            assert await _models(http, stored.key) == 200
            # put right, the same reload goes through and the revoked key stops working
            config_file.write_text(setup.toml)
            reply = await asyncio.to_thread(_reload, setup)
            assert reply["reloaded"] is True, reply
            assert await _models(http, stored.key) == 401
            assert await _models(http, setup.keys["globex"]) == 200
    records = await _export(setup.config.audit)
    reasons = [r["meta"]["reason"] for r in records if r["type"] == "config.loaded"]  # type: ignore[index]
    assert reasons == ["start", "reload"]  # refused reloads write nothing
