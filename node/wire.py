"""The OpenAI wire schema: request Structs and response encoders.

Separate from config Structs and from the internal ``serving.protocol`` types.
Requests are decoded strictly (an unrecognised argument is a 400 naming it, as
OpenAI does). Stream chunks are encoded from pre-built byte templates: the
per-token path is one ``msgspec.json.encode`` of the delta text.
"""

from __future__ import annotations

import re
import time
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from serving.errors import BadRequestError
from serving.protocol import (
    ChatMessage,
    Delta,
    FunctionCall,
    SamplingOptions,
    ToolCall,
    ToolCallDelta,
    tool_calls_dicts,
)
from serving.tools import check_tools

__all__ = [
    "ChatCompletionRequest",
    "CompletionRequest",
    "StreamEncoder",
    "chat_completion_body",
    "completion_body",
    "decode_request",
]

# Every integer a request carries is bounded to signed 64 bits: what the audit record's
# encoder (msgpack) stores, what torch takes as a seed, and vLLM's own seed range. An
# unbounded one would reach the record encoder and fail there, after the request was admitted.
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_Temperature = Annotated[float, msgspec.Meta(ge=0.0, le=2.0)]
_TopP = Annotated[float, msgspec.Meta(gt=0.0, le=1.0)]
_Tokens = Annotated[int, msgspec.Meta(ge=1, le=_INT64_MAX)]
_Seed = Annotated[int, msgspec.Meta(ge=_INT64_MIN, le=_INT64_MAX)]


class TextPart(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    type: Literal["text"]
    text: str


class WireFunctionCall(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    arguments: str = ""


class WireToolCall(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    function: WireFunctionCall
    type: Literal["function"] = "function"


class WireMessage(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[WireToolCall] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None


class StreamOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    include_usage: bool = False
    #: vLLM's extension: running usage on every chunk (benchmarks count tokens per event with it)
    continuous_usage_stats: bool = False


class _Common(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    model: str
    max_tokens: _Tokens | None = None
    temperature: _Temperature | None = None
    top_p: _TopP | None = None
    stop: str | list[str] | None = None
    seed: _Seed | None = None
    n: Annotated[int, msgspec.Meta(ge=1, le=1)] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    #: benchmark helpers (vLLM extensions): exact output length on local engines
    ignore_eos: bool = False
    min_tokens: Annotated[int, msgspec.Meta(ge=0, le=_INT64_MAX)] = 0

    def __post_init__(self) -> None:
        if self.frequency_penalty != 0.0 or self.presence_penalty != 0.0:
            raise ValueError("frequency_penalty and presence_penalty are not supported (only 0)")
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences - at `$.stop`")

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def fields_set(self) -> frozenset[str]:
        """The route-dependent optional fields (``serving.contract.FIELDS``) this request sets."""
        values: dict[str, object] = {
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stop": self.stop,
            "seed": self.seed,
            "ignore_eos": self.ignore_eos or None,
            "min_tokens": self.min_tokens or None,
        }
        return frozenset(name for name, value in values.items() if value is not None)

    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def continuous_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.continuous_usage_stats


class ChatCompletionRequest(_Common, frozen=True, kw_only=True, forbid_unknown_fields=True):
    messages: Annotated[list[WireMessage], msgspec.Meta(min_length=1)]
    max_completion_tokens: _Tokens | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_tools(self.tools, self.tool_choice, self.parallel_tool_calls)

    def fields_set(self) -> frozenset[str]:
        values: dict[str, object] = {
            "max_completion_tokens": self.max_completion_tokens,
            "tools": self.tools or None,
            "tool_choice": self.tool_choice,
            "parallel_tool_calls": self.parallel_tool_calls,
        }
        return super().fields_set() | {name for name, value in values.items() if value is not None}

    def sampling(self, cap: int) -> SamplingOptions:
        max_tokens = self.max_completion_tokens or self.max_tokens
        return _sampling(self, max_tokens, cap)

    def chat_messages(self) -> tuple[ChatMessage, ...]:
        return tuple(_to_message(m) for m in self.messages)


class CompletionRequest(_Common, frozen=True, kw_only=True, forbid_unknown_fields=True):
    prompt: str | list[str]
    echo: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.echo:
            raise ValueError("echo is not supported - at `$.echo`")
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            raise ValueError("only one prompt per request is supported - at `$.prompt`")

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def sampling(self, cap: int) -> SamplingOptions:
        # OpenAI's legacy completions default to 16 tokens
        return _sampling(self, self.max_tokens or 16, cap)


def _sampling(req: _Common, max_tokens: int | None, cap: int) -> SamplingOptions:
    if max_tokens is not None and max_tokens > cap:
        raise BadRequestError(
            f"max_tokens {max_tokens} is above this node's cap of {cap}", param="max_tokens"
        )
    if req.min_tokens and max_tokens is not None and req.min_tokens > max_tokens:
        raise BadRequestError("min_tokens must not exceed max_tokens", param="min_tokens")
    return SamplingOptions(
        max_tokens=max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        stop=req.stops(),
        seed=req.seed,
        ignore_eos=req.ignore_eos,
        min_tokens=req.min_tokens,
    )


def _to_message(m: WireMessage) -> ChatMessage:
    content = m.content if not isinstance(m.content, list) else "".join(p.text for p in m.content)
    calls = (
        tuple(
            ToolCall(id=c.id, function=FunctionCall(name=c.function.name, arguments=c.function.arguments))
            for c in m.tool_calls
        )
        if m.tool_calls
        else None
    )
    return ChatMessage(
        role=m.role, content=content, name=m.name, tool_calls=calls, tool_call_id=m.tool_call_id
    )


_T = TypeVar("_T")
_LOCATION = re.compile(r"at `\$\.?([^`]*)`")
_UNKNOWN = re.compile(r"Object contains unknown field `([^`]*)`")


def decode_request(body: bytes, kind: type[_T]) -> _T:
    """Decode a request body, turning every schema problem into a 400 with its ``param``."""
    if not body:
        raise BadRequestError("The request body is empty; expected a JSON object.")
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        text = str(exc)
        match = _LOCATION.search(text)
        where = match.group(1) if match else ""
        if unknown := _UNKNOWN.match(text):
            param = f"{where}.{unknown.group(1)}" if where else unknown.group(1)
            raise BadRequestError(f"Unrecognized request argument supplied: {param}", param=param) from None
        raise BadRequestError(text, param=where or None) from None
    except msgspec.DecodeError as exc:
        raise BadRequestError(f"The request body is not valid JSON: {exc}") from None


# -- responses ---------------------------------------------------------------------------------------


def _usage(prompt: int, completion: int, cached: int) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return usage


def chat_completion_body(
    *,
    request_id: str,
    model: str,
    created: int,
    text: str,
    last: Delta,
    tool_calls: tuple[ToolCall, ...] | None,
) -> bytes:
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not tool_calls else None}
    if tool_calls:
        message["tool_calls"] = tool_calls_dicts(tool_calls)
    return msgspec.json.encode(
        {
            "id": request_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": last.finish_reason}
            ],
            "usage": _usage(last.prompt_tokens, last.completion_tokens, last.cached_tokens),
        }
    )


def completion_body(*, request_id: str, model: str, created: int, text: str, last: Delta) -> bytes:
    return msgspec.json.encode(
        {
            "id": request_id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": last.finish_reason}],
            "usage": _usage(last.prompt_tokens, last.completion_tokens, last.cached_tokens),
        }
    )


class StreamEncoder:
    """Encodes SSE events for one streamed response from byte templates."""

    def __init__(
        self, *, request_id: str, model: str, chat: bool, include_usage: bool, continuous_usage: bool = False
    ) -> None:
        self.chat = chat
        self.include_usage = include_usage
        self.continuous_usage = continuous_usage
        self.created = int(time.time())
        head = {
            "id": request_id,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": self.created,
            "model": model,
        }
        head_json = msgspec.json.encode(head)[:-1]  # drop the closing brace
        self._head = b"data: " + head_json
        if chat:
            self._text_pre = self._head + b',"choices":[{"index":0,"delta":{"content":'
            self._text_post = b'},"logprobs":null,"finish_reason":null}]}\n\n'
        else:
            self._text_pre = self._head + b',"choices":[{"index":0,"text":'
            self._text_post = b',"logprobs":null,"finish_reason":null}]}\n\n'

    def role(self) -> bytes:
        """The first chat chunk announces the assistant role, as OpenAI's does."""
        return (
            self._head + b',"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
            b'"logprobs":null,"finish_reason":null}]}\n\n'
        )

    def text(self, text: str, delta: Delta | None = None) -> bytes:
        if self.continuous_usage and delta is not None:
            usage = _usage(delta.prompt_tokens, delta.completion_tokens, delta.cached_tokens)
            # the chunk's closing brace moves behind the usage member
            tail = self._text_post[:-3] + b',"usage":' + msgspec.json.encode(usage) + b"}\n\n"
            return self._text_pre + msgspec.json.encode(text) + tail
        return self._text_pre + msgspec.json.encode(text) + self._text_post

    def tool_calls(self, calls: tuple[ToolCall, ...]) -> bytes:
        delta = {"tool_calls": [{"index": i, **c} for i, c in enumerate(tool_calls_dicts(calls))]}
        return self._chunk({"index": 0, "delta": delta, "logprobs": None, "finish_reason": None})

    def tool_call_pieces(self, pieces: tuple[ToolCallDelta, ...]) -> bytes:
        """Streamed tool-call pieces as OpenAI sends them: a call's first piece with its id, type
        and name, later ones with argument fragments only; one entry per call in a chunk."""
        calls: dict[int, dict[str, Any]] = {}
        for p in pieces:
            call = calls.get(p.index)
            if call is None:
                call = calls[p.index] = {"index": p.index, "function": {"arguments": ""}}
            if p.id is not None:
                call["id"], call["type"] = p.id, "function"
            if p.name is not None:
                call["function"] = {"name": p.name, **call["function"]}
            call["function"]["arguments"] += p.arguments
        delta = {"tool_calls": list(calls.values())}
        return self._chunk({"index": 0, "delta": delta, "logprobs": None, "finish_reason": None})

    def finish(self, last: Delta) -> bytes:
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": last.finish_reason}
        if self.chat:
            choice["delta"] = {}
        else:
            choice["text"] = ""
        out = self._chunk(choice)
        if self.include_usage:
            usage = _usage(last.prompt_tokens, last.completion_tokens, last.cached_tokens)
            out += self._head + b',"choices":[],"usage":' + msgspec.json.encode(usage) + b"}\n\n"
        return out + b"data: [DONE]\n\n"

    def _chunk(self, choice: dict[str, Any]) -> bytes:
        return self._head + b',"choices":[' + msgspec.json.encode(choice) + b"]}\n\n"

    @staticmethod
    def error(body: dict[str, Any]) -> bytes:
        """A mid-stream failure: the stream's last event is the error object, with no ``[DONE]``
        after it, so a client that ignores ``event:`` lines still never sees a clean end."""
        return b"event: error\ndata: " + msgspec.json.encode(body) + b"\n\n"
