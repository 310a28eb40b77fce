"""The choices of one answer as deltas arrive, and their log probabilities in OpenAI's shapes.

A request with ``n`` above 1 (or several prompts) streams deltas of several
choices, each with its ``index`` (``serving.protocol.Delta``). ``Choices``
gathers them: each choice's text, tool calls, log probabilities and finish
reason, for the response body and the audit record. Log probabilities go out
as chat's ``logprobs.content`` entries or as the legacy completions object
(``tokens``, ``token_logprobs``, ``top_logprobs``, ``text_offset``).
"""

from __future__ import annotations

from typing import Any

from serving.protocol import Delta, FinishReason, TokenLogprob, ToolCall

__all__ = ["Choice", "Choices", "chat_logprobs", "legacy_logprobs"]


class Choice:
    """One choice's output so far."""

    __slots__ = ("finish_reason", "logprobs", "parts", "tool_calls")

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.tool_calls: tuple[ToolCall, ...] | None = None
        self.logprobs: list[TokenLogprob] | None = None
        self.finish_reason: FinishReason | None = None

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def add(self, delta: Delta) -> None:
        if delta.text:
            self.parts.append(delta.text)
        if delta.tool_calls:
            self.tool_calls = (self.tool_calls or ()) + delta.tool_calls
        if delta.logprobs is not None:
            self.logprobs = (self.logprobs or []) + list(delta.logprobs)
        if delta.finish_reason is not None:
            self.finish_reason = delta.finish_reason


class Choices:
    """Every choice of one answer, by index; ``expected`` is how many the request asked for."""

    def __init__(self, expected: int = 1) -> None:
        self._choices: dict[int, Choice] = {i: Choice() for i in range(expected)}

    def add(self, delta: Delta) -> Choice:
        choice = self._choices.get(delta.index)
        if choice is None:
            choice = self._choices[delta.index] = Choice()
        choice.add(delta)
        return choice

    def ordered(self) -> list[tuple[int, Choice]]:
        return sorted(self._choices.items())

    def texts(self) -> list[str]:
        return [c.text for _, c in self.ordered()]

    def tool_calls(self) -> tuple[ToolCall, ...] | None:
        """Every choice's tool calls, in choice order (``None``: none)."""
        calls = tuple(call for _, c in self.ordered() for call in c.tool_calls or ())
        return calls or None


def _top_json(top: TokenLogprob) -> list[dict[str, Any]]:
    return [
        {"token": t.token, "logprob": t.logprob, "bytes": None if t.utf8 is None else list(t.utf8)}
        for t in top.top
    ]


def chat_logprobs(tokens: list[TokenLogprob] | tuple[TokenLogprob, ...] | None) -> dict[str, Any] | None:
    """A chat choice's ``logprobs``: ``{"content": [{token, logprob, bytes, top_logprobs}]}``."""
    if tokens is None:
        return None
    return {
        "content": [
            {
                "token": t.token,
                "logprob": t.logprob,
                "bytes": None if t.utf8 is None else list(t.utf8),
                "top_logprobs": _top_json(t),
            }
            for t in tokens
        ],
        "refusal": None,
    }


def legacy_logprobs(
    tokens: list[TokenLogprob] | tuple[TokenLogprob, ...] | None, offset: int = 0
) -> dict[str, Any] | None:
    """A completion choice's ``logprobs`` (``tokens``, ``token_logprobs``, ``top_logprobs``,
    ``text_offset``); ``offset`` is where the first token starts in the choice's text. Each
    ``top_logprobs`` entry holds the most likely tokens and the sampled one, as OpenAI's does."""
    if tokens is None:
        return None
    offsets: list[int] = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t.token)
    return {
        "tokens": [t.token for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [{a.token: a.logprob for a in t.top} | {t.token: t.logprob} for t in tokens],
        "text_offset": offsets,
    }
