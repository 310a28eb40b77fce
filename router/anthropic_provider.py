"""Anthropic Messages API provider: translation both ways.

Out: OpenAI-style chat (system/developer messages, assistant tool calls, tool
results) becomes a Messages request (top-level ``system``, strictly alternating
user/assistant turns of content blocks, ``tool_use``/``tool_result`` blocks,
required ``max_tokens``). In: the event stream (``message_start``,
``content_block_*``, ``message_delta``, ``message_stop``, ``error``) becomes
``Delta``s, with stop reasons and usage mapped to OpenAI's. A stream that ends
before ``message_stop`` is an error.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import msgspec

from router.config import ProviderConfig
from router.sse import SseEvent
from router.transport import ExternalProvider, Upstream, fold_batch, load_api_key
from serving.errors import BadRequestError, UpstreamError
from serving.protocol import (
    ChatMessage,
    Delta,
    FunctionCall,
    GenerationRequest,
    ToolCall,
    ToolCallDelta,
)
from serving.protocol import FinishReason as _FinishReason

__all__ = ["ANTHROPIC_VERSION", "AnthropicProvider", "build_messages_body", "stop_reason_to_finish"]

ANTHROPIC_VERSION = "2023-06-01"

_STOP: dict[str, _FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def stop_reason_to_finish(stop_reason: str | None) -> _FinishReason:
    return _STOP.get(stop_reason or "", "stop")


class _Block(msgspec.Struct):
    type: str = ""
    id: str | None = None
    name: str | None = None
    text: str | None = None


class _BlockDelta(msgspec.Struct):
    type: str = ""
    text: str | None = None
    partial_json: str | None = None
    stop_reason: str | None = None


class _Usage(msgspec.Struct):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None


class _Message(msgspec.Struct):
    usage: _Usage | None = None


class _Event(msgspec.Struct):
    type: str = ""
    index: int = 0
    message: _Message | None = None
    content_block: _Block | None = None
    delta: _BlockDelta | None = None
    usage: _Usage | None = None
    error: dict[str, Any] | None = None


_decode_event = msgspec.json.Decoder(_Event).decode
_encode = msgspec.json.Encoder().encode
_decode_json = msgspec.json.decode


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
            blocks.append({"type": "tool_use", "id": call.id, "name": call.function.name, "input": arguments})
    return ("assistant" if message.role == "assistant" else "user"), blocks


def build_messages_body(request: GenerationRequest, *, default_max_tokens: int) -> bytes:
    """The Messages API body for an OpenAI-style request, translated as ``serving.contract`` says
    (the planner never sends here a request with a field marked unsupported for ``anthropic``)."""
    messages = request.messages
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
    if request.tools:
        body["tools"] = [_tool(t) for t in request.tools]
    choice = _tool_choice(request.tool_choice, request.parallel_tool_calls)
    if choice is not None:
        body["tool_choice"] = choice
    return _encode(body)


def _tool_choice(choice: str | dict[str, object] | None, parallel: bool | None) -> dict[str, object] | None:
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
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise BadRequestError("tools must be OpenAI function tools", param="tools")
    out: dict[str, object] = {"name": fn["name"], "input_schema": fn.get("parameters") or {"type": "object"}}
    if fn.get("description"):
        out["description"] = fn["description"]
    return out


class AnthropicProvider(ExternalProvider):
    """A ``serving.protocol.Provider`` for the Anthropic Messages API."""

    kind = "anthropic"

    def __init__(self, config: ProviderConfig) -> None:
        secret = load_api_key(config)
        headers = {"anthropic-version": ANTHROPIC_VERSION}
        if secret is not None:
            headers["x-api-key"] = secret
        super().__init__(config, Upstream(config, auth_headers=headers, secret=secret))

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        body = build_messages_body(request, default_max_tokens=self._config.default_max_tokens)
        state = _StreamState()
        async for batch in self._upstream.batches("/v1/messages", body, terminal=_is_stop):
            # The text of every event that arrived in one read goes out as one delta.
            text, failure = fold_batch(batch, partial(self._absorb, state=state))
            pieces, state.pieces = state.pieces, []
            if text or pieces:
                yield Delta(
                    text=text,
                    prompt_tokens=state.prompt_tokens,
                    completion_tokens=state.completion_tokens,
                    tool_call_deltas=tuple(pieces) or None,
                )
            if failure is not None:
                raise failure
            if state.stopped:
                # Deliver the end now; the transport then lets the body finish.
                self._last_ok = time.monotonic()
                calls = tuple(
                    ToolCall(id=v[0], function=FunctionCall(name=v[1], arguments=v[2] or "{}"))
                    for v in state.tools.values()
                )
                # a tool without input streamed none: its arguments are "{}" streamed too
                empty = tuple(
                    ToolCallDelta(index=i, arguments="{}")
                    for i, v in enumerate(state.tools.values())
                    if not v[2]
                )
                yield Delta(
                    finish_reason=stop_reason_to_finish(state.stop_reason),
                    prompt_tokens=state.prompt_tokens,
                    completion_tokens=state.completion_tokens,
                    cached_tokens=state.cached,
                    tool_calls=calls or None,
                    tool_call_deltas=empty or None,
                )
                return
        raise UpstreamError(
            f"provider {self._config.name!r}: stream ended before message_stop", reason="stream-truncated"
        )

    def _absorb(self, sse: SseEvent, parts: list[str], *, state: _StreamState) -> UpstreamError | None:
        """Fold one event into ``state`` and ``parts``; the error it carries, if any."""
        name = self._config.name
        try:
            event = _decode_event(sse.data)
        except msgspec.DecodeError:
            return UpstreamError(f"provider {name!r}: malformed stream event", reason="malformed-stream")
        kind = event.type or sse.event
        if kind == "content_block_delta" and event.delta is not None:
            if event.delta.text:
                parts.append(event.delta.text)
                state.count_output()
            elif event.delta.partial_json is not None and event.index in state.tools:
                call = state.tools[event.index]
                call[2] += event.delta.partial_json
                if event.delta.partial_json:
                    state.pieces.append(
                        ToolCallDelta(index=state.ordinal[event.index], arguments=event.delta.partial_json)
                    )
                state.count_output()
        elif kind == "content_block_start" and event.content_block is not None:
            block = event.content_block
            if block.type == "tool_use":
                # OpenAI numbers tool calls from 0; a Messages block index counts text blocks too
                state.ordinal[event.index] = len(state.tools)
                state.tools[event.index] = [block.id or "", block.name or "", ""]
                state.pieces.append(
                    ToolCallDelta(index=state.ordinal[event.index], id=block.id or "", name=block.name or "")
                )
            elif block.text:
                parts.append(block.text)
                state.count_output()
        elif kind == "message_start" and event.message is not None and event.message.usage is not None:
            u = event.message.usage
            state.cached = u.cache_read_input_tokens or 0
            state.prompt_tokens = (u.input_tokens or 0) + state.cached + (u.cache_creation_input_tokens or 0)
            state.completion_tokens = u.output_tokens or 0
        elif kind == "message_delta":
            if event.delta is not None and event.delta.stop_reason is not None:
                state.stop_reason = event.delta.stop_reason
            if event.usage is not None and event.usage.output_tokens is not None:
                # the final usage: it replaces the events counted
                state.completion_tokens, state.usage_final = event.usage.output_tokens, True
        elif kind == "message_stop":
            state.stopped = True
        elif kind == "error":
            return UpstreamError(f"provider {name!r}: error event in stream", reason="upstream-stream-error")
        return None


class _StreamState:
    """What one Messages stream has told so far."""

    __slots__ = (
        "cached",
        "completion_tokens",
        "counted",
        "ordinal",
        "pieces",
        "prompt_tokens",
        "stop_reason",
        "stopped",
        "tools",
        "usage_final",
    )

    def __init__(self) -> None:
        self.prompt_tokens = self.completion_tokens = self.cached = 0
        #: events that carried output (text or tool input): about one token each
        self.counted = 0
        #: ``message_delta`` reported the output tokens
        self.usage_final = False
        self.stop_reason: str | None = None
        self.tools: dict[int, list[str]] = {}  # block index -> [id, name, partial json], in order
        self.ordinal: dict[int, int] = {}  # block index -> the tool call's OpenAI index
        #: tool-call pieces not yet delivered
        self.pieces: list[ToolCallDelta] = []
        self.stopped = False

    def count_output(self) -> None:
        """One event of output arrived: until the final usage, the running total is what was counted
        (``message_start`` reports only a placeholder for the output)."""
        self.counted += 1
        if not self.usage_final:
            self.completion_tokens = max(self.completion_tokens, self.counted)


def _is_stop(event: SseEvent) -> bool:
    return event.event == "message_stop"
