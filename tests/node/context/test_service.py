"""Ingestion and search end to end below HTTP: real parsers, the real tiny embedding engine, SQLite."""

from __future__ import annotations

import pytest

from node.context import (
    ContextService,
    FileParseError,
    FileStatus,
    FileTokenizer,
    FileTooLargeError,
    NotFoundError,
    SearchMode,
    SqliteBackend,
    StaticChunking,
    parse_filter,
)
from serving.embedding import LocalEmbedder
from serving.errors import BadRequestError
from tests.node.context.conftest import context_config, pdf_bytes

pytestmark = pytest.mark.engine

DOCS = {
    "cardiology.md": "# Beta blockers\n\nMetoprolol tartrate 50 mg twice daily lowers the heart rate.",
    "accounts.html": "<p>Refunds for account <b>ACC-77-1234</b> go through the treasury desk.</p>",
    "gdpr.pdf": "Article 17 grants the right to erasure of personal data.",
    "canteen.txt": "The canteen serves soup on Mondays and fish on Fridays.",
}


async def _load(service: ContextService, tenant: str) -> tuple[str, dict[str, str]]:
    store = await service.create_store(tenant, name="kb", metadata={"owner": "ops"})
    ids = {}
    for year, (name, text) in enumerate(DOCS.items(), start=2022):
        data = pdf_bytes(text) if name.endswith(".pdf") else text.encode()
        f = await service.upload_file(tenant, name, data)
        sf = await service.add_file(
            tenant, store.id, f.id, attributes={"year": year, "kind": name.split(".")[1]}
        )
        assert sf.status is FileStatus.COMPLETED and sf.chunks == 1 and sf.last_error is None
        ids[name] = f.id
    return store.id, ids


async def test_hybrid_search_finds_exact_terms_and_cites_file_and_chunk(service: ContextService) -> None:
    sid, ids = await _load(service, "acme")
    store = await service.backend.get_store("acme", sid)
    assert store.dimensions == 128 and store.file_counts["completed"] == 4 and store.embedding_model
    hits = await service.search("acme", [sid], "metoprolol dose", max_num_results=3)
    assert hits[0].chunk.file_id == ids["cardiology.md"] and hits[0].chunk.filename == "cardiology.md"
    assert hits[0].id == f"{ids['cardiology.md']}#0" and hits[0].fulltext_rank == 1
    assert 0 < hits[-1].score <= hits[0].score <= 1 and len(hits) == 3
    assert "Metoprolol tartrate 50 mg" in hits[0].chunk.text and "#" not in hits[0].chunk.text
    top = await service.search(
        "acme", [sid], "account ACC-77-1234", max_num_results=1, mode=SearchMode.FULLTEXT
    )
    assert [h.chunk.filename for h in top] == ["accounts.html"]
    pdf = await service.search("acme", [sid], "erasure Article 17", max_num_results=1)
    assert pdf[0].chunk.filename == "gdpr.pdf"
    vector_only = await service.search("acme", [sid], "metoprolol", max_num_results=4, mode=SearchMode.VECTOR)
    assert len(vector_only) == 4 and all(h.fulltext_rank is None for h in vector_only)


async def test_filters_and_threshold(service: ContextService) -> None:
    sid, ids = await _load(service, "acme")
    recent = parse_filter({"type": "gte", "key": "year", "value": 2024})
    hits = await service.search("acme", [sid], "metoprolol", max_num_results=10, filters=recent)
    assert {h.chunk.file_id for h in hits} == {ids["gdpr.pdf"], ids["canteen.txt"]}
    assert {h.chunk.attributes["year"] for h in hits} == {2024, 2025}
    # above 0.5 only chunks both rankings found survive; nothing at all is better than a weak match
    strict = await service.search("acme", [sid], "canteen soup", max_num_results=10, score_threshold=0.55)
    assert all(h.fulltext_rank is not None and h.vector_rank is not None for h in strict)
    assert await service.search("acme", [sid], "zzzz qqqq", max_num_results=10, score_threshold=0.55) == []


async def test_tenants_cannot_reach_each_others_stores(service: ContextService) -> None:
    sid, ids = await _load(service, "acme")
    other = await service.create_store("globex")
    with pytest.raises(NotFoundError):
        await service.search("globex", [sid], "metoprolol")
    with pytest.raises(NotFoundError):
        await service.search("globex", [other.id, sid], "metoprolol")
    with pytest.raises(NotFoundError):
        await service.add_file("globex", other.id, ids["canteen.txt"])
    assert await service.search("globex", [other.id], "metoprolol") == []


async def test_deleted_files_are_never_found_again(service: ContextService) -> None:
    sid, ids = await _load(service, "acme")
    await service.backend.delete_file("acme", ids["cardiology.md"])
    hits = await service.search("acme", [sid], "metoprolol", max_num_results=10)
    assert ids["cardiology.md"] not in {h.chunk.file_id for h in hits} and len(hits) == 3


async def test_bad_input_is_refused_naming_why(service: ContextService) -> None:
    with pytest.raises(FileParseError, match="not UTF-8"):
        await service.upload_file("acme", "a.txt", b"\xff\xfe\x00")
    store = await service.create_store("acme")
    f = await service.upload_file("acme", "a.txt", b"some text")
    with pytest.raises(BadRequestError) as info:
        await service.attach(
            "acme",
            store.id,
            f.id,
            chunking=StaticChunking(max_chunk_size_tokens=4096, chunk_overlap_tokens=0),
        )
    assert info.value.param == "chunking_strategy.static.max_chunk_size_tokens"
    with pytest.raises(BadRequestError) as info:
        await service.attach("acme", store.id, f.id, attributes={f"k{i}": i for i in range(17)})
    assert info.value.param == "attributes"
    for kwargs, param in [
        ({"query": " "}, "query"),
        ({"query": "x", "max_num_results": 0}, "max_num_results"),
        ({"query": "x", "score_threshold": 1.5}, "ranking_options.score_threshold"),
    ]:
        with pytest.raises(BadRequestError) as info:
            await service.search("acme", [store.id], **kwargs)  # type: ignore[arg-type]
        assert info.value.param == param


async def test_limits_are_configurable(backend: SqliteBackend, embed_engine: LocalEmbedder) -> None:
    small = ContextService(
        backend,
        embed_engine,
        FileTokenizer.of_model(embed_engine.model_dir),
        context_config(max_file_bytes=1000, max_chunks_per_file=2),
        embed_max_tokens=embed_engine.max_model_len,
    )
    with pytest.raises(FileTooLargeError, match="1001 bytes"):
        await small.upload_file("acme", "a.txt", b"x" * 1001)
    store = await small.create_store("acme")
    f = await small.upload_file("acme", "a.txt", b"word " * 19)
    sf = await small.add_file(
        "acme", store.id, f.id, chunking=StaticChunking(max_chunk_size_tokens=100, chunk_overlap_tokens=0)
    )
    assert sf.status is FileStatus.COMPLETED
    f = await small.upload_file("acme", "b.txt", b"word " * 99)
    sf = await small.add_file(
        "acme", store.id, f.id, chunking=StaticChunking(max_chunk_size_tokens=100, chunk_overlap_tokens=50)
    )
    assert sf.status is FileStatus.FAILED and sf.last_error_code == "invalid_file"
    assert "chunks, more than this node's limit of 2" in (sf.last_error or "")
    # a file stored without the upload's checks (an older node's, say) fails at ingestion, named
    odd = await backend.put_file("acme", filename="slides.pptx", purpose="assistants", content=b"PK")
    sf = await small.add_file("acme", store.id, odd.id)
    assert (sf.status, sf.last_error_code) == (FileStatus.FAILED, "unsupported_file")
    assert "unsupported file type '.pptx'" in (sf.last_error or "")
