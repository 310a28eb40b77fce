"""``POST /v1/responses`` end to end with the official client: the tiny model on the local route,
function tools through a fake OpenAI-compatible upstream (real HTTP), the documented event
sequence, the refusals, and the audit records under ``endpoint = "responses"``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import jsonschema
import openai
import pytest
import pytest_asyncio

from serving.engine import LocalEngine
from tests.fakes.upstream import FakeUpstream, Reply
from tests.harness import TINY, RunningNode, audit_records_by_request, node_setup, running_node

pytestmark = pytest.mark.engine

FAKE_MODEL = "fake-model-2024-08-06"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream() as upstream:
        yield upstream


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def node(
    tmp_path_factory: pytest.TempPathFactory, local_engine: LocalEngine, fake: FakeUpstream
) -> AsyncIterator[tuple[RunningNode, Any]]:
    tmp = tmp_path_factory.mktemp("responses")
    key_file = tmp / "upstream.key"
    key_file.write_text("sk-fake\n")
    setup = node_setup(
        tmp,
        tenants={
            "acme": f'models = ["{TINY}"]\nresidency = "local-only"',
            "ext": 'models = ["gpt"]\nresidency = ["eu-west"]',
        },
        extra=f"""
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
    async with running_node(setup, {TINY: local_engine}) as running:
        yield running, setup


def _client(node: tuple[RunningNode, Any], tenant: str = "acme") -> openai.AsyncOpenAI:
    running, setup = node
    return openai.AsyncOpenAI(base_url=running.url + "/v1", api_key=setup.keys[tenant], max_retries=0)


@pytest.mark.asyncio(loop_scope="session")
async def test_a_response_from_the_local_model_with_its_route_and_usage(
    node: tuple[RunningNode, Any],
) -> None:
    raw = await _client(node).responses.with_raw_response.create(
        model=TINY, input="hello there", instructions="be brief", max_output_tokens=8, temperature=0
    )
    response = raw.parse()
    assert raw.headers["x-bastion-route"] == "local"
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.model == TINY and response.instructions == "be brief"
    assert response.status in ("completed", "incomplete")
    assert response.output[0].type == "message"
    assert isinstance(response.output_text, str)
    assert response.usage is not None and 0 < response.usage.output_tokens <= 8
    if response.status == "incomplete":
        assert response.incomplete_details is not None
        assert response.incomplete_details.reason == "max_output_tokens"
    records = await audit_records_by_request(node[1])
    [start] = [r for r in records[raw.headers["x-request-id"]] if r["type"] == "request.start"]
    assert start["meta"]["endpoint"] == "responses"


@pytest.mark.asyncio(loop_scope="session")
async def test_the_stream_is_the_documented_event_sequence(node: tuple[RunningNode, Any]) -> None:
    stream = await _client(node).responses.create(
        model=TINY, input=[{"role": "user", "content": "hello"}], max_output_tokens=12, stream=True
    )
    events = [event async for event in stream]
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response  # type: ignore[union-attr]
    assert final.output_text == text
    assert final.usage is not None and final.usage.output_tokens > 0


@pytest.mark.asyncio(loop_scope="session")
async def test_the_clients_stream_helper_accepts_the_sequence(node: tuple[RunningNode, Any]) -> None:
    async with _client(node).responses.stream(model=TINY, input="hi", max_output_tokens=6) as stream:
        async for _ in stream:
            pass
        final = await stream.get_final_response()
    assert final.status in ("completed", "incomplete")
    assert final.output[0].type == "message"


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"store": True}, "store"),
        ({"previous_response_id": "resp_123"}, "previous_response_id"),
        ({"input": [{"type": "input_image", "image_url": "https://x"}]}, "input[0]"),
        ({"max_output_tokens": 10**9}, "max_output_tokens"),
        ({"tools": [{"type": "web_search"}]}, "tools"),
    ],
)
async def test_what_is_not_honoured_is_a_400_naming_it_and_recorded(
    node: tuple[RunningNode, Any], fields: dict[str, Any], param: str
) -> None:
    body = {"model": TINY, "input": "x", **fields}
    with pytest.raises(openai.BadRequestError) as info:
        await _client(node).responses.create(**body)
    assert info.value.status_code == 400
    assert isinstance(info.value.body, dict) and info.value.body.get("param") == param
    request_id = info.value.response.headers["x-request-id"]
    records = await audit_records_by_request(node[1])
    assert [r["type"] for r in records[request_id]] == ["request.rejected"]


@pytest.mark.asyncio(loop_scope="session")
async def test_function_tools_go_out_as_chat_tools_and_calls_come_back_as_items(
    node: tuple[RunningNode, Any], fake: FakeUpstream
) -> None:
    seen = len(fake.requests)
    fake.script(Reply(text="", tool_call=("call_7", "get_weather", '{"city": "Oslo"}')))
    response = await _client(node, "ext").responses.create(
        model="gpt",
        input="Weather in Oslo?",
        tools=[WEATHER],
        tool_choice="required",  # type: ignore[list-item]
    )
    sent = fake.requests[seen].json()
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {k: v for k, v in WEATHER.items() if k != "type"},
        }
    ]
    assert sent["tool_choice"] == "required"
    [call] = [o for o in response.output if o.type == "function_call"]
    assert (call.call_id, call.name, json.loads(call.arguments)) == (
        "call_7",
        "get_weather",
        {"city": "Oslo"},
    )

    # the next turn carries the call and its output back as items
    fake.script(Reply(text="It is cold."))
    seen = len(fake.requests)
    follow = await _client(node, "ext").responses.create(
        model="gpt",
        input=[
            {"role": "user", "content": "Weather in Oslo?"},
            {
                "type": "function_call",
                "call_id": "call_7",
                "name": "get_weather",
                "arguments": '{"city":"Oslo"}',
            },
            {"type": "function_call_output", "call_id": "call_7", "output": "-3 C"},
        ],
        tools=[WEATHER],  # type: ignore[list-item]
    )
    messages = fake.requests[seen].json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert messages[1]["tool_calls"][0]["id"] == "call_7"
    assert messages[2] == {"role": "tool", "content": "-3 C", "tool_call_id": "call_7"}
    assert follow.output_text == "It is cold."


@pytest.mark.asyncio(loop_scope="session")
async def test_streamed_function_call_arguments_arrive_as_argument_deltas(
    node: tuple[RunningNode, Any], fake: FakeUpstream
) -> None:
    fake.script(Reply(text="", tool_call=("call_8", "get_weather", '{"city": "Rome"}')))
    stream = await _client(node, "ext").responses.create(
        model="gpt",
        input="Weather in Rome?",
        tools=[WEATHER],  # type: ignore[list-item]
        stream=True,
    )
    events = [event async for event in stream]
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert json.loads(args) == {"city": "Rome"}
    [done] = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert done.arguments == args
    assert events[-1].type == "response.completed"


@pytest.mark.asyncio(loop_scope="session")
async def test_a_stream_cut_upstream_ends_in_response_failed(
    node: tuple[RunningNode, Any], fake: FakeUpstream
) -> None:
    fake.script(Reply(fault="cut", after_chunks=2))
    stream = await _client(node, "ext").responses.create(model="gpt", input="x", stream=True)
    events = [event async for event in stream]
    assert events[0].type == "response.created"
    assert events[-1].type == "response.failed"
    error = events[-1].response.error  # type: ignore[union-attr]
    assert error is not None and error.code == "server_error" and error.message.startswith("[")


ANSWER_SCHEMA = {
    "type": "object",
    "properties": {
        "verdict": {"type": "string", "enum": ["yes", "no", "unsure"]},
        "urgent": {"type": "boolean"},
    },
    "required": ["verdict", "urgent"],
    "additionalProperties": False,
}


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize("stream", [False, True])
async def test_text_format_json_schema_on_the_local_model_follows_the_schema(
    node: tuple[RunningNode, Any], stream: bool
) -> None:
    text_format: Any = {
        "format": {"type": "json_schema", "name": "answer", "schema": ANSWER_SCHEMA, "strict": True}
    }
    client = _client(node)
    if stream:
        events = [
            e
            async for e in await client.responses.create(
                model=TINY,
                input="Is it urgent?",
                text=text_format,
                temperature=0,
                max_output_tokens=200,
                stream=True,
            )
        ]
        assert events[-1].type == "response.completed"
        text = events[-1].response.output_text  # type: ignore[union-attr]
    else:
        response = await client.responses.create(
            model=TINY, input="Is it urgent?", text=text_format, temperature=0, max_output_tokens=200
        )
        assert response.status == "completed"
        assert response.text.format is not None and response.text.format.type == "json_schema"
        text = response.output_text
    jsonschema.validate(json.loads(text), ANSWER_SCHEMA)


@pytest.mark.asyncio(loop_scope="session")
async def test_a_required_function_tool_on_the_local_model_gets_valid_arguments(
    node: tuple[RunningNode, Any],
) -> None:
    tool: Any = {"type": "function", "name": "triage", "parameters": ANSWER_SCHEMA, "strict": True}
    response = await _client(node).responses.create(
        model=TINY,
        input="Triage this.",
        tools=[tool],
        tool_choice="required",
        temperature=0,
        max_output_tokens=200,
    )
    [call] = [o for o in response.output if o.type == "function_call"]
    assert call.name == "triage" and call.call_id.startswith("call_")
    jsonschema.validate(json.loads(call.arguments), ANSWER_SCHEMA)
