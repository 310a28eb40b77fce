"""Anthropic Messages API provider: translation both ways.

Out: ``router.anthropic_wire`` builds the Messages request. In: the event
stream (``message_start``, ``content_block_*``, ``message_delta``,
``message_stop``, ``error``) becomes ``Delta``s, with stop reasons and usage
mapped to OpenAI's: text deltas as text; a ``tool_use`` block's start and its
``input_json_delta`` fragments as OpenAI tool-call pieces (index from 0, id and
name first, then argument fragments), and the whole calls on the last delta.
The input of the tool that carries a ``response_format`` answer streams as the
answer's text instead, and an answer that is only that is ``stop``, not
``tool_calls``. A stream that ends before ``message_stop`` is an error.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import msgspec

from router.anthropic_wire import build_messages_body, stop_reason_to_finish
from router.config import ProviderConfig
from router.sse import SseEvent
from router.transport import ExternalProvider, Upstream, fold_batch, load_api_key
from serving.errors import UpstreamError
from serving.protocol import Delta, FunctionCall, GenerationRequest, ToolCall, ToolCallDelta

__all__ = ["ANTHROPIC_VERSION", "AnthropicProvider"]

ANTHROPIC_VERSION = "2023-06-01"


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
        body, json_tool = build_messages_body(request, default_max_tokens=self._config.default_max_tokens)
        state = _StreamState(json_tool)
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
                finish = stop_reason_to_finish(state.stop_reason)
                if finish == "tool_calls" and not calls:
                    finish = "stop"  # only the response_format tool was called: a plain answer
                yield Delta(
                    text="{}" if state.json_block is not None and not state.json_seen else "",
                    finish_reason=finish,
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
            elif event.delta.partial_json is not None and event.index == state.json_block:
                # the response_format answer, as text
                if event.delta.partial_json:
                    parts.append(event.delta.partial_json)
                    state.json_seen = True
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
            if block.type == "tool_use" and block.name == state.json_tool and state.json_block is None:
                state.json_block = event.index
            elif block.type == "tool_use":
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
        "json_block",
        "json_seen",
        "json_tool",
        "ordinal",
        "pieces",
        "prompt_tokens",
        "stop_reason",
        "stopped",
        "tools",
        "usage_final",
    )

    def __init__(self, json_tool: str | None = None) -> None:
        self.prompt_tokens = self.completion_tokens = self.cached = 0
        #: the tool whose input is the response_format answer, its block once started, and
        #: whether any of its input arrived
        self.json_tool = json_tool
        self.json_block: int | None = None
        self.json_seen = False
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
