"""Function calling on the local route, end to end with the official client: the tiny model's
template lists the tools, ``required`` and named calls are generated under the tools' schemas
(so their arguments validate, random weights or not), calls stream as OpenAI's tool-call deltas,
tool turns round-trip through the template, and bad tool definitions are 400s naming the fault."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
import pytest_asyncio

from serving.engine import LocalEngine
from serving.protocol import ChatMessage, FunctionCall, GenerationRequest, ToolCall
from tests.harness import TINY, NodeSetup, RunningNode, audit_records_by_request, node_setup, running_node

pytestmark = pytest.mark.engine

WEATHER = {
    "type": "object",
    "properties": {
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "hourly": {"type": "boolean"},
    },
    "required": ["unit", "days", "hourly"],
    "additionalProperties": False,
}
ALARM = {
    "type": "object",
    "properties": {"level": {"enum": [1, 2, 3]}, "loud": {"type": "boolean"}},
    "required": ["level"],
}
#: the schema vLLM's own server answered with a bare number under ``tool_choice = "required"``
ENUM_ONLY = {"type": "object", "properties": {"mode": {"enum": ["on", "off", "auto"]}}, "required": ["mode"]}


def _tool(name: str, parameters: dict[str, Any], description: str = "") -> dict[str, Any]:
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": parameters},
    }


TOOLS = [_tool("get_weather", WEATHER, "The weather forecast."), _tool("set_alarm", ALARM, "Set an alarm.")]
SCHEMAS = {"get_weather": WEATHER, "set_alarm": ALARM, "switch": ENUM_ONLY}
USER = [{"role": "user", "content": "what is the weather like?"}]
SEEDS = range(5)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def node(
    tmp_path_factory: pytest.TempPathFactory, local_engine: LocalEngine
) -> AsyncIterator[tuple[RunningNode, NodeSetup]]:
    setup = node_setup(tmp_path_factory.mktemp("tools"), tenants=("acme",))
    async with running_node(setup, {TINY: local_engine}) as running:
        yield running, setup


def _client(node: tuple[RunningNode, NodeSetup]) -> openai.AsyncOpenAI:
    running, setup = node
    return openai.AsyncOpenAI(base_url=running.url + "/v1", api_key=setup.keys["acme"], max_retries=0)


async def _ask(node: tuple[RunningNode, NodeSetup], **fields: Any) -> Any:
    """A chat completion on the tiny model; the user's question and ``TOOLS`` unless ``fields`` say."""
    body: dict[str, Any] = {"model": TINY, "messages": USER, "tools": TOOLS} | fields
    return await _client(node).chat.completions.create(**body)


def _valid(name: str, arguments: str) -> dict[str, Any]:
    args = json.loads(arguments)
    jsonschema.validate(args, SCHEMAS[name])
    assert isinstance(args, dict)
    return args


@pytest.mark.parametrize("seed", SEEDS)
async def test_a_named_function_is_called_with_arguments_valid_for_its_schema(
    node: tuple[RunningNode, NodeSetup], seed: int
) -> None:
    reply = await _ask(
        node,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=200,
        seed=seed,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    _valid("get_weather", call.function.arguments)  # type: ignore[union-attr]


@pytest.mark.parametrize("seed", SEEDS)
async def test_required_calls_only_defined_tools_with_valid_arguments(
    node: tuple[RunningNode, NodeSetup], seed: int
) -> None:
    reply = await _ask(
        node,
        tool_choice="required",
        max_tokens=400,
        seed=seed,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    calls = choice.message.tool_calls or []
    assert calls, choice
    assert len({c.id for c in calls}) == len(calls)
    for call in calls:
        _valid(call.function.name, call.function.arguments)  # type: ignore[union-attr]


@pytest.mark.parametrize("seed", SEEDS)
async def test_an_enum_only_schema_under_required_gives_an_object_not_a_bare_value(
    node: tuple[RunningNode, NodeSetup], seed: int
) -> None:
    reply = await _ask(
        node,
        messages=[{"role": "user", "content": "turn it on"}],
        tools=[_tool("switch", ENUM_ONLY)],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=100,
        seed=seed,
    )
    [call] = reply.choices[0].message.tool_calls or []
    assert _valid("switch", call.function.arguments)["mode"] in ("on", "off", "auto")  # type: ignore[union-attr]


@pytest.mark.parametrize("seed", SEEDS)
async def test_parallel_tool_calls_false_gives_exactly_one_call(
    node: tuple[RunningNode, NodeSetup], seed: int
) -> None:
    reply = await _ask(
        node,
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=200,
        seed=seed,
    )
    [call] = reply.choices[0].message.tool_calls or []
    _valid(call.function.name, call.function.arguments)  # type: ignore[union-attr]


async def _streamed(client: openai.AsyncOpenAI, **kwargs: Any) -> tuple[list[Any], str | None]:
    """The tool-call delta entries of a streamed answer, in order, and its finish reason."""
    entries: list[Any] = []
    finish = None
    stream = await client.chat.completions.create(model=TINY, messages=USER, stream=True, **kwargs)  # type: ignore[arg-type]
    async for chunk in stream:
        for choice in chunk.choices:
            assert not choice.delta.content
            entries.extend(choice.delta.tool_calls or [])
            finish = choice.finish_reason or finish
    return entries, finish


def _joined(entries: list[Any]) -> dict[int, list[str]]:
    """index -> [id, name, arguments]; the id and name come first, once, then argument pieces."""
    calls: dict[int, list[str]] = {}
    for e in entries:
        if e.index not in calls:
            assert e.id and e.type == "function" and e.function.name, e
            calls[e.index] = [e.id, e.function.name, e.function.arguments or ""]
        else:
            assert e.id is None and e.function.name is None, e
            calls[e.index][2] += e.function.arguments or ""
    return calls


@pytest.mark.parametrize("choice", ["named", "required"])
async def test_streamed_calls_are_openai_tool_call_deltas_equal_to_the_unstreamed_answer(
    node: tuple[RunningNode, NodeSetup], choice: str
) -> None:
    client = _client(node)
    tool_choice: Any = (
        {"type": "function", "function": {"name": "set_alarm"}} if choice == "named" else "required"
    )
    kwargs: dict[str, Any] = {"tools": TOOLS, "tool_choice": tool_choice, "max_tokens": 300, "seed": 11}
    entries, finish = await _streamed(client, **kwargs)
    assert finish == "tool_calls"
    calls = _joined(entries)
    assert sorted(calls) == list(range(len(calls))) and calls
    assert len(entries) > len(calls)  # the arguments came in pieces, after the name
    for _, name, arguments in calls.values():
        _valid(name, arguments)
    whole = await client.chat.completions.create(model=TINY, messages=USER, **kwargs)  # type: ignore[arg-type]
    assert [(c.function.name, c.function.arguments) for c in whole.choices[0].message.tool_calls or []] == [  # type: ignore[union-attr]
        (name, arguments) for _, name, arguments in calls.values()
    ]


async def test_auto_offers_the_tools_to_the_template_and_none_does_not(
    node: tuple[RunningNode, NodeSetup],
) -> None:
    client = _client(node)
    usage = {}
    for tool_choice in ("auto", "none", None):
        extra: dict[str, Any] = {} if tool_choice is None else {"tools": TOOLS, "tool_choice": tool_choice}
        reply = await client.chat.completions.create(
            model=TINY,
            messages=USER,  # type: ignore[arg-type]
            max_tokens=8,
            temperature=0,
            **extra,
        )
        choice = reply.choices[0]
        # random weights never write a <tool_call> block: the answer is text
        assert choice.message.tool_calls is None and choice.finish_reason in ("stop", "length")
        assert reply.usage is not None
        usage[tool_choice] = reply.usage.prompt_tokens
    assert usage["none"] == usage[None] < usage["auto"] - 100


async def test_strict_tools_under_auto_are_constrained_by_a_structural_tag_the_engine_compiles(
    node: tuple[RunningNode, NodeSetup], local_engine: LocalEngine
) -> None:
    strict = [{**t, "function": {**t["function"], "strict": True}} for t in TOOLS]
    request = GenerationRequest(
        request_id="r", model=TINY, messages=(ChatMessage(role="user", content="hi"),), tools=tuple(strict)
    )
    _, params, _ = local_engine._prepare(request)
    assert params.structured_outputs is not None and "<tool_call>" in params.structured_outputs.structural_tag
    for seed in range(3):
        reply = await _ask(node, tools=strict, max_tokens=64, seed=seed)
        choice = reply.choices[0]
        for call in choice.message.tool_calls or []:  # random weights rarely start a call
            _valid(call.function.name, call.function.arguments)
        assert choice.finish_reason in ("stop", "length", "tool_calls")


async def test_tool_calls_and_tool_results_round_trip_through_the_template(
    node: tuple[RunningNode, NodeSetup], local_engine: LocalEngine, tiny_model_dir: Path
) -> None:
    arguments = '{"unit": "celsius", "days": 2, "hourly": false}'
    reply = await _client(node).chat.completions.create(
        model=TINY,
        messages=[
            *USER,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": arguments},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 degrees"},
        ],  # type: ignore[list-item]
        tools=TOOLS,  # type: ignore[arg-type]
        max_tokens=4,
    )
    request = GenerationRequest(
        request_id="r",
        model=TINY,
        messages=(
            ChatMessage(role="user", content=USER[0]["content"]),
            ChatMessage(
                role="assistant",
                tool_calls=(
                    ToolCall(id="call_1", function=FunctionCall(name="get_weather", arguments=arguments)),
                ),
            ),
            ChatMessage(role="tool", content="sunny, 21 degrees", tool_call_id="call_1"),
        ),
        tools=tuple(TOOLS),
    )
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == local_engine.count_prompt_tokens(request)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    assert local_engine._renderer is not None
    text = tokenizer.decode(local_engine._renderer.render(request)[0])
    assert f'<tool_call>\n{{"name": "get_weather", "arguments": {arguments}}}\n</tool_call>' in text
    assert "<|im_start|>tool\nsunny, 21 degrees<|im_end|>" in text
    assert '"name": "set_alarm"' in text  # the tools are listed


BAD: list[tuple[str, dict[str, Any], str, str]] = [
    ("duplicate names", {"tools": [TOOLS[0], TOOLS[0]]}, "tools[1].function.name", "two tools are named"),
    (
        "invalid schema",
        {"tools": [_tool("f", {"type": "object", "properties": {"x": {"type": "nonsense"}}})]},
        "tools[0].function.parameters",
        "not a valid JSON Schema",
    ),
    (
        "parameters not an object",
        {"tools": [_tool("f", {"type": "string"})]},
        "tools[0].function.parameters",
        "must describe an object",
    ),
    ("bad name", {"tools": [_tool("no spaces", WEATHER)]}, "tools[0].function.name", "letters, digits"),
    (
        "remote reference",
        {"tools": [_tool("f", {"type": "object", "properties": {"a": {"$ref": "https://example.com/a"}}})]},
        "tools[0].function.parameters",
        "points outside the schema",
    ),
    (
        "schema xgrammar cannot generate under",
        {
            "tools": [
                _tool(
                    "f",
                    {"type": "object", "properties": {"a": {"type": "integer", "minimum": 5, "maximum": 1}}},
                )
            ],
            "tool_choice": "required",
        },
        "tools",
        "minimum greater than maximum",
    ),
    (
        "unknown function",
        {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "launch"}}},
        "tool_choice",
        "'launch'",
    ),
    ("bad choice", {"tools": TOOLS, "tool_choice": "always"}, "tool_choice", "'always'"),
    ("choice without tools", {"tool_choice": "auto"}, "tool_choice", "only allowed when `tools`"),
    ("parallel without tools", {"parallel_tool_calls": False}, "parallel_tool_calls", "only allowed"),
    ("not a function tool", {"tools": [{"type": "code"}]}, "tools[0]", "a tool must be"),
]


@pytest.mark.parametrize(("what", "fields", "param", "says"), BAD, ids=[b[0] for b in BAD])
async def test_bad_tool_definitions_are_400s_naming_the_fault(
    node: tuple[RunningNode, NodeSetup], what: str, fields: dict[str, Any], param: str, says: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await _client(node).chat.completions.create(
            model=TINY,
            messages=USER,  # type: ignore[arg-type]
            max_tokens=4,
            **fields,
        )
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["param"] == param, error
    assert says in error["message"], error


async def test_the_audit_log_holds_the_tools_and_the_calls_and_metrics_count_them(
    node: tuple[RunningNode, NodeSetup],
) -> None:
    running, setup = node
    tool_choice = {"type": "function", "function": {"name": "set_alarm"}}
    reply = await _ask(
        node,
        tool_choice=tool_choice,  # type: ignore[arg-type]
        parallel_tool_calls=False,
        max_tokens=100,
        seed=3,
    )
    [call] = reply.choices[0].message.tool_calls or []
    start, end = (await audit_records_by_request(setup))[reply.id]
    assert start["content"]["tools"] == TOOLS
    assert (start["content"]["tool_choice"], start["content"]["parallel_tool_calls"]) == (tool_choice, False)
    assert end["content"]["tool_calls"] == [
        {"id": call.id, "name": "set_alarm", "arguments": call.function.arguments}  # type: ignore[union-attr]
    ]
    assert end["meta"]["finish_reason"] == "tool_calls"
    async with httpx.AsyncClient(base_url=running.url) as http:
        metrics = (await http.get("/metrics")).text
    for feature in ("tools", "tool_calls"):
        line = f'bastion_feature_requests_total{{feature="{feature}",route="local"}}'
        assert line in metrics, metrics
        assert float(metrics.split(line)[1].split()[0]) >= 1
