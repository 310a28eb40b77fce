"""The Responses API's translation to and from chat: pure functions, checked against the
official client's own types (``openai.types.responses``)."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from node.responses_wire import ResponsesRequest, ResponsesStream, response_object, to_chat
from node.wire import ChatCompletionRequest, decode_request
from serving.errors import BadRequestError

_EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


def _req(**fields: Any) -> ResponsesRequest:
    return decode_request(json.dumps({"model": "m", **fields}).encode(), ResponsesRequest)


def test_a_string_input_is_one_user_message_after_the_instructions() -> None:
    chat = to_chat(_req(input="hello", instructions="be brief", max_output_tokens=7, temperature=0.5))
    assert chat["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello"},
    ]
    assert chat["max_tokens"] == 7 and chat["temperature"] == 0.5
    decode_request(json.dumps(chat).encode(), ChatCompletionRequest)  # a valid chat request


def test_items_round_trip_function_calls_as_one_assistant_turn_and_tool_messages() -> None:
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
        {"type": "function_call", "call_id": "c1", "name": "get", "arguments": '{"city":"Oslo"}'},
        {"type": "function_call", "call_id": "c2", "name": "get", "arguments": '{"city":"Rome"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "cold"},
        {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "warm"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "done"}]},
        {"role": "user", "content": "thanks"},
    ]
    chat = to_chat(_req(input=items))
    roles = [m["role"] for m in chat["messages"]]
    assert roles == ["user", "assistant", "tool", "tool", "assistant", "user"]
    assert [c["id"] for c in chat["messages"][1]["tool_calls"]] == ["c1", "c2"]
    assert chat["messages"][3] == {"role": "tool", "tool_call_id": "c2", "content": "warm"}
    decode_request(json.dumps(chat).encode(), ChatCompletionRequest)


def test_function_tools_choice_and_text_format_become_their_chat_equivalents() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "boolean"}}, "required": ["a"]}
    chat = to_chat(
        _req(
            input="x",
            tools=[{"type": "function", "name": "f", "parameters": schema, "strict": True}],
            tool_choice={"type": "function", "name": "f"},
            parallel_tool_calls=False,
            text={"format": {"type": "json_schema", "name": "out", "schema": schema, "strict": True}},
        )
    )
    assert chat["tools"] == [
        {"type": "function", "function": {"name": "f", "parameters": schema, "strict": True}}
    ]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert chat["parallel_tool_calls"] is False
    assert chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "out", "schema": schema, "strict": True},
    }


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"store": True}, "store"),
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"reasoning": {"effort": "low"}}, "reasoning"),
        ({"background": True}, "background"),
        ({"include": ["message.output_text.logprobs"]}, "include"),
        ({"truncation": "auto"}, "truncation"),
    ],
)
def test_what_this_node_does_not_honour_is_a_400_naming_it(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequestError) as info:
        _req(input="x", **fields)
    assert info.value.param == param


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"input": [{"type": "input_image", "image_url": "x"}]}, "input_image"),
        ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "input_file"),
        ({"input": "x", "tools": [{"type": "web_search"}]}, "web_search"),
        ({"input": "x", "tool_choice": "sometimes"}, "sometimes"),
        ({"input": []}, "empty"),
        ({"input": "x", "text": {"format": {"type": "json_schema", "name": "n"}}}, "schema"),
    ],
)
def test_unsupported_items_tools_and_formats_are_refused_by_name(fields: dict[str, Any], needle: str) -> None:
    with pytest.raises(BadRequestError) as info:
        to_chat(_req(**fields))
    assert needle in str(info.value)


def _chat_body(content: str | None, calls: list[dict[str, Any]] | None, finish: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = calls
    return {
        "id": "chatcmpl-1",
        "created": 1700000000,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    }


def test_a_chat_answer_becomes_a_response_the_official_client_parses() -> None:
    req = _req(input="x", instructions="i", metadata={"k": "v"})
    calls = [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    body = response_object(req, _chat_body("hi", calls, "tool_calls"), response_id="resp_1")
    parsed = Response.model_validate(body)
    assert parsed.output_text == "hi"
    assert [o.type for o in parsed.output] == ["message", "function_call"]
    assert parsed.usage is not None and parsed.usage.total_tokens == 8
    assert parsed.status == "completed" and parsed.metadata == {"k": "v"}


def test_a_length_finish_is_an_incomplete_response() -> None:
    parsed = Response.model_validate(
        response_object(_req(input="x"), _chat_body("abc", None, "length"), response_id="resp_2")
    )
    assert parsed.status == "incomplete"
    assert parsed.incomplete_details is not None and parsed.incomplete_details.reason == "max_output_tokens"


def _events(raw: bytes) -> list[Any]:
    events = []
    for block in raw.decode().split("\n\n"):  # SSE events split on blank lines only
        if not block:
            continue
        name, data = block.split("\n", 1)
        event = _EVENTS.validate_python(json.loads(data.removeprefix("data: ")))
        assert name == "event: " + event.type
        events.append(event)
    return events


def test_the_stream_follows_the_documented_event_sequence() -> None:
    stream = ResponsesStream(_req(input="x", stream=True), response_id="resp_3", model="m")
    raw = stream.start() + stream.text("he") + stream.text("llo")
    raw += stream.tool_call(0, call_id="call_9", name="f", arguments='{"a":')
    raw += stream.tool_call(0, call_id=None, name=None, arguments="true}")
    raw += stream.finish("tool_calls", {"prompt_tokens": 4, "completion_tokens": 6})
    events = _events(raw)
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response
    assert final.output_text == "hello"
    assert final.output[1].arguments == '{"a":true}' and final.output[1].call_id == "call_9"
    assert final.usage.total_tokens == 10


def test_a_failed_stream_ends_with_response_failed_and_its_code() -> None:
    stream = ResponsesStream(_req(input="x", stream=True), response_id="resp_4", model="m")
    raw = stream.start() + stream.text("a")
    raw += stream.fail({"error": {"code": "upstream_error", "message": "cut"}})
    events = _events(raw)
    assert events[-1].type == "response.failed"
    error = events[-1].response.error
    assert error.code == "server_error" and error.message == "[upstream_error] cut"
    assert msgspec.json.decode(raw.split(b"data: ")[-1])["response"]["status"] == "failed"
