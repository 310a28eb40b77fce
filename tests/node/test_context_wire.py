"""The context endpoints' wire pieces without a node: the in-memory multipart reader, chunking
strategies, cursor pages, and the file_search items in the Responses wire."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from node.context import StaticChunking
from node.context_wire import SearchRequest, chunking_of, page
from node.multipart_form import read_form
from node.responses_wire import ResponsesRequest, ResponsesStream, last_user_text, response_object
from serving.errors import BadRequestError


def _form(*parts: tuple[str, str | None, bytes]) -> tuple[str, bytes]:
    body = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += b"--B\r\nContent-Disposition: " + disposition.encode() + b"\r\n\r\n" + data + b"\r\n"
    return "multipart/form-data; boundary=B", body + b"--B--\r\n"


def test_a_form_is_read_in_memory_part_by_part() -> None:
    kind, body = _form(("purpose", None, b"assistants"), ("file", "a.md", b"# hi\r\n\r\nthere"))
    form = read_form(kind, body)
    assert form["purpose"].data == b"assistants" and form["purpose"].filename is None
    assert form["file"].filename == "a.md" and form["file"].data == b"# hi\r\n\r\nthere"


@pytest.mark.parametrize(
    ("kind", "body", "needle"),
    [
        ("application/json", b"{}", "multipart"),
        (
            "multipart/form-data; boundary=B",
            b"--B\r\nContent-Disposition: form-data; name=x\r\n\r\nab",
            "cannot be read",
        ),
        (*_form(("a", None, b"1"), ("a", None, b"2")), "twice"),
    ],
)
def test_a_bad_form_is_a_400_naming_why(kind: str, body: bytes, needle: str) -> None:
    with pytest.raises(BadRequestError, match=needle):
        read_form(kind, body)


def test_chunking_strategies() -> None:
    default = StaticChunking(max_chunk_size_tokens=300, chunk_overlap_tokens=100)
    assert chunking_of(None, default) == default
    assert chunking_of({"type": "auto"}, default) == default
    static = {"type": "static", "static": {"max_chunk_size_tokens": 200, "chunk_overlap_tokens": 20}}
    assert chunking_of(static, default) == StaticChunking(max_chunk_size_tokens=200, chunk_overlap_tokens=20)
    for bad in ({"type": "other"}, {"type": "static", "static": {"max_chunk_size_tokens": 10}}):
        with pytest.raises(BadRequestError):
            chunking_of(bad, default)


def test_pages_follow_the_cursor() -> None:
    items = [f"id{i}" for i in range(5)]
    first = page(items, str, lambda i: {"id": i}, {"limit": "2", "order": "asc"})
    assert [d["id"] for d in first["data"]] == ["id0", "id1"] and first["has_more"]
    rest = page(items, str, lambda i: {"id": i}, {"limit": "10", "order": "asc", "after": "id1"})
    assert [d["id"] for d in rest["data"]] == ["id2", "id3", "id4"] and not rest["has_more"]
    assert page(items, str, lambda i: {"id": i}, {})["data"][0]["id"] == "id4"  # newest first
    with pytest.raises(BadRequestError):
        page(items, str, lambda i: {"id": i}, {"limit": "0"})


def test_rewrite_query_is_refused() -> None:
    with pytest.raises(msgspec.ValidationError, match="rewrite_query"):
        msgspec.json.decode(b'{"query": "x", "rewrite_query": true}', type=SearchRequest)


def _req(**fields: Any) -> ResponsesRequest:
    return msgspec.convert({"model": "m", **fields}, ResponsesRequest)


def test_the_last_user_text_is_the_query() -> None:
    req = _req(
        input=[
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "answer"},
            {"role": "user", "content": [{"type": "input_text", "text": "second"}]},
        ]
    )
    assert last_user_text(req) == "second" and last_user_text(_req(input="plain")) == "plain"


def test_a_file_search_call_comes_first_with_citations_at_the_end_of_the_text() -> None:
    req = _req(input="q", include=["file_search_call.results"])
    item = {
        "type": "file_search_call",
        "id": "fs_1",
        "status": "completed",
        "queries": ["q"],
        "results": None,
    }
    cite = [{"type": "file_citation", "file_id": "file-1", "filename": "a.md", "chunk_id": "file-1#0"}]
    chat = {"choices": [{"message": {"content": "hello"}, "finish_reason": "stop"}], "created": 1}
    body = response_object(req, chat, response_id="resp_1", annotations=cite, before=[item])
    assert body["output"][0] == item
    assert body["output"][1]["content"][0]["annotations"] == [cite[0] | {"index": 5}]
    stream = ResponsesStream(req, response_id="resp_1", model="m")
    stream.annotations = cite
    events = stream.start() + stream.file_search_call(item) + stream.text("hey") + stream.finish("stop", None)
    kinds = [line[7:] for line in events.decode().splitlines() if line.startswith("event: ")]
    assert kinds[2:7] == [
        "response.output_item.added",
        "response.file_search_call.in_progress",
        "response.file_search_call.searching",
        "response.file_search_call.completed",
        "response.output_item.done",
    ]
    assert "response.output_text.annotation.added" in kinds and kinds[-1] == "response.completed"
