"""The OpenAI wire schema: request Structs and response encoders.

Separate from config Structs and from the internal ``serving.protocol`` types.
Requests are decoded strictly (an unrecognised argument is a 400 naming it, as
OpenAI does). Stream chunks are encoded from pre-built byte templates: the
per-token path is one ``msgspec.json.encode`` of the delta text.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
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

from .choices import Choice, chat_logprobs, legacy_logprobs
from .schemas import check_schema

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
_Penalty = Annotated[float, msgspec.Meta(ge=-2.0, le=2.0)]
_Bias = Annotated[float, msgspec.Meta(ge=-100.0, le=100.0)]
#: choices per prompt (OpenAI takes up to 128; every one is a sequence in the engine's batch)
MAX_CHOICES = 16
#: prompts per completion request, and choices in all (``n`` for each prompt)
MAX_PROMPTS = 64
MAX_TOTAL_CHOICES = 128
#: alternatives per token with ``top_logprobs`` / completions' ``logprobs`` (vLLM's default cap)
MAX_TOP_LOGPROBS = 20


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


class JsonSchemaFormat(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    description: str | None = None
    #: a JSON schema; absent: any JSON object
    schema: dict[str, Any] | None = None
    strict: bool | None = None


class ResponseFormat(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    def __post_init__(self) -> None:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError(
                "`json_schema` is required when `type` is 'json_schema' - at `$.response_format`"
            )
        if self.type != "json_schema" and self.json_schema is not None:
            raise ValueError("`json_schema` goes with `type` 'json_schema' only - at `$.response_format`")

    def schema_text(self) -> str | None:
        """The JSON schema the output must follow (JSON text), if any: ``json_object`` is any object."""
        if self.type == "json_object":
            return '{"type":"object"}'
        if self.json_schema is None:
            return None
        schema = self.json_schema.schema
        return '{"type":"object"}' if schema is None else json.dumps(schema, separators=(",", ":"))


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
    n: Annotated[int, msgspec.Meta(ge=1, le=MAX_CHOICES)] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    frequency_penalty: _Penalty | None = None
    presence_penalty: _Penalty | None = None
    #: token id (as a string, as in OpenAI's API) -> bias added to its logit
    logit_bias: Annotated[dict[str, _Bias], msgspec.Meta(max_length=1024)] | None = None
    response_format: ResponseFormat | None = None
    #: benchmark helpers (vLLM extensions): exact output length on local engines
    ignore_eos: bool = False
    min_tokens: Annotated[int, msgspec.Meta(ge=0, le=_INT64_MAX)] = 0

    def __post_init__(self) -> None:
        for token in self.logit_bias or {}:
            if not token.isdecimal() or int(token) > _INT64_MAX:
                raise ValueError(f"logit_bias keys are token ids; {token[:32]!r} is not - at `$.logit_bias`")
        if (fmt := self.response_format) is not None and fmt.json_schema is not None:
            if fmt.json_schema.schema is not None:
                check_schema(fmt.json_schema.schema)
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
            "n": self.n if self.n > 1 else None,
            "frequency_penalty": self.frequency_penalty or None,
            "presence_penalty": self.presence_penalty or None,
            "logit_bias": self.logit_bias or None,
            "response_format": self.response_format_dict(),
        }
        return frozenset(name for name, value in values.items() if value is not None)

    def response_format_dict(self) -> dict[str, object] | None:
        """``response_format`` as the client sent it, unless it asks for plain text (the default)."""
        fmt = self.response_format
        if fmt is None or fmt.type == "text":
            return None
        out: dict[str, object] = msgspec.to_builtins(fmt)
        return out

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
    logprobs: bool | None = None
    top_logprobs: Annotated[int, msgspec.Meta(ge=0, le=MAX_TOP_LOGPROBS)] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("`top_logprobs` needs `logprobs` set to true - at `$.top_logprobs`")
        check_tools(self.tools, self.tool_choice, self.parallel_tool_calls)

    def fields_set(self) -> frozenset[str]:
        values: dict[str, object] = {
            "max_completion_tokens": self.max_completion_tokens,
            "tools": self.tools or None,
            "tool_choice": self.tool_choice,
            "parallel_tool_calls": self.parallel_tool_calls,
            "logprobs": self.logprobs or None,
            "top_logprobs": self.top_logprobs,
        }
        return super().fields_set() | {name for name, value in values.items() if value is not None}

    def sampling(self, cap: int) -> SamplingOptions:
        max_tokens = self.max_completion_tokens or self.max_tokens
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        return _sampling(self, max_tokens, cap, logprobs)

    def chat_messages(self) -> tuple[ChatMessage, ...]:
        return tuple(_to_message(m) for m in self.messages)


class CompletionRequest(_Common, frozen=True, kw_only=True, forbid_unknown_fields=True):
    #: one prompt, or several (a completion each, ``n`` choices per prompt)
    prompt: str | Annotated[list[str], msgspec.Meta(min_length=1, max_length=MAX_PROMPTS)]
    echo: bool = False
    #: log probabilities of the sampled tokens and of this many alternatives
    logprobs: Annotated[int, msgspec.Meta(ge=0, le=MAX_TOP_LOGPROBS)] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.echo:
            raise ValueError("echo is not supported - at `$.echo`")
        if self.n * self.prompt_count() > MAX_TOTAL_CHOICES:
            raise ValueError(f"at most {MAX_TOTAL_CHOICES} choices in all (n for each prompt) - at `$.n`")

    def fields_set(self) -> frozenset[str]:
        several = isinstance(self.prompt, list) and len(self.prompt) > 1
        values: dict[str, object] = {"logprobs": self.logprobs, "prompt": True if several else None}
        return super().fields_set() | {name for name, value in values.items() if value is not None}

    def prompt_text(self) -> str | tuple[str, ...]:
        """The prompt; several as a tuple (a list of one is that one prompt)."""
        if isinstance(self.prompt, str):
            return self.prompt
        return self.prompt[0] if len(self.prompt) == 1 else tuple(self.prompt)

    def prompt_count(self) -> int:
        return 1 if isinstance(self.prompt, str) else len(self.prompt)

    def sampling(self, cap: int) -> SamplingOptions:
        # OpenAI's legacy completions default to 16 tokens
        return _sampling(self, self.max_tokens or 16, cap, self.logprobs)


def _sampling(req: _Common, max_tokens: int | None, cap: int, logprobs: int | None) -> SamplingOptions:
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
        json_schema=None if req.response_format is None else req.response_format.schema_text(),
        n=req.n,
        frequency_penalty=req.frequency_penalty,
        presence_penalty=req.presence_penalty,
        logit_bias={int(k): v for k, v in req.logit_bias.items()} if req.logit_bias else None,
        logprobs=logprobs,
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
    *, request_id: str, model: str, created: int, choices: Sequence[tuple[int, Choice]], last: Delta
) -> bytes:
    """A chat completion: one entry per choice; ``last`` (the stream's last delta) has the usage."""
    out: list[dict[str, Any]] = []
    for index, choice in choices:
        text, calls = choice.text, choice.tool_calls
        message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
        if calls:
            message["tool_calls"] = tool_calls_dicts(calls)
        out.append(
            {
                "index": index,
                "message": message,
                "logprobs": chat_logprobs(choice.logprobs),
                "finish_reason": choice.finish_reason,
            }
        )
    return msgspec.json.encode(
        {
            "id": request_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": out,
            "usage": _usage(last.prompt_tokens, last.completion_tokens, last.cached_tokens),
        }
    )


def completion_body(
    *, request_id: str, model: str, created: int, choices: Sequence[tuple[int, Choice]], last: Delta
) -> bytes:
    return msgspec.json.encode(
        {
            "id": request_id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": index,
                    "text": choice.text,
                    "logprobs": legacy_logprobs(choice.logprobs),
                    "finish_reason": choice.finish_reason,
                }
                for index, choice in choices
            ],
            "usage": _usage(last.prompt_tokens, last.completion_tokens, last.cached_tokens),
        }
    )


class StreamEncoder:
    """Encodes SSE events for one streamed response from byte templates.

    Every chunk names its choice's ``index``; each choice gets its own finish chunk
    (``choice_end``) and the stream one usage chunk and ``[DONE]`` (``done``). The common
    chunk (choice 0, text, no log probabilities) is a template plus one encode."""

    def __init__(
        self,
        *,
        request_id: str,
        model: str,
        chat: bool,
        include_usage: bool,
        continuous_usage: bool = False,
        choices: int = 1,
    ) -> None:
        self.chat = chat
        self.include_usage = include_usage
        self.continuous_usage = continuous_usage
        self.choices = choices
        self.created = int(time.time())
        #: completions: where each choice's next token starts in its text (``text_offset``)
        self._offsets: dict[int, int] = {}
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
        """The first chat chunk of each choice announces the assistant role, as OpenAI's does."""
        return b"".join(
            self._head
            + b',"choices":[{"index":'
            + str(i).encode()
            + b',"delta":{"role":"assistant","content":""},'
            b'"logprobs":null,"finish_reason":null}]}\n\n'
            for i in range(self.choices)
        )

    def text(self, text: str, delta: Delta | None = None) -> bytes:
        """A chunk of text (and its tokens' log probabilities, when asked for)."""
        if delta is not None and (delta.index or delta.logprobs is not None):
            return self._text_chunk(text, delta)
        if self.continuous_usage and delta is not None:
            usage = _usage(delta.prompt_tokens, delta.completion_tokens, delta.cached_tokens)
            # the chunk's closing brace moves behind the usage member
            tail = self._text_post[:-3] + b',"usage":' + msgspec.json.encode(usage) + b"}\n\n"
            return self._text_pre + msgspec.json.encode(text) + tail
        return self._text_pre + msgspec.json.encode(text) + self._text_post

    def _text_chunk(self, text: str, delta: Delta) -> bytes:
        choice: dict[str, Any] = {"index": delta.index}
        if self.chat:
            choice["delta"] = {"content": text}
            choice["logprobs"] = chat_logprobs(delta.logprobs)
        else:
            choice["text"] = text
            offset = self._offsets.get(delta.index, 0)
            choice["logprobs"] = legacy_logprobs(delta.logprobs, offset)
            self._offsets[delta.index] = offset + sum(len(t.token) for t in delta.logprobs or ())
        choice["finish_reason"] = None
        return self._chunk(choice, delta if self.continuous_usage else None)

    def tool_call_pieces(self, pieces: tuple[ToolCallDelta, ...], index: int = 0) -> bytes:
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
        return self._chunk({"index": index, "delta": delta, "logprobs": None, "finish_reason": None})

    def tool_calls(self, calls: tuple[ToolCall, ...], index: int = 0) -> bytes:
        delta = {"tool_calls": [{"index": i, **c} for i, c in enumerate(tool_calls_dicts(calls))]}
        return self._chunk({"index": index, "delta": delta, "logprobs": None, "finish_reason": None})

    def choice_end(self, delta: Delta) -> bytes:
        """The finish chunk of ``delta``'s choice."""
        choice: dict[str, Any] = {
            "index": delta.index,
            "logprobs": None,
            "finish_reason": delta.finish_reason,
        }
        if self.chat:
            choice["delta"] = {}
        else:
            choice["text"] = ""
        return self._chunk(choice)

    def done(self, last: Delta) -> bytes:
        """The end of the stream: the usage of all choices (when asked for), then ``[DONE]``."""
        out = b""
        if self.include_usage:
            usage = _usage(last.prompt_tokens, last.completion_tokens, last.cached_tokens)
            out += self._head + b',"choices":[],"usage":' + msgspec.json.encode(usage) + b"}\n\n"
        return out + b"data: [DONE]\n\n"

    def finish(self, last: Delta) -> bytes:
        """A one-choice stream's end: its finish chunk, then ``done``."""
        return self.choice_end(last) + self.done(last)

    def _chunk(self, choice: dict[str, Any], usage_of: Delta | None = None) -> bytes:
        body = b',"choices":[' + msgspec.json.encode(choice) + b"]"
        if usage_of is not None:
            usage = _usage(usage_of.prompt_tokens, usage_of.completion_tokens, usage_of.cached_tokens)
            body += b',"usage":' + msgspec.json.encode(usage)
        return self._head + body + b"}\n\n"

    @staticmethod
    def error(body: dict[str, Any]) -> bytes:
        """A mid-stream failure: the stream's last event is the error object, with no ``[DONE]``
        after it, so a client that ignores ``event:`` lines still never sees a clean end."""
        return b"event: error\ndata: " + msgspec.json.encode(body) + b"\n\n"
