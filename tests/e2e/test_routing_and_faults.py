"""Faults through the whole node: engine down, mid-stream failure, audit unavailable, residency.

External APIs are a fake upstream on 127.0.0.1 (real HTTP and SSE). The local
engine's faults come from real alternative providers passed to ``build_node``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from serving.engine import LocalEngine
from serving.errors import EngineUnavailableError
from serving.protocol import Delta, GenerationRequest, Health, ProviderInfo
from tests.fakes.upstream import FakeUpstream, Reply
from tests.harness import TINY, bearer, node_setup, running_node

pytestmark = pytest.mark.engine

FAKE_MODEL = "fake-model-2024-08-06"


class DownEngine:
    """A local engine whose forward-pass probe failed: reports dead, refuses work."""

    def __init__(self) -> None:
        self.calls = 0

    def describe(self) -> ProviderInfo:
        return ProviderInfo(name=TINY, kind="local", region="local", models=(TINY,))

    async def health(self) -> Health:
        return Health(healthy=False, detail="dead: engine process exited")

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        self.calls += 1
        raise EngineUnavailableError("engine dead", retry_after_s=5.0)
        yield Delta()  # pragma: no cover


class DiesMidStream(DownEngine):
    """Healthy until it has produced one token, then the engine dies."""

    async def health(self) -> Health:
        return Health(healthy=True, detail="ready")

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        self.calls += 1
        yield Delta(text="first", prompt_tokens=3, completion_tokens=1)
        raise EngineUnavailableError("engine died mid-stream")


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


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeUpstream]:
    monkeypatch.setenv("FAKE_UPSTREAM_KEY", "sk-fake-secret-123")
    with FakeUpstream() as upstream:
        yield upstream


def _routed_setup(tmp_path: Path, fake: FakeUpstream, *, audit: bool = True):  # type: ignore[no-untyped-def]
    return node_setup(
        tmp_path,
        audit=audit,
        tenants={
            "hospital": 'models = ["chat"]\nresidency = "local-only"',
            "marketing": 'models = ["chat"]\nresidency = ["eu-west"]\nredact = true\nrestore_pii = true',
        },
        extra=f"""
[[providers]]
name = "fake"
kind = "openai"
base_url = "{fake.openai_base}"
region = "eu-west"
api_key_env = "FAKE_UPSTREAM_KEY"
[providers.models."{FAKE_MODEL}"]
input_per_mtok = 1.0
output_per_mtok = 2.0

[[routes]]
alias = "chat"
local = "{TINY}"
fallbacks = [{{ provider = "fake", model = "{FAKE_MODEL}" }}]
ttft_budget_ms = 2000
""",
    )


async def test_engine_down_local_only_gets_503_and_nothing_leaves(tmp_path: Path, fake: FakeUpstream) -> None:
    setup = _routed_setup(tmp_path, fake)
    down = DownEngine()
    async with (
        running_node(setup, {TINY: down}) as node,
        httpx.AsyncClient(base_url=node.url, timeout=30) as http,
    ):
        body = {"model": "chat", "messages": [{"role": "user", "content": "patient 4711 has a fever"}]}
        for stream in (False, True):
            r = await http.post(
                "/v1/chat/completions",
                headers=bearer(setup.keys["hospital"]),
                json={**body, "stream": stream},
            )
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"]
            assert r.headers["x-bastion-route-reason"]
            assert r.json()["error"]["type"] == "server_error"
        # an external-allowed tenant tightening its own residency with the header stays local too
        r = await http.post(
            "/v1/chat/completions",
            json=body,
            headers={**bearer(setup.keys["marketing"]), "x-bastion-residency": "local-only"},
        )
        assert r.status_code == 503
        ready = await http.get("/readyz")
        assert ready.status_code == 503
    assert fake.requests == []


async def test_engine_down_external_tenant_fails_over_redacted(tmp_path: Path, fake: FakeUpstream) -> None:
    setup = _routed_setup(tmp_path, fake)
    fake.script(Reply(echo=True))
    secret = "write to jane.doe@example.com or call +1 650 253 0000"
    async with running_node(setup, {TINY: DownEngine()}) as node:
        client = openai.AsyncOpenAI(base_url=node.url + "/v1", api_key=setup.keys["marketing"], max_retries=0)
        raw = await client.chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": secret}]
        )
        reply = raw.parse()
        assert raw.headers["x-bastion-route"] == "external:fake"
        assert raw.headers["x-bastion-route-reason"] == "local-unhealthy"
        # restored for the client...
        assert "jane.doe@example.com" in (reply.choices[0].message.content or "")
        audit = node.state.audit
        assert audit is not None
        types = sorted(h.type for h in await audit.find(request_id=reply.id, tenant="marketing"))
        assert types == ["request.end", "request.start"]
    # ...but the upstream only ever saw placeholders, and never our tenants' keys
    (sent,) = fake.requests
    assert "jane.doe@example.com" not in sent.body.decode()
    assert "650 253 0000" not in sent.body.decode()
    assert sent.headers["authorization"] == "Bearer sk-fake-secret-123"
    assert setup.keys["marketing"] not in sent.body.decode()


async def test_failure_after_the_first_token_is_an_error_event(tmp_path: Path, fake: FakeUpstream) -> None:
    setup = _routed_setup(tmp_path, fake)
    async with running_node(setup, {TINY: DiesMidStream()}) as node:
        client = openai.AsyncOpenAI(base_url=node.url + "/v1", api_key=setup.keys["hospital"], max_retries=0)
        got: list[str] = []
        with pytest.raises(openai.APIError) as err:
            async for chunk in await client.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "x"}], stream=True
            ):
                got.extend(c.delta.content or "" for c in chunk.choices)
        assert "first" in "".join(got)
        assert err.value.body is not None
        assert err.value.body["code"] == "engine_unavailable"  # type: ignore[index]
        # What a parser that ignores `event:` lines sees: the error object last, no clean `[DONE]` end.
        async with (
            httpx.AsyncClient(base_url=node.url, timeout=30) as http,
            http.stream(
                "POST",
                "/v1/chat/completions",
                headers=bearer(setup.keys["hospital"]),
                json={"model": "chat", "messages": [{"role": "user", "content": "x"}], "stream": True},
            ) as response,
        ):
            raw = b"".join([part async for part in response.aiter_bytes()])
        events = [e for e in raw.split(b"\n\n") if e]
        data = [line[6:] for e in events for line in e.split(b"\n") if line.startswith(b"data: ")]
        assert b"[DONE]" not in data
        assert json.loads(data[-1])["error"]["code"] == "engine_unavailable"
        assert events[-1].startswith(b"event: error\n")
    assert fake.requests == []  # the stream had started: no failover to external after a token


@pytest.mark.parametrize("fault", ["log closed", "write process killed"])
async def test_audit_unavailable_fails_closed(tmp_path: Path, local_engine: LocalEngine, fault: str) -> None:
    setup = node_setup(tmp_path)
    counting = Counting(local_engine)
    async with (
        running_node(setup, {TINY: counting}) as node,
        httpx.AsyncClient(base_url=node.url, timeout=30) as http,
    ):
        body = {"model": TINY, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
        ok = await http.post("/v1/chat/completions", headers=bearer(setup.keys["acme"]), json=body)
        assert ok.status_code == 200
        assert counting.calls == 1
        audit = node.state.audit
        assert audit is not None
        assert (await http.get("/readyz")).status_code == 200
        if fault == "log closed":
            await audit.aclose()  # the writer is gone: nothing may be forwarded any more
        else:
            (writer,) = [
                int(p.name)
                for p in Path("/proc").iterdir()
                if p.name.isdigit() and b"audit.dbproc" in _read(p / "cmdline") and _ppid(p) == os.getpid()
            ]
            os.kill(writer, signal.SIGKILL)
        r = await http.post("/v1/chat/completions", headers=bearer(setup.keys["acme"]), json=body)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "audit_unavailable"
        assert r.headers["retry-after"]
        assert counting.calls == 1  # nothing forwarded without its first record
        # and the node says so, so a load balancer takes it out of rotation
        ready = await http.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["error"]["code"] == "audit_unavailable"
        assert ready.json()["audit"] == {"enabled": True, "accepting": False}


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _ppid(proc_dir: Path) -> int:
    stat = _read(proc_dir / "stat").decode()
    return int(stat.rsplit(")", 1)[1].split()[1]) if stat else -1


async def _export(setup_audit: object) -> list[dict[str, object]]:
    import contextlib
    import io

    from audit.cli import run_audit_command
    from node.cli import build_parser

    args = build_parser().parse_args(["audit", "export", "--decrypt"])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = await asyncio.to_thread(run_audit_command, args, setup_audit)  # type: ignore[arg-type]
    assert code == 0
    return [json.loads(line) for line in out.getvalue().splitlines() if line]


async def test_export_has_one_start_and_one_end_per_request(
    tmp_path: Path, local_engine: LocalEngine
) -> None:
    setup = node_setup(tmp_path)
    key = setup.keys["acme"]
    ids: dict[str, tuple[str, int]] = {}
    async with (
        running_node(setup, {TINY: local_engine}) as node,
        httpx.AsyncClient(base_url=node.url, timeout=60) as http,
    ):
        ok = await http.post(
            "/v1/chat/completions",
            headers=bearer(key),
            json={
                "model": TINY,
                "messages": [{"role": "user", "content": "a"}],
                "max_tokens": 3,
                "user": "patient-17",
            },
        )
        ids["ok"] = (ok.json()["id"], ok.json()["usage"]["completion_tokens"])
        async with http.stream(
            "POST",
            "/v1/completions",
            headers=bearer(key),
            json={
                "model": TINY,
                "prompt": "b",
                "max_tokens": 5,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        ) as s:
            text = "".join([chunk async for chunk in s.aiter_text()])
            ids["stream"] = (s.headers["x-request-id"], 5 if '"completion_tokens":5' in text else -1)
        failed = await http.post(
            "/v1/chat/completions",
            headers=bearer(key),
            json={"model": TINY, "messages": [{"role": "user", "content": "w " * 2500}]},
        )
        assert failed.status_code == 400
        ids["failed"] = (failed.headers["x-request-id"], 0)
        async with http.stream(
            "POST",
            "/v1/completions",
            headers=bearer(key),
            json={
                "model": TINY,
                "prompt": "c",
                "max_tokens": 1500,
                "min_tokens": 1500,
                "ignore_eos": True,
                "stream": True,
            },
        ) as s:
            ids["cancelled"] = (s.headers["x-request-id"], -1)
            async for _ in s.aiter_bytes():
                break
        audit = node.state.audit
        assert audit is not None
        deadline = time.monotonic() + 15
        while len(await audit.find(request_id=ids["cancelled"][0], tenant="acme")) < 2:
            assert time.monotonic() < deadline, "the cancelled request's end record never came"
            await asyncio.sleep(0.02)
    assert setup.config.audit is not None
    records = await _export(setup.config.audit)
    by_request: dict[str, list[dict[str, object]]] = {}
    for rec in records:
        meta = rec.get("meta")
        if isinstance(meta, dict) and "request_id" in meta:
            by_request.setdefault(str(meta["request_id"]), []).append(rec)
    for label, (request_id, tokens) in ids.items():
        recs = by_request[request_id]
        assert sorted(str(r["type"]) for r in recs) == ["request.end", "request.start"], label
        end = next(r for r in recs if r["type"] == "request.end")
        meta = end["meta"]
        assert isinstance(meta, dict)
        assert end["tenant"] == "acme"
        assert meta["alias"] == TINY and meta["route"] == "local"
        if tokens >= 0:
            assert meta["completion_tokens"] == tokens, label
    statuses = {
        label: next(r for r in by_request[rid] if r["type"] == "request.end")["meta"]["status"]  # type: ignore[index]
        for label, (rid, _) in ids.items()
    }
    assert statuses == {
        "ok": "ok",
        "stream": "ok",
        "failed": "context_length_exceeded",
        "cancelled": "cancelled",
    }
    # the prompt is in the record, encrypted: it decrypts, and the data subject is only an HMAC
    start = next(r for r in by_request[ids["ok"][0]] if r["type"] == "request.start")
    assert start["subject_h"] and "patient-17" not in str(start["subject_h"])
    raw = (tmp_path / "audit.db").read_bytes()
    assert b"patient-17" not in raw
    # start-up and key events: the config's API key ids (never the keys), and each data key made
    (loaded,) = [r for r in records if r["type"] == "config.loaded"]
    loaded_meta = loaded["meta"]
    assert isinstance(loaded_meta, dict)
    assert loaded_meta["api_keys"] == {t.name: sorted(k.id for k in t.keys) for t in setup.config.tenants}
    assert key not in json.dumps(records)
    created = [r for r in records if r["type"] == "key.created"]
    used = {r["kid"] for r in records} | {r["ckid"] for r in records if r.get("ckid")}
    assert {c["meta"]["kid"] for c in created} == used  # type: ignore[index]


async def test_daily_token_budget_survives_a_node_restart(tmp_path: Path, local_engine: LocalEngine) -> None:
    setup = node_setup(
        tmp_path,
        tenants={"acme": f'models = ["{TINY}"]\nresidency = "local-only"\ntokens_per_day = 1'},
        audit=False,
        data_dir=tmp_path / "data",
    )
    body = {"model": TINY, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    headers = bearer(setup.keys["acme"])
    async with (
        running_node(setup, {TINY: local_engine}) as node,
        httpx.AsyncClient(base_url=node.url) as http,
    ):
        first = await http.post("/v1/chat/completions", headers=headers, json=body)
        assert first.status_code == 200  # the request that crosses the line completes
        second = await http.post("/v1/chat/completions", headers=headers, json=body)
        assert second.status_code == 429 and second.json()["error"]["code"] == "budget_exceeded"
    # a new node process on the same data folder: today's tokens are still spent
    async with (
        running_node(setup, {TINY: local_engine}) as node,
        httpx.AsyncClient(base_url=node.url) as http,
    ):
        again = await http.post("/v1/chat/completions", headers=headers, json=body)
        assert again.status_code == 429 and again.json()["error"]["code"] == "budget_exceeded"
        assert int(again.headers["retry-after"]) > 0
