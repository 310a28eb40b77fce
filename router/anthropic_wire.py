"""OpenAI-style requests in the Anthropic Messages API's terms (pure translation, no I/O).

System and developer messages become the top-level ``system``; the other turns
strictly alternate user/assistant, of content blocks: assistant tool calls are
``tool_use`` blocks, ``tool`` messages ``tool_result`` blocks in a user turn
(consecutive results share one turn, as the API requires). Function tools
become ``tools`` (``name``, ``description``, ``input_schema``); ``tool_choice``
``auto``/``required``/``none``/a named function becomes ``auto``/``any``/
``none``/``tool``, and ``parallel_tool_calls = false``
``disable_parallel_tool_use``.

``response_format`` (``json_object``, ``json_schema``) becomes a forced tool:
one more tool, named ``json_response`` (or a variant no client tool uses),
whose ``input_schema`` is the schema, and a ``tool_choice`` that makes the
model call it (``any`` when the client's own tools may be called instead). Its
input is the answer's text (``JsonAnswer`` tells the stream which tool that is).
A schema whose top level is not an object cannot be a tool's input: a 400.
"""

from __future__ import annotations

from typing import Any

import msgspec

from serving.errors import BadRequestError
from serving.protocol import ChatMessage, GenerationRequest
from serving.protocol import FinishReason as _FinishReason

__all__ = ["JSON_TOOL", "build_messages_body", "json_tool", "stop_reason_to_finish"]

#: the forced tool's name, unless a client tool has it
JSON_TOOL = "json_response"
_JSON_TOOL_DESCRIPTION = "Answer with this tool: its input is the whole answer, as the schema says."

_STOP: dict[str, _FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

_encode = msgspec.json.Encoder().encode
_decode_json = msgspec.json.decode


def stop_reason_to_finish(stop_reason: str | None) -> _FinishReason:
    return _STOP.get(stop_reason or "", "stop")


def build_messages_body(request: GenerationRequest, *, default_max_tokens: int) -> tuple[bytes, str | None]:
    """The Messages API body for an OpenAI-style request, translated as ``serving.contract`` says
    (the planner never sends here a request with a field marked unsupported for ``anthropic``),
    and the name of the forced tool that carries a ``response_format`` answer, if any."""
    messages = request.messages
    if isinstance(request.prompt, tuple):
        raise BadRequestError("the Messages API takes one prompt per request", param="prompt")
    if messages is None:
        messages = (ChatMessage(role="user", content=request.prompt or ""),)
    system = [m.content for m in messages if m.role in ("system", "developer") and m.content]
    turns: list[dict[str, Any]] = []
    for message in messages:
        if message.role in ("system", "developer"):
            continue
        role, blocks = _blocks(message)
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            # The API wants strictly alternating turns: parallel tool results share one user turn.
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    s = request.sampling
    body: dict[str, Any] = {
        "model": request.model,
        "messages": turns,
        "max_tokens": s.max_tokens or default_max_tokens,
        "stream": True,
    }
    if system:
        body["system"] = "\n\n".join(system)
    if s.temperature is not None:
        body["temperature"] = s.temperature
    if s.top_p is not None:
        body["top_p"] = s.top_p
    if s.stop:
        body["stop_sequences"] = list(s.stop)
    tools = [_tool(t) for t in request.tools or ()]
    choice = _tool_choice(request.tool_choice, request.parallel_tool_calls, {str(t["name"]) for t in tools})
    forced = json_tool(request.response_format, {str(t["name"]) for t in tools})
    if forced is not None:
        choice = _forcing(choice, forced, bool(tools), request.parallel_tool_calls)
        tools.append(forced)
    if tools:
        body["tools"] = tools
    if choice is not None:
        body["tool_choice"] = choice
    return _encode(body), None if forced is None else str(forced["name"])


def _forcing(
    choice: dict[str, object] | None, forced: dict[str, object], client_tools: bool, parallel: bool | None
) -> dict[str, object]:
    """The ``tool_choice`` under a ``response_format``: the answer is the forced tool's input, so
    the model must call a tool: the forced one, or one of the client's where the client let it."""
    kind = None if choice is None else choice["type"]
    if kind == "tool" and choice is not None:
        return choice  # the client named one of its tools: that call is the answer
    out: dict[str, object] = (
        {"type": "any"}
        if client_tools and kind in (None, "auto", "any")
        else {"type": "tool", "name": forced["name"]}
    )
    if parallel is False:
        out["disable_parallel_tool_use"] = True
    return out


def json_tool(response_format: dict[str, object] | None, taken: set[str]) -> dict[str, object] | None:
    """The forced tool for a ``response_format`` (``None``: plain text), named apart from ``taken``."""
    if response_format is None or response_format.get("type") in (None, "text"):
        return None
    kind = response_format.get("type")
    schema: object = {"type": "object"}
    description = _JSON_TOOL_DESCRIPTION
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict):
            raise BadRequestError("`json_schema` is required for a JSON schema", param="response_format")
        schema = spec.get("schema") or {"type": "object"}
        if isinstance(spec.get("description"), str) and spec["description"]:
            description = f"{description} {spec['description']}"
    elif kind != "json_object":
        raise BadRequestError(f"response_format type {kind!r} is not supported", param="response_format")
    if not isinstance(schema, dict) or schema.get("type", "object") != "object":
        raise BadRequestError(
            "the Messages API takes a response_format whose schema is an object at the top level only",
            param="response_format",
        )
    name, n = JSON_TOOL, 0
    while name in taken:
        n += 1
        name = f"{JSON_TOOL}_{n}"
    return {"name": name, "description": description, "input_schema": schema}


def _blocks(message: ChatMessage) -> tuple[str, list[dict[str, Any]]]:
    if message.role == "tool":
        result: dict[str, Any] = {
            "type": "tool_result",
            "tool_use_id": message.tool_call_id or "",
            "content": message.content or "",
        }
        return "user", [result]
    blocks: list[dict[str, Any]] = []
    if message.content:
        blocks.append({"type": "text", "text": message.content})
    if message.role == "assistant" and message.tool_calls:
        for call in message.tool_calls:
            try:
                arguments = _decode_json(call.function.arguments or "{}")
            except msgspec.DecodeError:
                raise BadRequestError("tool call arguments are not valid JSON", param="messages") from None
            if not isinstance(arguments, dict):
                raise BadRequestError("tool call arguments must be a JSON object", param="messages")
            blocks.append({"type": "tool_use", "id": call.id, "name": call.function.name, "input": arguments})
    return ("assistant" if message.role == "assistant" else "user"), blocks


def _tool_choice(
    choice: str | dict[str, object] | None, parallel: bool | None, names: set[str]
) -> dict[str, object] | None:
    """OpenAI's ``tool_choice`` and ``parallel_tool_calls`` as one Messages ``tool_choice``."""
    out: dict[str, object]
    if choice is None:
        out = {"type": "auto"}
    elif choice == "auto":
        out = {"type": "auto"}
    elif choice == "required":
        out = {"type": "any"}
    elif choice == "none":
        out = {"type": "none"}
    elif (
        isinstance(choice, dict)
        and isinstance(fn := choice.get("function"), dict)
        and isinstance(name := fn.get("name"), str)
    ):
        if names and name not in names:
            raise BadRequestError(
                f"tool_choice names {name!r}, which is not among the tools", param="tool_choice"
            )
        out = {"type": "tool", "name": name}
    else:
        raise BadRequestError(
            "tool_choice must be 'auto', 'required', 'none' or a named function", param="tool_choice"
        )
    if parallel is False and out["type"] != "none":
        out["disable_parallel_tool_use"] = True
    if choice is None and parallel is not False:
        return None  # nothing asked beyond the API's own default
    return out


def _tool(tool: dict[str, object]) -> dict[str, object]:
    fn = tool.get("function")
    if (
        tool.get("type", "function") != "function"
        or not isinstance(fn, dict)
        or not isinstance(fn.get("name"), str)
    ):
        raise BadRequestError("tools must be OpenAI function tools", param="tools")
    schema = fn.get("parameters") or {"type": "object"}
    if not isinstance(schema, dict) or schema.get("type", "object") != "object":
        raise BadRequestError(
            "the Messages API takes tools whose parameters are an object schema only", param="tools"
        )
    # JSON Schema lets `type` go unsaid; the Messages API wants it said
    out: dict[str, object] = {"name": fn["name"], "input_schema": {"type": "object", **schema}}
    if fn.get("description"):
        out["description"] = fn["description"]
    return out
