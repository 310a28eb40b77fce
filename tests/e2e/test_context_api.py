"""``/v1/files``, ``/v1/vector_stores`` and the Responses ``file_search`` tool end to end: uvicorn on
127.0.0.1, the real tiny chat and embedding engines, the official ``openai`` client, a fake external
upstream (real HTTP) for the residency check, the real audit log read back decrypted."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.admin import AdminClient, admin_socket_path
from serving.embedding import LocalEmbedder
from serving.engine import LocalEngine
from tests.conftest import TINY_EMBED_NAME
from tests.fakes.upstream import FakeUpstream
from tests.harness import TINY, NodeSetup, RunningNode, audit_records_by_request, node_setup, running_node
from tests.node.context.conftest import pdf_bytes

pytestmark = [pytest.mark.engine, pytest.mark.asyncio(loop_scope="session")]

EMBED = TINY_EMBED_NAME
FAKE_MODEL = "fake-model-2024-08-06"
MAX_FILE = 64 * 1024
BOTH = f'models = ["{TINY}", "{EMBED}"]\nresidency = "local-only"'

MARKDOWN = b"""# Cardiology ward

The usual metoprolol dose for our ward is 50 mg twice daily. Ask the duty pharmacist before changing it.
"""
HTML = b"""<html><body><h1>Billing</h1><p>Refunds go to account AC-7731/2 within five working days.</p>
<script>ignored()</script></body></html>"""
PDF = pdf_bytes("Fire drill: assemble at gate B every first Monday.", "Wardens carry yellow vests.")
SECRET = b"Escalations go to jane.doe@example.com who approves every refund of the quarter."


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream() as upstream:
        yield upstream


@dataclass
class Ctx:
    running: RunningNode
    setup: NodeSetup
    fake: FakeUpstream

    def client(self, tenant: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=self.running.url + "/v1", api_key=self.setup.keys[tenant], max_retries=0
        )


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def ctx(
    tmp_path_factory: pytest.TempPathFactory,
    local_engine: LocalEngine,
    embed_engine: LocalEmbedder,
    fake: FakeUpstream,
) -> AsyncIterator[Ctx]:
    tmp = tmp_path_factory.mktemp("context-api")
    key_file = tmp / "upstream.key"
    key_file.write_text("sk-fake\n")
    setup = node_setup(
        tmp,
        tenants={
            "acme": BOTH,
            "globex": BOTH,
            "initech": BOTH,
            "umbrella": BOTH,
            "ext": f'models = ["gpt", "{EMBED}"]\nresidency = ["eu-west"]',
        },
        extra=f"""
[context]
embedding_model = "{EMBED}"
max_file_bytes = {MAX_FILE}
file_search_tokens = 600

[[providers]]
name = "fake"
kind = "openai"
base_url = "{fake.openai_base}"
region = "eu-west"
api_key_file = "{key_file}"
[providers.models."{FAKE_MODEL}"]
input_per_mtok = 1.0
output_per_mtok = 2.0

[[routes]]
alias = "gpt"
fallbacks = [{{ provider = "fake", model = "{FAKE_MODEL}" }}]
""",
    )
    async with running_node(setup, {TINY: local_engine, EMBED: embed_engine}) as running:
        yield Ctx(running=running, setup=setup, fake=fake)


async def _store_with(
    c: openai.AsyncOpenAI, *files: tuple[str, bytes], **attrs: Any
) -> tuple[str, list[str]]:
    ids = [(await c.files.create(file=f, purpose="assistants")).id for f in files]
    vs = await c.vector_stores.create(name="docs")
    for file_id in ids:
        sf = await c.vector_stores.files.create_and_poll(
            vector_store_id=vs.id, file_id=file_id, attributes=attrs or None, poll_interval_ms=50
        )
        assert sf.status == "completed", sf.last_error
    return vs.id, ids


async def test_upload_search_and_answer_with_citations(ctx: Ctx) -> None:
    c = ctx.client("acme")
    md = await c.files.create(file=("ward.md", MARKDOWN), purpose="assistants")
    assert md.object == "file" and md.bytes == len(MARKDOWN) and md.filename == "ward.md"
    html = await c.files.create(file=("billing.html", HTML), purpose="assistants")
    pdf = await c.files.create(file=("drill.pdf", PDF), purpose="assistants")
    assert (await c.files.retrieve(md.id)).id == md.id
    assert await (await c.files.content(md.id)).aread() == MARKDOWN
    listed = [f.id async for f in c.files.list()]
    assert {md.id, html.id, pdf.id} <= set(listed)

    vs = await c.vector_stores.create(name="ward", chunking_strategy={"type": "auto"})
    sf = await c.vector_stores.files.create_and_poll(
        vector_store_id=vs.id,
        file_id=md.id,
        attributes={"dept": "cardiology"},
        chunking_strategy={
            "type": "static",
            "static": {"max_chunk_size_tokens": 200, "chunk_overlap_tokens": 50},
        },
        poll_interval_ms=50,
    )
    assert sf.status == "completed" and sf.attributes == {"dept": "cardiology"}
    assert sf.chunking_strategy is not None and sf.chunking_strategy.type == "static"
    batch = await c.vector_stores.file_batches.create_and_poll(
        vector_store_id=vs.id, file_ids=[html.id, pdf.id], poll_interval_ms=50
    )
    assert batch.status == "completed" and batch.file_counts.completed == 2
    batch_files = [
        f.id async for f in c.vector_stores.file_batches.list_files(batch.id, vector_store_id=vs.id)
    ]
    assert set(batch_files) == {html.id, pdf.id}
    store = await c.vector_stores.retrieve(vs.id)
    assert store.file_counts.completed == 3 and store.status == "completed" and store.usage_bytes > 0
    assert {s.id async for s in c.vector_stores.list()} >= {vs.id}

    results = [
        r async for r in await c.vector_stores.search(vs.id, query="metoprolol dose", max_num_results=3)
    ]
    assert results[0].file_id == md.id and "metoprolol" in results[0].content[0].text
    assert 0 < results[0].score <= 1
    exact = [r async for r in await c.vector_stores.search(vs.id, query="AC-7731/2")]
    assert exact[0].file_id == html.id
    pdf_hit = [r async for r in await c.vector_stores.search(vs.id, query="fire drill gate")]
    assert pdf_hit[0].file_id == pdf.id and "gate B" in pdf_hit[0].content[0].text
    filtered = [
        r
        async for r in await c.vector_stores.search(
            vs.id, query="refunds account", filters={"type": "eq", "key": "dept", "value": "cardiology"}
        )
    ]
    assert filtered and {r.file_id for r in filtered} == {md.id}
    strict = [
        r
        async for r in await c.vector_stores.search(
            vs.id, query="metoprolol", ranking_options={"score_threshold": 0.99}
        )
    ]
    assert len(strict) < len(results) or all(r.score >= 0.99 for r in strict)
    with pytest.raises(openai.BadRequestError, match="rewrite_query"):
        await c.vector_stores.search(vs.id, query="x", rewrite_query=True)

    raw = await c.responses.with_raw_response.create(
        model=TINY,
        input="What is the metoprolol dose?",
        tools=[{"type": "file_search", "vector_store_ids": [vs.id], "max_num_results": 2}],
        include=["file_search_call.results"],
        max_output_tokens=8,
        temperature=0,
    )
    resp = raw.parse()
    call, message = resp.output[0], resp.output[1]
    assert call.type == "file_search_call" and call.status == "completed"
    assert call.queries == ["What is the metoprolol dose?"]
    assert call.results and call.results[0].file_id == md.id and "metoprolol" in (call.results[0].text or "")
    assert message.type == "message"
    annotations = message.content[0].annotations
    assert annotations and annotations[0].type == "file_citation" and annotations[0].file_id == md.id
    assert annotations[0].filename == "ward.md" and annotations[0].index == len(message.content[0].text)
    assert (annotations[0].model_extra or {}).get("chunk_id", "").startswith(md.id + "#")

    # without include: no results; streamed: the same items in the documented events
    stream = await c.responses.create(
        model=TINY,
        input=[{"role": "user", "content": "Where is the fire drill?"}],
        tools=[{"type": "file_search", "vector_store_ids": [vs.id]}],
        max_output_tokens=8,
        stream=True,
    )
    kinds, final = [], None
    async for event in stream:
        kinds.append(event.type)
        if event.type == "response.completed":
            final = event.response
    assert "response.file_search_call.completed" in kinds and "response.output_text.annotation.added" in kinds
    assert final is not None and final.output[0].type == "file_search_call"
    assert final.output[0].results is None
    cited = {a.file_id for a in final.output[1].content[0].annotations}
    assert pdf.id in cited

    records = await audit_records_by_request(ctx.setup)
    by_type = [r for rs in records.values() for r in rs if r["type"].startswith("context.")]
    searches = [r for r in by_type if r["type"] == "context.search"]
    assert any(r["meta"]["chunks"] and r["meta"]["store_ids"] == [vs.id] for r in searches)
    assert all("metoprolol" not in json.dumps(r["meta"]) for r in searches)  # the query only in content
    assert any(r["content"] == {"query": "metoprolol dose"} for r in searches)
    uploads = [r for r in by_type if r["type"] == "context.upload"]
    assert {md.id, html.id, pdf.id} <= {r["meta"]["file_id"] for r in uploads}
    assert raw.http_response.headers["x-request-id"] in records  # the file_search under the request's id


async def test_retrieved_text_never_pushes_a_request_past_the_window(ctx: Ctx) -> None:
    """file_search packs under what the local model's window leaves (2048 tokens here), not only
    under ``file_search_tokens`` (600): with a long prompt fewer chunks go in, never a 400."""
    c = ctx.client("umbrella")
    note = "\n\n".join(
        f"Ward {n}: metoprolol dose {n} mg twice daily, checked by nurse {n}." for n in range(60)
    )
    f = await c.files.create(file=("wards.txt", note.encode()), purpose="assistants")
    vs = await c.vector_stores.create(name="wards")
    sf = await c.vector_stores.files.create_and_poll(
        vector_store_id=vs.id,
        file_id=f.id,
        chunking_strategy={
            "type": "static",
            "static": {"max_chunk_size_tokens": 100, "chunk_overlap_tokens": 0},
        },
        poll_interval_ms=50,
    )
    assert sf.status == "completed" and (sf.usage_bytes or 0) > 0

    async def prompt_tokens(words: int) -> int:
        r = await c.responses.create(
            model=TINY, instructions="policy " * words, input="metoprolol dose?", max_output_tokens=16
        )
        return r.usage.input_tokens

    base, more = await prompt_tokens(100), await prompt_tokens(300)
    words = 100 + int((1650 - base) * 200 / (more - base))  # about 1650 of 2048 before retrieval
    instructions = "policy " * words
    # without the window's limit, 600 tokens of chunks would overflow it: the test means something
    assert 2048 - 16 - 600 < await prompt_tokens(words) < 1800
    raw = await c.responses.with_raw_response.create(
        model=TINY,
        instructions=instructions,
        input="metoprolol dose?",
        tools=[{"type": "file_search", "vector_store_ids": [vs.id], "max_num_results": 20}],
        max_output_tokens=16,
    )
    resp = raw.parse()
    assert resp.output[0].type == "file_search_call"
    assert resp.usage.input_tokens + 16 <= 2048
    cited = resp.output[1].content[0].annotations
    assert 1 <= len(cited) < 20  # some chunks fit, not all twenty
    records = await audit_records_by_request(ctx.setup)
    (search,) = [
        r for r in records[raw.http_response.headers["x-request-id"]] if r["type"] == "context.search"
    ]
    assert (
        0 < search["meta"]["budget_tokens"] < 600
        and search["meta"]["packed_tokens"] <= search["meta"]["budget_tokens"]
    )


async def test_deleting_a_file_erases_it_from_search_and_is_audited(ctx: Ctx) -> None:
    c = ctx.client("acme")
    vs_id, (file_id,) = await _store_with(c, ("ward.md", MARKDOWN))
    assert [r async for r in await c.vector_stores.search(vs_id, query="metoprolol")]
    removed = await c.vector_stores.files.delete(file_id, vector_store_id=vs_id)
    assert removed.deleted
    assert [r async for r in await c.vector_stores.search(vs_id, query="metoprolol")] == []
    deleted = await c.files.delete(file_id)
    assert deleted.deleted and deleted.id == file_id
    with pytest.raises(openai.NotFoundError):
        await c.files.retrieve(file_id)
    gone = await c.vector_stores.delete(vs_id)
    assert gone.deleted
    records = await audit_records_by_request(ctx.setup)
    kinds = {r["type"] for rs in records.values() for r in rs}
    assert {"context.file.delete", "context.store.file.delete", "context.store.delete"} <= kinds


async def test_another_tenants_ids_are_404_everywhere(ctx: Ctx) -> None:
    acme, globex = ctx.client("acme"), ctx.client("globex")
    vs_id, (file_id,) = await _store_with(acme, ("ward.md", MARKDOWN))
    own = await globex.vector_stores.create(name="mine")
    attempts = [
        globex.files.retrieve(file_id),
        globex.files.content(file_id),
        globex.files.delete(file_id),
        globex.vector_stores.retrieve(vs_id),
        globex.vector_stores.delete(vs_id),
        globex.vector_stores.search(vs_id, query="metoprolol"),
        globex.vector_stores.files.list(vector_store_id=vs_id),
        globex.vector_stores.files.retrieve(file_id, vector_store_id=vs_id),
        globex.vector_stores.files.delete(file_id, vector_store_id=vs_id),
        globex.vector_stores.files.create(vector_store_id=own.id, file_id=file_id),
        globex.vector_stores.file_batches.create(vector_store_id=own.id, file_ids=[file_id]),
        globex.vector_stores.create(name="steal", file_ids=[file_id]),
        globex.responses.create(
            model=TINY, input="metoprolol?", tools=[{"type": "file_search", "vector_store_ids": [vs_id]}]
        ),
    ]
    for attempt in attempts:
        with pytest.raises(openai.NotFoundError):
            await attempt  # type: ignore[misc]
    # the owner still has it all
    assert (await acme.files.retrieve(file_id)).id == file_id
    assert [r async for r in await acme.vector_stores.search(vs_id, query="metoprolol")]


async def test_refusals_name_why(ctx: Ctx) -> None:
    c = ctx.client("acme")
    with pytest.raises(openai.APIStatusError) as big:
        await c.files.create(file=("big.txt", b"a " * MAX_FILE), purpose="assistants")
    assert big.value.status_code == 413
    with pytest.raises(openai.APIStatusError) as huge:  # past the upload route's own body limit
        await c.files.create(file=("huge.txt", b"b" * (2 * MAX_FILE + 70_000)), purpose="assistants")
    assert huge.value.status_code == 413
    with pytest.raises(openai.BadRequestError, match=r"(?i)pdf"):
        await c.files.create(file=("broken.pdf", b"%PDF-1.4 not really"), purpose="assistants")
    with pytest.raises(openai.BadRequestError, match="exe"):
        await c.files.create(file=("tool.exe", b"MZ\x90\x00"), purpose="assistants")
    with pytest.raises(openai.BadRequestError, match="purpose"):
        await c.files.create(file=("a.txt", b"hello"), purpose="fine-tune")
    vs = await c.vector_stores.create(name="x")
    with pytest.raises(openai.BadRequestError, match="chunk_overlap_tokens"):
        await c.vector_stores.files.create(
            vector_store_id=vs.id,
            file_id="file-x",
            chunking_strategy={
                "type": "static",
                "static": {"max_chunk_size_tokens": 200, "chunk_overlap_tokens": 150},
            },
        )
    with pytest.raises(openai.BadRequestError, match="include"):
        await c.responses.create(model=TINY, input="hi", include=["message.output_text.logprobs"])
    async with httpx.AsyncClient(base_url=ctx.running.url) as http:
        r = await http.post(
            "/v1/files", headers={"authorization": f"Bearer {ctx.setup.keys['acme']}"}, json={"file": "x"}
        )
    assert r.status_code == 400 and "multipart" in r.json()["error"]["message"]


async def test_file_search_routed_externally_sends_only_redacted_context(ctx: Ctx) -> None:
    c = ctx.client("ext")
    vs_id, _ = await _store_with(c, ("escalation.txt", SECRET))
    ctx.fake.reset()
    resp = await c.responses.create(
        model="gpt",
        input="Who approves a refund?",
        tools=[{"type": "file_search", "vector_store_ids": [vs_id]}],
        max_output_tokens=8,
    )
    assert resp.output[0].type == "file_search_call"
    (sent,) = ctx.fake.requests
    body = json.dumps(sent.json())
    assert "approves every refund of the quarter" in body  # the retrieved context went along
    assert "jane.doe@example.com" not in body  # redacted like the rest of the prompt


async def test_admin_shred_erases_the_tenants_retrieval_data(ctx: Ctx) -> None:
    c = ctx.client("initech")
    vs_id, (file_id,) = await _store_with(c, ("ward.md", MARKDOWN))
    client = AdminClient(admin_socket_path(ctx.setup.config, ctx.setup.config_dir))
    reply = await asyncio.to_thread(client.call, {"op": "shred", "tenant": "initech"})
    assert reply["ok"] and reply["context"]["files"] == 1 and reply["context"]["stores"] == 1
    with pytest.raises(openai.NotFoundError):
        await c.files.retrieve(file_id)
    with pytest.raises(openai.NotFoundError):
        await c.vector_stores.search(vs_id, query="metoprolol")
    assert [f async for f in c.files.list()] == []


# -- isolation, as a property -------------------------------------------------------------------------

_WORDS = [
    "metoprolol",
    "refund",
    "gate",
    "vests",
    "pharmacist",
    "account",
    "Monday",
    "dose",
    "ward",
    "billing",
]
_TENANTS = ("acme", "globex", "initech")


@dataclass
class World:
    stores: dict[str, list[str]]
    files: dict[str, set[str]]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def world(ctx: Ctx) -> World:
    docs = [("ward.md", MARKDOWN), ("billing.html", HTML), ("drill.pdf", PDF)]
    stores: dict[str, list[str]] = {}
    files: dict[str, set[str]] = {}
    for n, tenant in enumerate(_TENANTS):
        c = ctx.client(tenant)
        for k in range(2):
            vs_id, ids = await _store_with(c, docs[(n + k) % 3], docs[(n + k + 1) % 3])
            stores.setdefault(tenant, []).append(vs_id)
            files.setdefault(tenant, set()).update(ids)
    return World(stores=stores, files=files)


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(
    tenant=st.sampled_from(_TENANTS),
    owner=st.sampled_from(_TENANTS),
    which=st.integers(0, 1),
    words=st.lists(st.sampled_from(_WORDS), min_size=1, max_size=3),
    k=st.integers(1, 20),
)
async def test_no_search_ever_returns_another_tenants_chunk(
    ctx: Ctx, world: World, tenant: str, owner: str, which: int, words: list[str], k: int
) -> None:
    store = world.stores[owner][which]
    key = ctx.setup.keys[tenant]
    async with httpx.AsyncClient(
        base_url=ctx.running.url, headers={"authorization": f"Bearer {key}"}
    ) as http:
        r = await http.post(
            f"/v1/vector_stores/{store}/search", json={"query": " ".join(words), "max_num_results": k}
        )
        s = await http.post(
            "/v1/responses",
            json={
                "model": TINY,
                "input": " ".join(words),
                "max_output_tokens": 1,
                "tools": [{"type": "file_search", "vector_store_ids": [store]}],
                "include": ["file_search_call.results"],
            },
        )
    if tenant != owner:
        assert r.status_code == 404 and s.status_code == 404, (r.text, s.text)
        return
    assert r.status_code == 200 and s.status_code == 200
    found = {d["file_id"] for d in r.json()["data"]}
    call = s.json()["output"][0]
    found |= {x["file_id"] for x in call["results"]}
    assert found <= world.files[tenant]
