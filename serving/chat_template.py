"""Turning a request into the model's own prompt tokens, and checking it fits.

Chat requests go through the model's chat template (from its tokenizer
config), completions through its tokenizer as is. The engine is handed these
token ids, so the count used for the context check, the usage reported and
what the model sees are one and the same.
"""

from __future__ import annotations

import json
import re
from typing import Any, Protocol

from serving.errors import BadRequestError, ContextLengthExceededError
from serving.protocol import ChatMessage, GenerationRequest, message_dict
from serving.tools import template_tools

__all__ = ["PromptRenderer", "PromptTokenizer", "budget_max_tokens"]


class PromptTokenizer(Protocol):
    """The slice of a Hugging Face tokenizer this module uses."""

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...

    def encode(self, text: str, **kwargs: Any) -> list[int]: ...


def _message_dict(message: ChatMessage) -> dict[str, Any]:
    d = message_dict(message)
    d["content"] = message.content or ""  # chat templates concatenate it
    return d


class PromptRenderer:
    """Renders requests into one model's prompt token ids.

    Control tokens (the tokenizer's special added tokens, ``<|im_start|>`` and the
    like) written *inside* a chat message are tokenized as the plain text they are,
    so a user cannot forge a turn boundary or a system message; only the chat
    template places control tokens. Messages without such strings (nearly all) take
    the plain path: template, then one encode. A raw ``prompt`` (``/v1/completions``)
    is the client's whole prompt and is encoded as given.
    """

    def __init__(self, tokenizer: PromptTokenizer) -> None:
        self._tok = tokenizer
        added: dict[int, Any] = getattr(tokenizer, "added_tokens_decoder", None) or {}
        specials = sorted({t.content for t in added.values() if getattr(t, "special", False)}, key=len)
        self._control = re.compile("|".join(re.escape(t) for t in reversed(specials))) if specials else None

    def render(self, request: GenerationRequest) -> tuple[list[int], str]:
        """Token ids of the prompt, and the request field they came from (``messages`` or ``prompt``)."""
        if (request.messages is None) == (request.prompt is None):
            raise BadRequestError("set exactly one of `messages` and `prompt`", param="messages")
        if request.messages is None:
            if not isinstance(request.prompt, str):
                raise BadRequestError("one prompt at a time: several are rendered one by one", param="prompt")
            return list(self._tok.encode(request.prompt, add_special_tokens=True)), "prompt"
        if not request.messages:
            raise BadRequestError("`messages` must not be empty", param="messages")
        messages = [_message_dict(m) for m in request.messages]
        tools = template_tools(request)
        control = self._control
        if control is not None:
            self._refuse_control_in_tools(control, request, tools)
        if control is None or not any(control.search(m["content"]) for m in messages):
            # the template already placed the special tokens it wants
            text = self._template(messages, tools)
            return list(self._tok.encode(text, add_special_tokens=False)), "messages"
        return self._render_guarded(messages, tools), "messages"

    @staticmethod
    def _refuse_control_in_tools(
        control: re.Pattern[str], request: GenerationRequest, tools: list[dict[str, Any]] | None
    ) -> None:
        """Tool definitions and an assistant's tool calls are rendered by the template as they are;
        control tokens in them would be turn boundaries, so they are refused."""
        if tools and control.search(json.dumps(tools, ensure_ascii=False)):
            raise BadRequestError("a tool definition contains the model's control tokens", param="tools")
        for m in request.messages or ():
            for call in m.tool_calls or ():
                if control.search(call.function.name) or control.search(call.function.arguments):
                    raise BadRequestError(
                        "a tool call in the messages contains the model's control tokens", param="messages"
                    )

    def _template(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
        try:
            text = self._tok.apply_chat_template(
                messages, tools=tools, tokenize=False, add_generation_prompt=True
            )
        except Exception as exc:  # a template may raise on a role sequence it does not support
            raise BadRequestError(
                f"the model's chat template rejected these messages: {exc}", param="messages"
            ) from exc
        return str(text)

    def _render_guarded(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
    ) -> list[int]:
        """Template with a sentinel in place of each message holding control strings; the
        template's text between them encoded as usual, those messages as plain text."""
        assert self._control is not None
        held: dict[str, str] = {}
        for i, m in enumerate(messages):
            if self._control.search(m["content"]):
                sentinel = f"\ue000{i}\ue001"
                held[sentinel], m["content"] = m["content"], sentinel
        text = self._template(messages, tools)
        found = sorted((text.find(s), s) for s in held)
        if any(at < 0 or text.count(s) != 1 for at, s in found):
            raise BadRequestError(
                "a message contains the model's control tokens, and this model's chat template "
                "does not carry message text verbatim, so they cannot be passed as plain text",
                param="messages",
            )
        ids: list[int] = []
        pos = 0
        for at, sentinel in found:
            ids += self._tok.encode(text[pos:at], add_special_tokens=False)
            ids += self._tok.encode(held[sentinel], add_special_tokens=False, split_special_tokens=True)
            pos = at + len(sentinel)
        ids += self._tok.encode(text[pos:], add_special_tokens=False)
        return ids


def budget_max_tokens(
    prompt_tokens: int, max_tokens: int | None, max_model_len: int, *, prompt_param: str, min_tokens: int = 0
) -> int:
    """The ``max_tokens`` to generate: the request's, or what is left of the context.

    Raises ``ContextLengthExceededError`` when the prompt alone, or the prompt
    plus ``max_tokens``, does not fit in ``max_model_len``.
    """
    if max_tokens is not None and max_tokens < 1:
        raise BadRequestError("`max_tokens` must be at least 1", param="max_tokens")
    if min_tokens < 0 or (max_tokens is not None and min_tokens > max_tokens):
        raise BadRequestError("`min_tokens` must be between 0 and `max_tokens`", param="min_tokens")
    if prompt_tokens >= max_model_len:
        raise ContextLengthExceededError(
            f"This model's maximum context length is {max_model_len} tokens. However, your {prompt_param} "
            f"resulted in {prompt_tokens} tokens, leaving no room for a completion.",
            param=prompt_param,
        )
    if max_tokens is None:
        return max_model_len - prompt_tokens
    if prompt_tokens + max_tokens > max_model_len:
        raise ContextLengthExceededError(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the {prompt_param}, "
            f"{max_tokens} for the completion). Please reduce the length of the prompt or the completion.",
            param="max_tokens",
        )
    return max_tokens
