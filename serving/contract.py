"""The request-field contract: what each kind of route does with each optional field.

One table, ``CONTRACT``: for every route kind (the local vLLM engine, an
OpenAI-compatible provider, the Anthropic Messages API) and every optional
request field whose fate depends on the route, whether it is honoured
(passed on as is), translated (passed on in the provider's own terms, the note
says how) or unsupported. The router plans with it (``router.policy``): a
candidate that cannot honour a field the client set is skipped, and a request
no candidate can honour is refused naming the field. Nothing is silently
dropped. The README's table is this one.

Fields the node itself handles alike on every route (``model``, ``messages``,
a single ``prompt``, ``stream``, ``stream_options``, ``user``) are not in the
table; neither are values the wire schema refuses outright (``echo``). A field
counts as set when it asks for something: ``n`` above 1, a non-zero penalty, a
``response_format`` other than ``text``, ``prompt`` as a list of several.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final, Literal

import msgspec

from serving.protocol import GenerationRequest

__all__ = [
    "CONTRACT",
    "FIELDS",
    "TOOL_FIELDS",
    "Needs",
    "RouteKind",
    "Rule",
    "Support",
    "lacking",
    "needs",
]

RouteKind = Literal["local", "openai", "anthropic"]


class Support(enum.Enum):
    HONOURED = "honoured"
    TRANSLATED = "translated"
    UNSUPPORTED = "unsupported"


class Rule(msgspec.Struct, frozen=True, kw_only=True):
    support: Support
    #: how a translated field is sent, or why a field is unsupported
    note: str = ""
    #: the largest value the route takes (a larger one is unsupported there, never sent to fail)
    max_value: float | None = None


_H: Final = Rule(support=Support.HONOURED)
_PARSED: Final = Rule(
    support=Support.HONOURED,
    note="by a model with a `tool_parser` in models.toml; one without is skipped (`unsupported:tools`)",
)
_NOT_MESSAGES: Final = Rule(support=Support.UNSUPPORTED, note="the Messages API has no such setting")
_VLLM_ONLY: Final = Rule(support=Support.UNSUPPORTED, note="a vLLM extension; external APIs refuse it")

#: the optional fields whose fate depends on the route, in the order the README shows them
FIELDS: Final = (
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "n",
    "top_logprobs",
    "logprobs",
    "logit_bias",
    "frequency_penalty",
    "presence_penalty",
    "response_format",
    "prompt",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "ignore_eos",
    "min_tokens",
)

CONTRACT: Final[Mapping[RouteKind, Mapping[str, Rule]]] = {
    "local": {
        "max_tokens": _H,
        "max_completion_tokens": Rule(support=Support.TRANSLATED, note="the engine's `max_tokens`"),
        "temperature": _H,
        "top_p": _H,
        "stop": _H,
        "seed": _H,
        "n": _H,
        "top_logprobs": _H,
        "logprobs": _H,
        "logit_bias": _H,
        "frequency_penalty": _H,
        "presence_penalty": _H,
        "response_format": Rule(
            support=Support.TRANSLATED,
            note="vLLM structured outputs (xgrammar), compact JSON; `json_object` is any JSON object",
        ),
        "prompt": Rule(support=Support.TRANSLATED, note="one engine request per prompt"),
        "tools": _PARSED,
        "tool_choice": _PARSED,
        "parallel_tool_calls": _PARSED,
        "ignore_eos": _H,
        "min_tokens": _H,
    },
    "openai": {
        "max_tokens": _H,
        "max_completion_tokens": Rule(support=Support.TRANSLATED, note="sent as `max_tokens`"),
        "temperature": _H,
        "top_p": _H,
        "stop": _H,
        "seed": _H,
        "n": _H,
        "top_logprobs": _H,
        "logprobs": _H,
        "logit_bias": _H,
        "frequency_penalty": _H,
        "presence_penalty": _H,
        "response_format": _H,
        "prompt": _H,
        "tools": _H,
        "tool_choice": _H,
        "parallel_tool_calls": _H,
        "ignore_eos": _VLLM_ONLY,
        "min_tokens": _VLLM_ONLY,
    },
    "anthropic": {
        "max_tokens": _H,
        "max_completion_tokens": Rule(support=Support.TRANSLATED, note="sent as `max_tokens`"),
        "temperature": Rule(
            support=Support.TRANSLATED,
            note="0 to 1 only: above 1 the route is skipped (`unsupported:temperature`)",
            max_value=1.0,
        ),
        "top_p": _H,
        "stop": Rule(support=Support.TRANSLATED, note="sent as `stop_sequences`"),
        "seed": Rule(support=Support.UNSUPPORTED, note="the Messages API has no seed"),
        "n": Rule(support=Support.UNSUPPORTED, note="the Messages API answers with one choice"),
        "top_logprobs": _NOT_MESSAGES,
        "logprobs": _NOT_MESSAGES,
        "logit_bias": _NOT_MESSAGES,
        "frequency_penalty": _NOT_MESSAGES,
        "presence_penalty": _NOT_MESSAGES,
        "response_format": Rule(
            support=Support.TRANSLATED,
            note="a forced `json_response` tool whose `input_schema` is the schema (`json_object`: any "
            "object); its input comes back as the answer's text",
        ),
        "prompt": Rule(support=Support.UNSUPPORTED, note="one prompt per request"),
        "tools": Rule(support=Support.TRANSLATED, note="function tools become `input_schema` tools"),
        "tool_choice": Rule(
            support=Support.TRANSLATED,
            note="`auto`/`required`/`none`/a named function become `auto`/`any`/`none`/`tool`",
        ),
        "parallel_tool_calls": Rule(
            support=Support.TRANSLATED, note="`false` becomes `tool_choice.disable_parallel_tool_use`"
        ),
        "ignore_eos": _VLLM_ONLY,
        "min_tokens": _VLLM_ONLY,
    },
}


class Needs(msgspec.Struct, frozen=True, kw_only=True):
    """What a request asks of a route: the optional fields the client set, and their values
    where a route has a limit (``Rule.max_value``)."""

    fields: frozenset[str] = frozenset()
    values: Mapping[str, float] = {}


#: the fields a local model without a tool parser cannot honour (``ProviderInfo.unsupported``)
TOOL_FIELDS: Final = frozenset({"tools", "tool_choice", "parallel_tool_calls"})


def lacking(kind: RouteKind, needs: Needs, unsupported: frozenset[str] = frozenset()) -> str | None:
    """The first field (in ``FIELDS`` order) a route of ``kind`` cannot honour, if any; a route
    whose provider lacks fields its kind has names them in ``unsupported``."""
    table = CONTRACT[kind]
    for name in FIELDS:
        if name not in needs.fields:
            continue
        rule = table[name]
        if rule.support is Support.UNSUPPORTED or name in unsupported:
            return name
        value = needs.values.get(name)
        if rule.max_value is not None and value is not None and value > rule.max_value:
            return name
    return None


def needs(request: GenerationRequest) -> Needs:
    """What ``request`` asks of a route."""
    temperature = request.sampling.temperature
    return Needs(fields=request.fields, values={} if temperature is None else {"temperature": temperature})
