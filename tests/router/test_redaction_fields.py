"""Redaction reaches every place a request can carry personal data, and restoration brings the
values back into tool calls (names, arguments streamed in pieces) with the JSON kept valid."""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from router.redaction import Redactor
from router.redaction_fields import Slot, rewrite, scanned, texts
from router.restorer import Restorer
from serving.protocol import ChatMessage, Delta, FunctionCall, GenerationRequest, ToolCall, ToolCallDelta

REDACTOR = Redactor()
_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")

EMAIL = "jane.roe@example.org"
IBAN = "GB82WEST12345698765432"
CARD = "4111111111111111"
IP = "10.1.2.3"


def _tool(name: str, description: str, schema: dict[str, Any]) -> dict[str, object]:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": schema}}


def _everywhere() -> GenerationRequest:
    schema = {
        "type": "object",
        "properties": {
            "account": {"type": "string", "description": f"defaults to {IBAN}"},
            "notify": {"type": "string", "enum": [EMAIL, "nobody"]},
            IP: {"type": "boolean"},
        },
        "required": ["account"],
    }
    return GenerationRequest(
        request_id="r",
        model="m",
        messages=(
            ChatMessage(role="user", content="pay the invoice", name=f"clerk-{IBAN}"),
            ChatMessage(
                role="assistant",
                tool_calls=(
                    ToolCall(
                        id="c1",
                        function=FunctionCall(
                            name=f"pay-{IBAN}", arguments=json.dumps({"to": EMAIL, "card": int(CARD)})
                        ),
                    ),
                ),
            ),
            ChatMessage(role="tool", tool_call_id="c1", content=f"receipt sent to {EMAIL}"),
        ),
        tools=(_tool(f"pay-{IBAN}", f"Pays from the account of {EMAIL}", schema),),
        tool_choice={"type": "function", "function": {"name": f"pay-{IBAN}"}},
    )


def test_no_value_is_left_in_any_field_and_names_and_json_stay_valid() -> None:
    result = REDACTOR.redact(_everywhere())
    sent = msgspec.json.encode(result.request).decode()
    for value in (EMAIL, IBAN, CARD, IP):
        assert value not in sent, value
    request = result.request
    assert request.tools is not None and request.messages is not None
    fn: Any = request.tools[0]["function"]
    assert _NAME.match(fn["name"]) and fn["name"] == "pay-IBAN_1"
    assert fn["parameters"]["properties"]["notify"]["enum"] == ["[EMAIL_1]", "nobody"]
    assert "[IP_ADDRESS_1]" in fn["parameters"]["properties"]
    assert request.tool_choice == {"type": "function", "function": {"name": "pay-IBAN_1"}}
    assert request.messages[0].name == "clerk-IBAN_1"
    call = (request.messages[1].tool_calls or ())[0]
    assert call.function.name == "pay-IBAN_1"
    assert json.loads(call.function.arguments) == {"to": "[EMAIL_1]", "card": "[CARD_1]"}
    assert request.messages[2].content == "receipt sent to [EMAIL_1]"
    assert result.counts == {"EMAIL": 4, "IBAN": 5, "CARD": 1, "IP_ADDRESS": 1}


def test_a_response_format_schema_is_covered_and_the_json_answer_restored_as_json() -> None:
    fmt = {
        "type": "json_schema",
        "json_schema": {
            "name": f"card_{CARD}",
            "description": f"Filed by {EMAIL}",
            "schema": {"type": "object", "properties": {"to": {"enum": [EMAIL]}}},
        },
    }
    request = GenerationRequest(request_id="r", model="m", prompt="go", response_format=fmt)
    result = REDACTOR.redact(request)
    assert CARD not in msgspec.json.encode(result.request).decode()
    assert EMAIL not in msgspec.json.encode(result.request).decode()
    spec: Any = (result.request.response_format or {})["json_schema"]
    assert spec["name"] == "card_CARD_1" and spec["description"] == "Filed by [EMAIL_1]"
    restorer = Restorer({"[EMAIL_1]": 'a"b@example.org'}, json=True)  # as Redaction.restorer() makes it
    answer = restorer.feed('{"to": "[EMA') + restorer.feed('IL_1]"}') + restorer.flush()
    assert json.loads(answer) == {"to": 'a"b@example.org'}


def test_an_underscore_separates_words_in_a_function_name() -> None:
    request = GenerationRequest(
        request_id="r", model="m", prompt="go", tools=(_tool(f"pay_{IBAN}", "", {"type": "object"}),)
    )
    fn: Any = (REDACTOR.redact(request).request.tools or ())[0]["function"]
    assert fn["name"] == "pay_IBAN_1"


def test_arguments_without_personal_data_are_sent_byte_for_byte() -> None:
    arguments = '{ "city" : "Paris",  "days": 3.0 }'
    request = GenerationRequest(
        request_id="r",
        model="m",
        messages=(
            ChatMessage(
                role="assistant",
                tool_calls=(ToolCall(id="c", function=FunctionCall(name="w", arguments=arguments)),),
            ),
        ),
    )
    out = REDACTOR.redact(request).request.messages or ()
    assert (out[0].tool_calls or ())[0].function.arguments == arguments


def test_tool_calls_come_back_restored_streamed_or_whole() -> None:
    result = REDACTOR.redact(_everywhere())
    arguments = '{"to": "[EMAIL_1]", "from": "[IBAN_1]"}'
    # the arguments in pieces cut inside the placeholders, then the whole call on the last delta
    cuts = [arguments[:9], arguments[9:14], arguments[14:30], arguments[30:]]
    restorer = result.restorer()
    pieces: list[ToolCallDelta] = []
    first = restorer.delta(Delta(tool_call_deltas=(ToolCallDelta(index=0, id="t", name="pay-IBAN_1"),)))
    pieces.extend(first.tool_call_deltas or ())
    for cut in cuts:
        out = restorer.delta(Delta(tool_call_deltas=(ToolCallDelta(index=0, arguments=cut),)))
        pieces.extend(out.tool_call_deltas or ())
    whole = ToolCall(id="t", function=FunctionCall(name="pay-IBAN_1", arguments=arguments))
    last = restorer.delta(Delta(finish_reason="tool_calls", tool_calls=(whole,)))
    pieces.extend(last.tool_call_deltas or ())
    streamed = "".join(p.arguments for p in pieces)
    assert pieces[0].name == f"pay-{IBAN}"
    assert json.loads(streamed) == {"to": EMAIL, "from": IBAN}
    assert last.tool_calls is not None
    assert last.tool_calls[0].function.name == f"pay-{IBAN}"
    assert last.tool_calls[0].function.arguments == streamed


def test_a_restored_value_is_escaped_for_the_json_string_it_stands_in() -> None:
    restorer = Restorer({"[PERSON_1]": 'Anna "Nan" Back\\slash'}).arguments()
    assert json.loads(restorer.restore('{"who": "[PERSON_1]"}')) == {"who": 'Anna "Nan" Back\\slash'}


_VALUES = st.sampled_from([EMAIL, IBAN, CARD, IP, "+49 30 901820", "DE89 3704 0044 0532 0130 00"])
_PLACES = st.sampled_from(
    [
        "prompt",
        "user",
        "system",
        "tool_result",
        "arguments",
        "argument_key",
        "description",
        "parameter_description",
        "enum",
        "nested_enum",
    ]
)


def _placed(place: str, value: str, filler: str) -> GenerationRequest:
    """A chat request carrying ``value`` at ``place`` (and ``filler`` text beside it)."""
    text = {"user": f"{filler} {value}", "system": f"{value} {filler}", "tool_result": f"{filler}: {value}"}
    args: dict[str, Any] = {"q": filler}
    if place == "arguments":
        args["who"] = f"{filler} {value}"
    elif place == "argument_key":
        args[value] = filler
    param: dict[str, Any] = {"type": "string", "description": filler}
    if place == "parameter_description":
        param["description"] = f"{filler} ({value})"
    elif place == "enum":
        param["enum"] = [filler, value]
    elif place == "nested_enum":
        param = {"type": "array", "items": {"type": "object", "properties": {"x": {"enum": [value]}}}}
    schema = {"type": "object", "properties": {"p": param}}
    description = f"{filler} {value}" if place == "description" else filler
    call = ToolCall(id="c", function=FunctionCall(name="f", arguments=json.dumps(args)))
    return GenerationRequest(
        request_id="r",
        model="m",
        messages=(
            ChatMessage(role="system", content=text.get(place, filler) if place == "system" else filler),
            ChatMessage(role="user", content=text["user"] if place == "user" else filler),
            ChatMessage(role="assistant", tool_calls=(call,)),
            ChatMessage(
                role="tool",
                tool_call_id="c",
                content=text["tool_result"] if place == "tool_result" else filler,
            ),
        )
        if place != "prompt"
        else None,
        prompt=f"{filler} {value}" if place == "prompt" else None,
        tools=(_tool("f", description, schema),),
    )


@settings(max_examples=150, deadline=None)
@given(value=_VALUES, place=_PLACES, filler=st.text(alphabet="abcdefgh ", min_size=0, max_size=12))
def test_a_value_anywhere_never_leaves_and_the_request_stays_well_formed(
    value: str, place: str, filler: str
) -> None:
    request = _placed(place, value, filler)
    result = REDACTOR.redact(request)
    sent = msgspec.json.encode(result.request).decode()
    assert value not in sent and json.dumps(value)[1:-1] not in sent
    assert sum(result.counts.values()) >= 1
    for m in result.request.messages or ():
        for c in m.tool_calls or ():
            json.loads(c.function.arguments)  # still JSON
    # restoring the redacted texts gives the client's values back
    restorer = result.restorer()
    assert restorer.restore(result.request.prompt or "") == (request.prompt or "")
    pairs = zip(request.messages or (), result.request.messages or (), strict=True)
    for original, redacted in pairs:
        assert restorer.restore(redacted.content or "") == (original.content or "")
        for a, b in zip(original.tool_calls or (), redacted.tool_calls or (), strict=True):
            restored = restorer.arguments().restore(b.function.arguments)
            assert json.loads(restored) == json.loads(a.function.arguments)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(schema=_JSON, arguments=_JSON)
def test_the_texts_read_cover_every_text_rewritten(schema: Any, arguments: Any) -> None:
    """``texts`` (what detectors scan) holds every text ``rewrite`` visits, so none goes out
    unscanned and no part is wrongly kept as it was."""
    call = ToolCall(id="c", function=FunctionCall(name="f_g", arguments=json.dumps(arguments)))
    request = GenerationRequest(
        request_id="r",
        model="m",
        messages=(ChatMessage(role="assistant", name="a_b", tool_calls=(call,)),),
        tools=({"type": "function", "function": {"name": "f_g", "parameters": schema}, "x": schema},),
        tool_choice={"type": "function", "function": {"name": "f_g"}},
    )
    visited: list[str] = []

    def visit(text: str, slot: Slot) -> str:
        visited.append(scanned(text, slot))
        return text

    rewrite(request, visit)
    assert set(visited) <= set(texts(request))


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.sampled_from([EMAIL, IBAN, 'Anna "A" \\ B']), min_size=1, max_size=3),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=8),
)
def test_streamed_arguments_restore_to_the_whole_calls_arguments_wherever_they_are_cut(
    values: list[str], cuts: list[int]
) -> None:
    mapping = {f"[PERSON_{i + 1}]": v for i, v in enumerate(values)}
    arguments = json.dumps({f"k{i}": f"x {p} y" for i, p in enumerate(mapping)})
    bounds = sorted({min(c, len(arguments)) for c in cuts} | {0, len(arguments)})
    restorer = Restorer(mapping)
    streamed = ""
    for start, end in itertools.pairwise(bounds):
        out = restorer.delta(
            Delta(tool_call_deltas=(ToolCallDelta(index=0, arguments=arguments[start:end]),))
        )
        streamed += "".join(p.arguments for p in out.tool_call_deltas or ())
    whole = ToolCall(id="c", function=FunctionCall(name="f", arguments=arguments))
    last = restorer.delta(Delta(finish_reason="tool_calls", tool_calls=(whole,)))
    streamed += "".join(p.arguments for p in last.tool_call_deltas or ())
    assert last.tool_calls is not None and streamed == last.tool_calls[0].function.arguments
    assert json.loads(streamed) == {f"k{i}": f"x {v} y" for i, v in enumerate(values)}


def test_a_tool_definition_found_clean_is_not_scanned_again_and_nothing_else_changes() -> None:
    redactor = Redactor()
    clean = _tool("weather", "The weather in a city.", {"type": "object"})
    personal = _tool("pay", f"Pays from {IBAN}", {"type": "object"})
    literal = _tool("echo", "Says [EMAIL_1] back", {"type": "object"})  # a placeholder written as is
    request = GenerationRequest(
        request_id="r", model="m", prompt=f"mail {EMAIL}", tools=(clean, personal, literal)
    )
    first = redactor.redact(request)
    assert len(redactor._clean_tools) == 1  # only the clean one, by digest
    second = redactor.redact(request)
    assert second.request == first.request and second.mapping == first.mapping
    assert second.request.prompt == "mail [EMAIL_2]"  # the literal one is still read every time
    fn: Any = (second.request.tools or ())[1]["function"]
    assert fn["description"] == "Pays from [IBAN_1]"
