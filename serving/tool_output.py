"""Reading tool calls out of a local model's output as it streams.

Three readers, one per ``serving.tools.ToolPlan`` mode that calls tools:

- ``NamedCall``: the whole output is the named function's arguments (generated under its schema);
- ``RequiredCalls``: the output is ``{"name": ..., "arguments": ...}`` or an array of those
  (generated under ``serving.tools``' calls schema), read incrementally;
- ``ParsedCalls``: ``tool_choice = "auto"``, the output is read by vLLM's tool parser for the model
  family (``tool_parser`` in ``models.toml``): text is content, a call in the family's syntax
  becomes a call.

Each turns text as it arrives into content and ``ToolCallDelta`` fragments (the first fragment of
a call carries its id and name, later ones pieces of its arguments), so a streamed response
sends OpenAI's tool-call deltas as the model generates them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import msgspec

from serving.errors import BadRequestError
from serving.protocol import Delta, FunctionCall, GenerationRequest, ToolCall, ToolCallDelta
from serving.tools import ToolPlan

__all__ = [
    "NamedCall",
    "ParsedCalls",
    "RequiredCalls",
    "ToolReader",
    "ToolSetup",
    "ToolStream",
    "new_call_id",
    "reader_for",
    "structured_outputs",
    "tool_parser_class",
]


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


class ToolReader(Protocol):
    #: whether any call was read
    called: bool

    def feed(self, text: str, token_ids: Sequence[int]) -> tuple[str, list[ToolCallDelta]]:
        """Content and call fragments from the next piece of output."""
        ...

    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        """What is left once the output ended."""
        ...


class NamedCall:
    """The output is the arguments of one call to ``name``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.called = False

    def feed(self, text: str, token_ids: Sequence[int]) -> tuple[str, list[ToolCallDelta]]:
        if self.called:
            return "", [ToolCallDelta(index=0, arguments=text)] if text else []
        self.called = True
        return "", [ToolCallDelta(index=0, id=new_call_id(), name=self.name, arguments=text)]

    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        return self.feed("", ())


class RequiredCalls:
    """Reads ``{"name": "f", "arguments": {...}}`` objects, alone or in an array, as they stream.

    A small JSON scanner: members other than ``name`` and ``arguments`` are skipped, arguments
    that come before the name are held until the name is known, whitespace is allowed between
    tokens. Text that is not such a call ends the reading (the grammar rules it out).
    """

    def __init__(self) -> None:
        self.called = False
        self._buf = ""
        self._pos = 0
        self._state = "start"  # start | items | members | value | done
        self._array = False
        self._index = -1
        self._key = ""
        self._name: str | None = None
        self._held = ""  # arguments read before the call's name
        self._depth = 0
        self._in_string = False
        self._escaped = False
        self._started = False  # the current value has begun

    def feed(self, text: str, token_ids: Sequence[int]) -> tuple[str, list[ToolCallDelta]]:
        self._buf += text
        out: list[ToolCallDelta] = []
        while True:
            before = (self._pos, self._state)
            self._step(out)
            if (self._pos, self._state) == before:
                return "", out

    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        return "", []

    def _peek(self) -> str | None:
        """The next non-whitespace character (whitespace consumed), or None at the end."""
        while self._pos < len(self._buf) and self._buf[self._pos] in " \t\r\n":
            self._pos += 1
        return self._buf[self._pos] if self._pos < len(self._buf) else None

    def _string(self) -> str | None:
        """A complete JSON string at the position (consumed), or None if it has not ended yet."""
        i, escaped = self._pos + 1, False
        while i < len(self._buf):
            c = self._buf[i]
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                try:
                    value = json.loads(self._buf[self._pos : i + 1])
                except ValueError:
                    return None
                self._pos = i + 1
                return str(value)
            i += 1
        return None

    def _step(self, out: list[ToolCallDelta]) -> None:
        if self._state == "value" and self._started:
            self._value(out)
            return
        c = self._peek()
        if c is None or self._state == "done":
            return
        if self._state in ("start", "items"):
            self._pos += 1
            if c == "[" and self._state == "start":
                self._array, self._state = True, "items"
            elif c == "{":
                self._open_call()
            elif c == "]" or c != ",":
                self._state = "done"
        elif self._state == "members":
            self._member(c, out)
        elif self._key == "name" and c == '"':
            name = self._string()
            if name is not None:
                self._name, self.called = name, True
                out.append(
                    ToolCallDelta(index=self._index, id=new_call_id(), name=name, arguments=self._held)
                )
                self._held, self._state = "", "members"
        else:
            self._started = True
            self._value(out)

    def _member(self, c: str, out: list[ToolCallDelta]) -> None:
        if c == ",":
            self._pos += 1
        elif c == "}":
            self._pos += 1
            self._close_call(out)
            self._state = "items" if self._array else "done"
        elif c != '"':
            self._state = "done"
        else:
            at = self._pos
            key = self._string()
            if key is None:
                return
            colon = self._peek()
            if colon is None:
                self._pos = at  # read the key again once its colon arrived
                return
            if colon != ":":
                self._state = "done"
                return
            self._pos += 1
            self._key, self._state = key, "value"
            self._depth, self._in_string, self._escaped, self._started = 0, False, False, False

    def _value(self, out: list[ToolCallDelta]) -> None:
        """Consume as much of the current value as is there; back to ``members`` once it ends."""
        start = self._pos
        while self._pos < len(self._buf):
            c = self._buf[self._pos]
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif c == "\\":
                    self._escaped = True
                elif c == '"':
                    self._in_string = False
            elif c == '"':
                self._in_string = True
            elif c in "{[":
                self._depth += 1
            elif c in "}],":
                if self._depth == 0:  # a scalar ended at the enclosing object's delimiter
                    self._state = "members"
                    break
                if c != ",":
                    self._depth -= 1
            elif self._depth == 0 and c in " \t\r\n":  # a scalar ended at whitespace
                self._state = "members"
                break
            self._pos += 1
            if self._depth == 0 and not self._in_string and c in '}]"':
                self._state = "members"
                break
        piece = self._buf[start : self._pos]
        if self._key == "arguments" and piece:
            if self._name is None:
                self._held += piece
            else:
                out.append(ToolCallDelta(index=self._index, arguments=piece))

    def _open_call(self) -> None:
        self._index += 1
        self._name, self._held, self._state = None, "", "members"

    def _close_call(self, out: list[ToolCallDelta]) -> None:
        if self._name is None and self._held:  # never named: keep what was generated
            self.called = True
            out.append(ToolCallDelta(index=self._index, id=new_call_id(), name="", arguments=self._held))


class ParsedCalls:
    """``tool_choice = "auto"``: vLLM's tool parser for the model family reads the output."""

    def __init__(self, parser: Any, request: Any, *, single: bool) -> None:
        self._parser = parser
        self._request = request
        self._single = single
        self._text = ""
        self._ids: list[int] = []
        self._content = ""
        self._args: dict[int, str] = {}
        self.called = False

    def feed(self, text: str, token_ids: Sequence[int]) -> tuple[str, list[ToolCallDelta]]:
        previous, previous_ids = self._text, self._ids
        self._text, self._ids = previous + text, previous_ids + list(token_ids)
        msg = self._parser.extract_tool_calls_streaming(
            previous, self._text, text, previous_ids, self._ids, list(token_ids), self._request
        )
        if msg is None:
            return "", []
        content = msg.content or ""
        self._content += content
        out: list[ToolCallDelta] = []
        for call in msg.tool_calls or ():
            if self._single and call.index > 0:
                continue
            fn = call.function
            name = fn.name if fn is not None else None
            args = (fn.arguments if fn is not None else None) or ""
            if name is not None:
                self.called = True
            self._args[call.index] = self._args.get(call.index, "") + args
            out.append(
                ToolCallDelta(
                    index=call.index,
                    id=new_call_id() if name is not None else None,
                    name=name,
                    arguments=args,
                )
            )
        return content, out

    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        if not self.called:
            # text the parser held back (it might have begun a call's tag) is content after all
            rest = self._text[len(self._content) :] if self._text.startswith(self._content) else ""
            self._content += rest
            return rest, []
        # what the whole output parses to: any arguments the stream has not sent yet
        final = self._parser.extract_tool_calls(self._text, self._request)
        out: list[ToolCallDelta] = []
        for i, call in enumerate(final.tool_calls[:1] if self._single else final.tool_calls):
            sent = self._args.get(i)
            if sent is None:
                out.append(
                    ToolCallDelta(
                        index=i, id=new_call_id(), name=call.function.name, arguments=call.function.arguments
                    )
                )
            elif call.function.arguments.startswith(sent) and len(call.function.arguments) > len(sent):
                out.append(ToolCallDelta(index=i, arguments=call.function.arguments[len(sent) :]))
        return "", out


def tool_parser_class(name: str) -> type[Any]:
    """vLLM's tool parser called ``name``; ``ValueError`` naming the ones it has otherwise."""
    from vllm.tool_parsers import ToolParserManager

    try:
        return ToolParserManager.get_tool_parser(name)
    except KeyError:
        known = ", ".join(ToolParserManager.list_registered())
        raise ValueError(f"vLLM has no tool parser {name!r}; it has: {known}") from None


class ToolSetup(NamedTuple):
    """How one generation serves its tools."""

    reader: ToolReader | None
    #: whether special tokens are dropped from the output text (some families' call markers are
    #: special tokens; their parser says so)
    skip_special_tokens: bool = True
    #: ``auto`` with ``strict`` tools: the xgrammar structural tag that holds each call the model
    #: starts to its tool's schema (JSON text), while text outside calls stays free
    structural_tag: str | None = None


def reader_for(
    plan: ToolPlan, request: GenerationRequest, parser_cls: type[Any] | None, tokenizer: Any
) -> ToolSetup:
    """How a generation serves its tool plan. ``BadRequestError`` for ``strict`` tools under
    ``auto`` on a family whose calls vLLM cannot constrain."""
    if plan.mode == "named":
        assert plan.name is not None
        return ToolSetup(NamedCall(plan.name))
    if plan.mode == "required":
        return ToolSetup(RequiredCalls())
    if plan.mode == "none" or parser_cls is None:
        return ToolSetup(None)
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    vllm_request = ChatCompletionRequest.model_validate(
        {
            "model": request.model,
            "messages": [],
            "tools": list(request.tools or ()),
            "tool_choice": "auto",
            "parallel_tool_calls": not plan.single,
        }
    )
    tag = _strict_tag(parser_cls, vllm_request.tools or [], single=plan.single)
    parser = parser_cls(tokenizer, vllm_request.tools)
    vllm_request = parser.adjust_request(vllm_request)
    return ToolSetup(
        ParsedCalls(parser, vllm_request, single=plan.single),
        skip_special_tokens=bool(vllm_request.skip_special_tokens),
        structural_tag=tag,
    )


def _strict_tag(parser_cls: type[Any], tools: list[Any], *, single: bool) -> str | None:
    """The structural tag for ``strict`` tools under ``auto`` (``None`` when no tool is strict)."""
    if not any(getattr(t.function, "strict", None) for t in tools):
        return None
    model = getattr(parser_cls, "structural_tag_model", None)
    if model is None:
        raise BadRequestError(
            "`strict` tools with tool_choice 'auto' need a model family whose calls vLLM can "
            f"constrain, and this model's tool parser ({parser_cls.__name__}) has none; use "
            "tool_choice 'required' or a named function (always schema-valid), or drop `strict`",
            param="tools",
        )
    from vllm.tool_parsers.structural_tag_registry import get_model_structural_tag, limit_to_single_tool_call

    tag = get_model_structural_tag(model=model, tools=tools, tool_choice="auto", reasoning=False)
    if tag is None:
        return None
    if single:
        limit_to_single_tool_call(tag)
    return json.dumps(tag.model_dump())


class ToolStream:
    """One generation's output read for tool calls, delta by delta: content stays text, calls
    become ``tool_call_deltas`` as they are generated, and the last delta carries the whole calls
    in ``tool_calls`` (for whoever collects the answer) and finishes with ``tool_calls`` when the
    generation ended on its own after a call."""

    def __init__(self, reader: ToolReader) -> None:
        self.reader = reader
        self._calls: dict[int, list[str]] = {}  # index -> [id, name, arguments]

    def delta(self, delta: Delta, token_ids: Sequence[int]) -> Delta:
        content, pieces = self.reader.feed(delta.text, token_ids)
        reason = delta.finish_reason
        if reason is not None:
            rest, more = self.reader.finish()
            content, pieces = content + rest, pieces + more
        for p in pieces:
            call = self._calls.setdefault(p.index, ["", "", ""])
            call[0] = p.id if p.id is not None else call[0]
            call[1] = p.name if p.name is not None else call[1]
            call[2] += p.arguments
        whole = None
        if reason is not None and self._calls:
            whole = tuple(
                ToolCall(id=i, function=FunctionCall(name=n, arguments=a))
                for i, n, a in (self._calls[k] for k in sorted(self._calls))
            )
            reason = "tool_calls" if reason == "stop" else reason
        return msgspec.structs.replace(
            delta,
            text=content,
            tool_call_deltas=tuple(pieces) or None,
            tool_calls=whole,
            finish_reason=reason,
        )


def structured_outputs(json_schema: str | None, plan: ToolPlan | None, tools: ToolSetup) -> Any:
    """vLLM's ``StructuredOutputsParams`` for a generation: its tools' calls schema or structural
    tag, or the JSON schema its answer must follow; ``None`` when neither applies."""
    from vllm.sampling_params import StructuredOutputsParams

    calls = plan.schema if plan is not None else None
    if json_schema is not None and (calls is not None or tools.structural_tag is not None):
        raise BadRequestError(
            "a JSON answer format cannot be combined with tool_choice 'required', a named function "
            "or `strict` tools on this route",
            param="tool_choice" if calls is not None else "tools",
        )
    if tools.structural_tag is not None:
        return StructuredOutputsParams(structural_tag=tools.structural_tag)
    schema = calls if calls is not None else json_schema
    return None if schema is None else StructuredOutputsParams(json=schema, disable_any_whitespace=True)
