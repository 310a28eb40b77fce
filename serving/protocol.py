"""The provider interface that local engines and external APIs satisfy alike.

A provider streams a chat (or a plain-text completion), reports its health and
describes itself: three methods, nothing more. The router chooses among
providers; the node turns deltas into OpenAI responses. These types are the
internal representation of a request, separate from the OpenAI wire schema.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Literal, Protocol, runtime_checkable

import msgspec

__all__ = [
    "ChatMessage",
    "Delta",
    "FunctionCall",
    "GenerationRequest",
    "Health",
    "Provider",
    "ProviderInfo",
    "SamplingOptions",
    "TokenLogprob",
    "ToolCall",
    "ToolCallDelta",
    "TopLogprob",
    "choices",
    "message_dict",
    "prompts",
    "rewrite_tool_calls",
    "tool_calls_dicts",
]

FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "abort", "error"]


class FunctionCall(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    arguments: str = ""


class ToolCall(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    function: FunctionCall
    type: str = "function"


class ToolCallDelta(msgspec.Struct, frozen=True, kw_only=True):
    """A piece of a tool call as it streams (OpenAI's streamed tool-call delta): the first piece
    of call ``index`` carries its ``id`` and ``name``, the later ones fragments of ``arguments``."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


def rewrite_tool_calls(
    calls: tuple[ToolCall, ...], *, name: Callable[[str], str], arguments: Callable[[str], str]
) -> tuple[ToolCall, ...]:
    """``calls`` with each function's name and arguments passed through ``name`` and ``arguments``
    (redaction on the way out, restoring on the way back)."""
    return tuple(
        ToolCall(
            id=c.id,
            type=c.type,
            function=FunctionCall(name=name(c.function.name), arguments=arguments(c.function.arguments)),
        )
        for c in calls
    )


def tool_calls_dicts(calls: tuple[ToolCall, ...]) -> list[dict[str, Any]]:
    """Tool calls in the OpenAI chat form (requests to an OpenAI-style API, responses, chat templates)."""
    return [
        {"id": c.id, "type": c.type, "function": {"name": c.function.name, "arguments": c.function.arguments}}
        for c in calls
    ]


def message_dict(m: ChatMessage) -> dict[str, Any]:
    """One message in the OpenAI chat form: fields left unset are left out, ``content`` is kept as it is."""
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.name is not None:
        out["name"] = m.name
    if m.tool_calls:
        out["tool_calls"] = tool_calls_dicts(m.tool_calls)
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    return out


class ChatMessage(msgspec.Struct, frozen=True, kw_only=True):
    """One chat message. ``content`` is text; multi-part text content is joined by the node."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | None = None
    name: str | None = None
    tool_calls: tuple[ToolCall, ...] | None = None
    tool_call_id: str | None = None


class SamplingOptions(msgspec.Struct, frozen=True, kw_only=True):
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    #: generate exactly ``max_tokens`` (benchmarks); only local engines honour it
    ignore_eos: bool = False
    min_tokens: int = 0
    #: constrain the output to this JSON schema (JSON text; structured outputs on the local engine):
    #: from the client's ``response_format`` (``GenerationRequest.response_format``; a
    #: ``json_object`` one is ``{"type": "object"}``) or set by the node itself (free-text redaction)
    json_schema: str | None = None
    #: choices to generate for each prompt
    n: int = 1
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    #: token id -> bias added to its logit (-100 to 100)
    logit_bias: dict[int, float] | None = None
    #: log probabilities of the sampled tokens and of this many most likely alternatives at each
    #: step (0 to 20); ``None``: none
    logprobs: int | None = None


class TopLogprob(msgspec.Struct, frozen=True, kw_only=True):
    """One of the most likely tokens at a step, with its log probability."""

    token: str
    logprob: float
    #: the token's UTF-8 bytes (a token may hold part of a character)
    utf8: tuple[int, ...] | None = None


class TokenLogprob(msgspec.Struct, frozen=True, kw_only=True):
    """A generated token, its log probability and the most likely alternatives at its step."""

    token: str
    logprob: float
    utf8: tuple[int, ...] | None = None
    top: tuple[TopLogprob, ...] = ()


class GenerationRequest(msgspec.Struct, frozen=True, kw_only=True):
    """What a provider is asked to generate.

    Exactly one of ``messages`` (chat) and ``prompt`` (completion) is set; ``prompt`` may be
    several prompts (a completion per prompt, ``SamplingOptions.n`` choices each).
    ``model`` is the provider's own model name (a local served name, or an
    external dated model id). ``cache_salt`` isolates the prefix cache per tenant.
    """

    request_id: str
    model: str
    messages: tuple[ChatMessage, ...] | None = None
    prompt: str | tuple[str, ...] | None = None
    sampling: SamplingOptions = SamplingOptions()
    tenant: str = ""
    cache_salt: str | None = None
    #: OpenAI function tools, and how the model may call them (``serving.contract`` says which
    #: routes honour them)
    tools: tuple[dict[str, object], ...] | None = None
    tool_choice: str | dict[str, object] | None = None
    parallel_tool_calls: bool | None = None
    #: OpenAI's ``response_format`` as the client sent it (``json_object``, ``json_schema``): an
    #: OpenAI-compatible provider receives it as is; the local engine constrains its output to
    #: ``sampling.json_schema``, which the node derives from it
    response_format: dict[str, object] | None = None
    #: the optional fields the client set (``serving.contract.FIELDS``): a route that cannot honour
    #: one of them is never asked, so an absent field is never mistaken for an unsupported one
    fields: frozenset[str] = frozenset()


class Delta(msgspec.Struct, frozen=True, kw_only=True):
    """One step of a stream.

    ``text`` is the new text (may be empty). ``prompt_tokens`` and
    ``completion_tokens`` are running totals as the provider knows them (0:
    not known yet); the last delta carries the final usage. An external API
    reports usage only at the end, so until then its provider counts the chunks
    that carried output, about one token each. ``finish_reason`` is set on the
    last delta only. ``tool_call_deltas`` are the pieces of tool calls as they stream (from a
    provider that streams them); the last delta carries the whole calls in ``tool_calls`` all the
    same, for those that collect the answer.

    With several choices (``SamplingOptions.n`` above 1, or several prompts) each
    delta belongs to the choice ``index`` (prompt ``i``'s choice ``j`` is
    ``i * n + j``), the token counts are totals over all choices, and each
    choice's last delta has its ``finish_reason``: the stream ends with the last
    choice's (``choices``).
    """

    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: FinishReason | None = None
    tool_calls: tuple[ToolCall, ...] | None = None
    tool_call_deltas: tuple[ToolCallDelta, ...] | None = None
    #: prompt tokens served from the prefix cache (local engines)
    cached_tokens: int = 0
    #: the choice this delta belongs to
    index: int = 0
    #: the tokens of ``text`` with their log probabilities (when the request asks for them)
    logprobs: tuple[TokenLogprob, ...] | None = None


def prompts(request: GenerationRequest) -> tuple[str, ...]:
    """The request's prompts (none for a chat)."""
    if request.prompt is None:
        return ()
    return request.prompt if isinstance(request.prompt, tuple) else (request.prompt,)


def choices(request: GenerationRequest) -> int:
    """How many choices ``request`` asks for: ``n`` for each prompt."""
    prompts = len(request.prompt) if isinstance(request.prompt, tuple) else 1
    return prompts * request.sampling.n


class Health(msgspec.Struct, frozen=True, kw_only=True):
    healthy: bool
    detail: str = ""
    #: monotonic seconds of the last successful probe, if any
    last_ok_s: float | None = None
    #: queue signals for routing (local engines): requests waiting and running
    waiting: int = 0
    running: int = 0
    kv_cache_usage: float = 0.0


class ProviderInfo(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    kind: Literal["local", "openai", "anthropic"]
    #: ``local`` for the node itself, else the provider's configured region
    region: str
    models: tuple[str, ...]
    #: pinned revision per model (local: the weights revision; external: the dated model id)
    revisions: dict[str, str] = {}
    #: optional request fields (``serving.contract.FIELDS``) this provider cannot honour although
    #: its kind can (a local model without a tool parser: the tool fields)
    unsupported: frozenset[str] = frozenset()


@runtime_checkable
class Provider(Protocol):
    """Anything that can generate: the local vLLM engine or an external API."""

    def describe(self) -> ProviderInfo: ...

    async def health(self) -> Health: ...

    def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        """Stream deltas. Raises a ``BastionError`` before the first delta on failure;
        after it, raises a ``BastionError`` that the caller reports as a mid-stream error.
        Closing the iterator (``aclose``) aborts the generation."""
        ...
