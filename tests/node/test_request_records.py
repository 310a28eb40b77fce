"""Every authenticated request leaves its audit records, read back from the real log.

A request that was authenticated ends with ``request.start`` + ``request.end``,
or with ``request.rejected``: whatever refused it (a body that does not decode,
an integer out of range, an oversized body), and however the log refused the
start record. The provider is the fake upstream (real HTTP on 127.0.0.1), so
"nothing was forwarded" is what it received.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from audit import AuditEvent, AuditLog, AuditUnavailableError
from tests.fakes.upstream import FakeUpstream
from tests.harness import NodeSetup, audit_records_by_request, bearer, node_setup, running_node

FAKE_MODEL = "fake-model-2024-08-06"
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeUpstream]:
    monkeypatch.setenv("FAKE_UPSTREAM_KEY", "sk-fake-secret-123")
    with FakeUpstream() as upstream:
        yield upstream


def _setup(tmp_path: Path, fake: FakeUpstream) -> NodeSetup:
    """One tenant whose alias ``chat`` is served by the fake upstream only (no engine needed)."""
    return node_setup(
        tmp_path,
        tenants={"acme": 'models = ["chat"]\nresidency = ["eu-west"]'},
        extra=f"""
[server]
max_body_bytes = 4096

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
fallbacks = [{{ provider = "fake", model = "{FAKE_MODEL}" }}]
""",
    )


def _chat(**fields: object) -> bytes:
    body: dict[str, object] = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
    return json.dumps(body | fields).encode()


#: (body, expected status, the ``param`` the error names or None)
MALFORMED: list[tuple[str, bytes, int, str | None]] = [
    ("seed of 2^64", _chat(seed=2**64), 400, "seed"),
    ("seed below -2^63", _chat(seed=INT64_MIN - 1), 400, "seed"),
    ("seed of 10^30", _chat(seed=10**30), 400, "seed"),
    ("max_tokens of 2^64", _chat(max_tokens=2**64), 400, "max_tokens"),
    ("max_completion_tokens of 2^70", _chat(max_completion_tokens=2**70), 400, "max_completion_tokens"),
    ("min_tokens of 2^64", _chat(min_tokens=2**64), 400, "min_tokens"),
    ("n of 2^64", _chat(n=2**64), 400, "n"),
    ("invalid JSON", b'{"model": "chat", "messages": [', 400, None),
    ("empty body", b"", 400, None),
    ("wrong type", _chat(messages="hi"), 400, "messages"),
    ("unknown field", _chat(logit_bias_typo=1), 400, "logit_bias_typo"),
    ("a JSON array", b"[1, 2]", 400, None),
    ("body over max_body_bytes", _chat(stop="x" * 8192), 413, None),
]


async def test_every_malformed_body_leaves_a_rejected_record(tmp_path: Path, fake: FakeUpstream) -> None:
    setup = _setup(tmp_path, fake)
    key = setup.keys["acme"]
    sent: dict[str, tuple[str, int, str | None]] = {}
    async with (
        running_node(setup, {}) as node,
        httpx.AsyncClient(base_url=node.url, timeout=30) as http,
    ):
        headers = bearer(key) | {"content-type": "application/json"}
        for case, body, status, param in MALFORMED:
            r = await http.post("/v1/chat/completions", headers=headers, content=body)
            assert r.status_code == status, (case, r.text)
            error = r.json()["error"]
            assert error["type"] == "invalid_request_error", (case, error)
            if param is not None:
                assert error["param"] == param, (case, error)
            sent[r.headers["x-request-id"]] = (case, status, param)
        # the edges of the range are accepted, recorded and forwarded
        for seed in (INT64_MAX, INT64_MIN):
            body = _chat(seed=seed, max_tokens=4)
            ok = await http.post("/v1/chat/completions", headers=headers, content=body)
            assert ok.status_code == 200, ok.text
            sent[ok.json()["id"]] = ("seed at the edge", 200, None)
    assert len(fake.requests) == 2  # only the two valid requests left the node
    records = await audit_records_by_request(setup)
    for request_id, (case, status, param) in sent.items():
        types = [r["type"] for r in records.get(request_id, [])]
        if status == 200:
            assert types == ["request.start", "request.end"], (case, types)
            assert records[request_id][0]["meta"]["sampling"]["seed"] in (INT64_MAX, INT64_MIN)
            continue
        assert types == ["request.rejected"], (case, types)
        meta = records[request_id][0]["meta"]
        assert meta["http_status"] == status, (case, meta)
        assert meta["key_id"] == setup.config.tenants[0].keys[0].id
        assert meta["endpoint"] == "chat"
        if param is not None:
            assert meta["param"] == param, (case, meta)


class RefusesStarts(AuditLog):
    """The real log, scripted to refuse every ``request.start`` (as a full queue would) and
    nothing else: the fault that used to leave a ``request.end`` with no start."""

    async def append(self, event: AuditEvent) -> int:
        if event.type == "request.start":
            raise AuditUnavailableError("scripted: the start record is refused")
        return await super().append(event)


async def test_a_refused_start_record_forwards_nothing_and_leaves_no_end(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    setup = _setup(tmp_path, fake)
    assert setup.config.audit is not None
    async with (
        await RefusesStarts.open(setup.config.audit) as log,
        running_node(setup, {}, audit=log) as node,
        httpx.AsyncClient(base_url=node.url, timeout=30) as http,
    ):
        for stream in (False, True):
            r = await http.post(
                "/v1/chat/completions",
                headers=bearer(setup.keys["acme"]),
                json={"model": "chat", "messages": [{"role": "user", "content": "hi"}], "stream": stream},
            )
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "audit_unavailable"
    assert fake.requests == []  # nothing forwarded without its durable start record
    records = await audit_records_by_request(setup)
    assert len(records) == 2
    for request_id, rows in records.items():
        assert [r["type"] for r in rows] == ["request.rejected"], (request_id, rows)
        assert rows[0]["meta"]["error_code"] == "audit_unavailable"


async def test_every_refused_rating_leaves_a_rejected_record(tmp_path: Path, fake: FakeUpstream) -> None:
    setup = _setup(tmp_path, fake)
    headers = bearer(setup.keys["acme"]) | {"content-type": "application/json"}
    async with (
        running_node(setup, {}) as node,
        httpx.AsyncClient(base_url=node.url, timeout=30) as http,
    ):
        chat = await http.post("/v1/chat/completions", headers=headers, content=_chat(max_tokens=4))
        assert chat.status_code == 200, chat.text
        rated = chat.json()["id"]
        refused: dict[str, tuple[int, str | None]] = {}
        for body, status, param in [
            (json.dumps({"request_id": rated, "rating": 2**64}).encode(), 400, "rating"),
            (b'{"request_id": ', 400, None),
            (json.dumps({"request_id": rated, "rating": 1, "stars": 5}).encode(), 400, "stars"),
            (json.dumps({"request_id": "chatcmpl-unknown", "rating": 1}).encode(), 404, "request_id"),
        ]:
            r = await http.post("/v1/feedback", headers=headers, content=body)
            assert r.status_code == status, (body, r.text)
            refused[r.headers["x-request-id"]] = (status, param)
        first = await http.post("/v1/feedback", headers=headers, json={"request_id": rated, "rating": 1})
        assert first.status_code == 201, first.text
        again = await http.post("/v1/feedback", headers=headers, json={"request_id": rated, "rating": -1})
        assert again.status_code == 409
        refused[again.headers["x-request-id"]] = (409, "request_id")
    records = await audit_records_by_request(setup)
    assert [r["type"] for r in records[rated]] == ["request.start", "request.end", "feedback"]
    for request_id, (status, param) in refused.items():
        rows = records.get(request_id, [])
        assert [r["type"] for r in rows] == ["request.rejected"], (request_id, status, rows)
        meta = rows[0]["meta"]
        assert (meta["endpoint"], meta["http_status"], meta["param"]) == ("feedback", status, param)
