"""OpenAI-compatible external provider: OpenAI, Azure OpenAI, vLLM, TGI, Ollama, a peer Bastion.

Streams ``/chat/completions`` (or ``/completions`` for a plain prompt) with
``stream_options.include_usage`` and turns chunks into ``Delta``s. Tool-call
fragments are passed on as they come (``Delta.tool_call_deltas``) and delivered
whole on the last delta too. A stream that
ends without a finish reason is an error, never a clean end (the cut-stream bug
of other gateways).
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
from serving.errors import UpstreamError
from serving.protocol import (
    Delta,
    FunctionCall,
    GenerationRequest,
    TokenLogprob,
    ToolCall,
    ToolCallDelta,
    TopLogprob,
    choices,
    message_dict,
)
from serving.protocol import FinishReason as _FinishReason

__all__ = ["OpenAIProvider"]

_FINISH: dict[str, _FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}


class _Fn(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class _ToolFragment(msgspec.Struct):
    index: int = 0
    id: str | None = None
    function: _Fn | None = None


class _ChunkDelta(msgspec.Struct):
    content: str | None = None
    tool_calls: list[_ToolFragment] | None = None


class _TopLogprob(msgspec.Struct):
    token: str
    logprob: float
    bytes: list[int] | None = None


class _TokenLogprob(msgspec.Struct):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[_TopLogprob] = []


class _Logprobs(msgspec.Struct):
    """Chat's ``content`` entries, or the legacy completions object."""

    content: list[_TokenLogprob] | None = None
    tokens: list[str] | None = None
    token_logprobs: list[float | None] | None = None
    top_logprobs: list[dict[str, float] | None] | None = None

    def parsed(self) -> tuple[TokenLogprob, ...]:
        if self.content is not None:
            return tuple(
                TokenLogprob(
                    token=t.token,
                    logprob=t.logprob,
                    utf8=None if t.bytes is None else tuple(t.bytes),
                    top=tuple(
                        TopLogprob(
                            token=a.token, logprob=a.logprob, utf8=None if a.bytes is None else tuple(a.bytes)
                        )
                        for a in t.top_logprobs
                    ),
                )
                for t in self.content
            )
        tokens = self.tokens or []
        values = self.token_logprobs or []
        tops = self.top_logprobs or []
        return tuple(
            TokenLogprob(
                token=token,
                logprob=_NO_LOGPROB if i >= len(values) or values[i] is None else float(values[i] or 0.0),
                utf8=tuple(token.encode()),
                top=tuple(
                    TopLogprob(token=k, logprob=v, utf8=tuple(k.encode()))
                    for k, v in ((tops[i] or {}) if i < len(tops) else {}).items()
                ),
            )
            for i, token in enumerate(tokens)
        )


class _Choice(msgspec.Struct):
    index: int = 0
    delta: _ChunkDelta | None = None
    text: str | None = None
    finish_reason: str | None = None
    logprobs: _Logprobs | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Chunk(msgspec.Struct):
    choices: list[_Choice] = []
    usage: _Usage | None = None
    error: dict[str, Any] | None = None


_NO_LOGPROB = -9999.0


class _Pending:
    """One choice's output from the events of one network read."""

    __slots__ = ("logprobs", "parts", "pieces")

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.logprobs: list[TokenLogprob] | None = None
        #: tool-call fragments (passed on as they came)
        self.pieces: list[ToolCallDelta] = []


class _StreamState:
    """What one stream has told so far."""

    __slots__ = ("choices", "counted", "done", "finish", "pending", "tools", "usage", "usage_seen")

    def __init__(self, choices: int = 1) -> None:
        self.choices = choices
        #: choice index -> its finish reason
        self.finish: dict[int, _FinishReason] = {}
        self.usage = _Usage()
        #: the provider reported usage (its counts replace ours)
        self.usage_seen = False
        #: chunks that carried output (text or a tool-call fragment): about one token each
        self.counted = 0
        #: (choice index, call index) -> [id, name, arguments]
        self.tools: dict[tuple[int, int], list[str]] = {}
        self.done = False  # [DONE] seen
        #: choice index -> output of the current read, not delivered yet
        self.pending: dict[int, _Pending] = {}

    @property
    def finished(self) -> bool:
        return all(i in self.finish for i in range(self.choices))

    @property
    def completion_tokens(self) -> int:
        """The running total: the provider's usage once it arrived, until then the chunks counted."""
        return self.usage.completion_tokens if self.usage_seen else self.counted


_decode_chunk = msgspec.json.Decoder(_Chunk).decode
_encode = msgspec.json.Encoder().encode


def build_body(request: GenerationRequest) -> tuple[str, bytes]:
    """The path and JSON body for ``request`` (the tenant and cache salt never leave the node).

    Every field ``serving.contract`` marks honoured for ``openai`` is sent as the client set it;
    the planner never sends here a request with a field marked unsupported."""
    s = request.sampling
    body: dict[str, Any] = {"model": request.model, "stream": True, "stream_options": {"include_usage": True}}
    if request.messages is not None:
        path = "/chat/completions"
        body["messages"] = [message_dict(m) for m in request.messages]
        if request.tools:
            body["tools"] = list(request.tools)
        if request.tool_choice is not None:
            body["tool_choice"] = request.tool_choice
        if request.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = request.parallel_tool_calls
        if s.logprobs is not None:
            body["logprobs"] = True
            if "top_logprobs" in request.fields:
                body["top_logprobs"] = s.logprobs
    else:
        path = "/completions"
        prompt = request.prompt or ""
        body["prompt"] = list(prompt) if isinstance(prompt, tuple) else prompt
        if s.logprobs is not None:
            body["logprobs"] = s.logprobs
    for key, value in (
        ("max_tokens", s.max_tokens),
        ("temperature", s.temperature),
        ("top_p", s.top_p),
        ("seed", s.seed),
        ("frequency_penalty", s.frequency_penalty),
        ("presence_penalty", s.presence_penalty),
    ):
        if value is not None:
            body[key] = value
    if s.stop:
        body["stop"] = list(s.stop)
    if s.n > 1:
        body["n"] = s.n
    if s.logit_bias:
        body["logit_bias"] = {str(token): bias for token, bias in s.logit_bias.items()}
    if request.response_format is not None:
        body["response_format"] = request.response_format
    return path, _encode(body)


class OpenAIProvider(ExternalProvider):
    """A ``serving.protocol.Provider`` for an OpenAI-compatible endpoint."""

    kind = "openai"

    def __init__(self, config: ProviderConfig) -> None:
        secret = load_api_key(config)
        headers: dict[str, str] = {}
        if secret is not None:
            headers = (
                {"api-key": secret} if config.auth == "api-key" else {"authorization": f"Bearer {secret}"}
            )
        super().__init__(config, Upstream(config, auth_headers=headers, secret=secret))

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        path, body = build_body(request)
        state = _StreamState(choices(request))
        async for batch in self._upstream.batches(path, body, terminal=_is_done):
            # The output of every chunk that arrived in one read goes out as one delta per choice.
            _, failure = fold_batch(batch, partial(self._absorb, state=state))
            for index, pending in sorted(state.pending.items()):
                yield Delta(
                    text="".join(pending.parts),
                    prompt_tokens=state.usage.prompt_tokens,
                    completion_tokens=state.completion_tokens,
                    tool_call_deltas=tuple(pending.pieces) or None,
                    index=index,
                    logprobs=None if pending.logprobs is None else tuple(pending.logprobs),
                )
            state.pending.clear()
            if failure is not None:
                raise failure
            if state.done and state.finished:
                # Deliver the end now; the transport then lets the body finish.
                for delta in self._final(state):
                    yield delta
                return
        if not state.finished:
            raise UpstreamError(
                f"provider {self._config.name!r}: stream ended without a finish reason",
                reason="stream-truncated",
            )
        for delta in self._final(state):  # servers that end without [DONE]
            yield delta

    def _absorb(self, event: SseEvent, parts: list[str], *, state: _StreamState) -> UpstreamError | None:
        """Fold one event into ``state`` and ``parts``; the error it carries, if any."""
        data = event.data
        if data == b"[DONE]":
            state.done = True
            return None
        name = self._config.name
        try:
            chunk = _decode_chunk(data)
        except msgspec.DecodeError:
            return UpstreamError(f"provider {name!r}: malformed stream chunk", reason="malformed-stream")
        if chunk.error is not None:
            return UpstreamError(f"provider {name!r}: error event in stream", reason="upstream-stream-error")
        if chunk.usage is not None:
            state.usage, state.usage_seen = chunk.usage, True
        for choice in chunk.choices:
            if not 0 <= choice.index < state.choices:
                return UpstreamError(
                    f"provider {name!r}: a chunk of choice {choice.index} (asked for {state.choices})",
                    reason="malformed-stream",
                )
            text = choice.text if choice.delta is None else choice.delta.content
            if choice.delta is not None and choice.delta.tool_calls:
                _merge_tools(state.tools, choice.index, choice.delta.tool_calls)
                state.pending.setdefault(choice.index, _Pending()).pieces.extend(
                    ToolCallDelta(
                        index=f.index,
                        id=f.id,
                        name=None if f.function is None else f.function.name,
                        arguments=(f.function.arguments or "") if f.function is not None else "",
                    )
                    for f in choice.delta.tool_calls
                )
                state.counted += 1
            elif text:
                state.counted += 1
            if choice.finish_reason is not None:
                state.finish[choice.index] = _FINISH.get(choice.finish_reason, "stop")
            logprobs = choice.logprobs.parsed() if choice.logprobs is not None else None
            if text or logprobs:
                pending = state.pending.setdefault(choice.index, _Pending())
                if text:
                    pending.parts.append(text)
                if logprobs:
                    pending.logprobs = (pending.logprobs or []) + list(logprobs)
        return None

    def _final(self, state: _StreamState) -> list[Delta]:
        """Each choice's end, in index order: the last one ends the stream."""
        self._last_ok = time.monotonic()
        out: list[Delta] = []
        for index in range(state.choices):
            calls = tuple(
                ToolCall(id=v[0], function=FunctionCall(name=v[1], arguments=v[2]))
                for (choice, _), v in sorted(state.tools.items())
                if choice == index
            )
            out.append(
                Delta(
                    finish_reason=state.finish[index],
                    prompt_tokens=state.usage.prompt_tokens,
                    completion_tokens=state.completion_tokens,
                    tool_calls=calls or None,
                    index=index,
                )
            )
        return out


def _merge_tools(
    tools: dict[tuple[int, int], list[str]], choice: int, fragments: list[_ToolFragment]
) -> None:
    for frag in fragments:
        slot = tools.setdefault((choice, frag.index), ["", "", ""])
        if frag.id:
            slot[0] = frag.id
        if frag.function is not None:
            if frag.function.name:
                slot[1] += frag.function.name
            if frag.function.arguments:
                slot[2] += frag.function.arguments


def _is_done(event: SseEvent) -> bool:
    return event.data == b"[DONE]"
