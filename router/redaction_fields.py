"""Where personal data can sit in a request: every text, visited in one fixed order.

``rewrite(request, visit)`` calls ``visit(text, slot)`` for each text redaction
covers and returns the request with each text replaced by what ``visit``
returned. Finding spans and replacing them both go through it, so the two can
never disagree about which texts there are.

Covered: the prompt; each message's content and ``name``; assistant tool
calls' function names and arguments; tool results (``tool`` messages'
content); tool definitions (names, descriptions, parameter schemas with their
descriptions, enum values and property names); a named ``tool_choice``; a
``response_format`` (its schema's name, description and schema).

Identifiers an API checks against ``^[a-zA-Z0-9_-]+$`` (function names,
message names) are visited with slot ``"name"``, so the caller can write a
placeholder that fits there (and read underscores there as word breaks). JSON
inside a string (tool-call arguments) is decoded, its keys and string and
integer values visited, and encoded again only when something changed: the
arguments stay valid JSON, byte for byte the same when nothing was found.
Arguments that are not JSON are visited as one text.

``texts`` lists what ``rewrite`` will visit without walking the JSON parts
(their keys, strings and integers are only read), and
``rewrite`` keeps a JSON part none of whose texts had a finding as it is: a
request with large tool definitions and personal data only in its messages
pays little for its tools.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable
from collections.abc import Set as AbstractSet
from typing import Literal

import msgspec

from serving.protocol import ChatMessage, GenerationRequest, prompts, rewrite_tool_calls

__all__ = ["Slot", "Visit", "rewrite", "scanned", "texts", "tool_texts"]

Slot = Literal["text", "name"]
Visit = Callable[[str, Slot], str]

_decode = msgspec.json.decode
_encode = msgspec.json.encode


def scanned(text: str, slot: Slot) -> str:
    """What detectors read for ``text``: in a name, underscores separate words (``pay_<IBAN>``),
    offsets unchanged."""
    return text.replace("_", " ") if slot == "name" else text


def tool_texts(request: GenerationRequest, skip: Container[int] = ()) -> list[list[str]]:
    """Each tool definition's texts (what ``texts`` and ``rewrite`` would read again); none for
    the definitions at the indexes in ``skip`` (known to hold nothing to redact)."""
    return [[] if i in skip else _tool_texts(t) for i, t in enumerate(request.tools or ())]


def texts(request: GenerationRequest, tools: list[list[str]] | None = None) -> list[str]:
    """Every text ``rewrite`` visits, as detectors read it (``scanned``); repeats included.
    ``tools``: what ``tool_texts`` gave for ``request``."""
    out: list[str] = []
    for m in request.messages or ():
        if m.content is not None:
            out.append(m.content)
        if m.name is not None:
            out.append(scanned(m.name, "name"))
        for c in m.tool_calls or ():
            out.append(scanned(c.function.name, "name"))
            out.extend(_arguments_texts(c.function.arguments))
    out.extend(prompts(request))
    for found in tool_texts(request) if tools is None else tools:
        out.extend(found)
    if (name := _choice_name(request.tool_choice)) is not None:
        out.append(scanned(name, "name"))
    if request.response_format is not None:
        out.extend(_leaves(request.response_format, []))
        if (name := _format_name(request.response_format)) is not None:
            out.append(scanned(name, "name"))
    return out


def rewrite(
    request: GenerationRequest,
    visit: Visit,
    hits: AbstractSet[str] | None = None,
    tools: list[list[str]] | None = None,
) -> GenerationRequest:
    """``request`` with ``visit`` applied to each text it holds (see the module's docstring).

    With ``hits`` (the texts, as ``texts`` gives them, where something was found), a tool
    definition or tool-call arguments none of whose texts is a hit is kept as it is, unwalked
    (``tools``: what ``tool_texts`` gave for ``request``)."""
    messages = None if request.messages is None else tuple(_message(m, visit, hits) for m in request.messages)
    prompt: str | tuple[str, ...] | None = None
    if isinstance(request.prompt, tuple):
        prompt = tuple(visit(p, "text") for p in request.prompt)
    elif request.prompt is not None:
        prompt = visit(request.prompt, "text")
    defined = request.tools
    if defined is not None:
        known = tool_texts(request) if tools is None else tools
        defined = tuple(
            t if hits is not None and hits.isdisjoint(seen) else _tool(t, visit)
            for t, seen in zip(defined, known, strict=True)
        )
    return msgspec.structs.replace(
        request,
        messages=messages,
        prompt=prompt,
        tools=defined,
        tool_choice=_tool_choice(request.tool_choice, visit),
        response_format=None if request.response_format is None else _format(request.response_format, visit),
    )


def _message(message: ChatMessage, visit: Visit, hits: AbstractSet[str] | None) -> ChatMessage:
    content = None if message.content is None else visit(message.content, "text")
    name = None if message.name is None else visit(message.name, "name")
    calls = message.tool_calls and rewrite_tool_calls(
        message.tool_calls,
        name=lambda n: visit(n, "name"),
        arguments=lambda a: (
            a if hits is not None and hits.isdisjoint(_arguments_texts(a)) else json_text(a, visit)
        ),
    )
    return msgspec.structs.replace(message, content=content, name=name, tool_calls=calls)


def json_text(text: str, visit: Visit) -> str:
    """JSON in a string with its keys and values visited, still valid JSON; not JSON: one text."""
    try:
        value = _decode(text)
    except msgspec.DecodeError:
        return visit(text, "text")
    walked = _walk(value, visit)
    return text if walked == value else _encode(walked).decode()


def _leaves(value: object, out: list[str]) -> list[str]:
    """Every text ``_walk`` visits in ``value`` (keys, strings, integers as digits), read without
    rebuilding anything."""
    if isinstance(value, dict):
        out.extend(k for k in value if isinstance(k, str))
        values: Iterable[object] = value.values()
    elif isinstance(value, list):
        values = value
    else:
        values = (value,)
    for v in values:
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, dict | list):
            _leaves(v, out)
        elif isinstance(v, int) and not isinstance(v, bool):
            out.append(str(v))
    return out


def _arguments_texts(arguments: str) -> list[str]:
    try:
        value = _decode(arguments)
    except msgspec.DecodeError:
        return [arguments]
    return _leaves(value, [])


def _tool_texts(tool: dict[str, object]) -> list[str]:
    out = _leaves(tool, [])
    fn = tool.get("function")
    if isinstance(fn, dict) and isinstance(name := fn.get("name"), str):
        out.append(scanned(name, "name"))
    return out


def _tool(tool: dict[str, object], visit: Visit) -> dict[str, object]:
    return {k: _function(v, visit) if k == "function" else _walk(v, visit) for k, v in tool.items()}


def _function(fn: object, visit: Visit) -> object:
    if not isinstance(fn, dict):
        return _walk(fn, visit)
    return {
        k: visit(v, "name") if k == "name" and isinstance(v, str) else _walk(v, visit) for k, v in fn.items()
    }


def _format(fmt: dict[str, object], visit: Visit) -> dict[str, object]:
    """A ``response_format``: its schema's name is a name; the rest (description, schema) JSON."""
    return {k: _function(v, visit) if k == "json_schema" else _walk(v, visit) for k, v in fmt.items()}


def _format_name(fmt: dict[str, object]) -> str | None:
    spec = fmt.get("json_schema")
    name = spec.get("name") if isinstance(spec, dict) else None
    return name if isinstance(name, str) else None


def _choice_name(choice: str | dict[str, object] | None) -> str | None:
    if isinstance(choice, dict) and isinstance(fn := choice.get("function"), dict):
        name = fn.get("name")
        return name if isinstance(name, str) else None
    return None


def _tool_choice(choice: str | dict[str, object] | None, visit: Visit) -> str | dict[str, object] | None:
    name = _choice_name(choice)
    if name is None or not isinstance(choice, dict) or not isinstance(fn := choice.get("function"), dict):
        return choice
    return {**choice, "function": {**fn, "name": visit(name, "name")}}


def _walk(value: object, visit: Visit) -> object:
    """A decoded JSON value with its strings, integers and keys visited (a changed integer
    becomes the string ``visit`` returned)."""
    if isinstance(value, str):
        return visit(value, "text")
    if isinstance(value, dict):
        return {visit(k, "text") if isinstance(k, str) else k: _walk(v, visit) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v, visit) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        digits = str(value)
        out = visit(digits, "text")
        return value if out == digits else out
    return value
