"""The local engine's sampling: ``SamplingOptions`` as vLLM ``SamplingParams`` arguments, and vLLM's
outputs (several choices, log probabilities) as ``Delta``s.

vLLM streams one ``RequestOutput`` per step; with ``n`` above 1 it holds the
choices that moved in that step, each with its ``index``. ``ChoiceStream`` turns
them into one delta per choice and step, with running totals over all choices,
and makes sure every choice ends with a finish reason (the stream's last delta
is the last choice's end).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any, Final, Literal

import msgspec

from serving.errors import BadRequestError
from serving.protocol import Delta, FinishReason, SamplingOptions, TokenLogprob, TopLogprob
from serving.tool_output import ToolStream

__all__ = ["ChoiceStream", "check_json_schema", "merge_streams", "sampling_kwargs", "token_logprobs"]

_FINISH: Final[dict[str, Literal["stop", "length", "abort"]]] = {
    "stop": "stop",
    "length": "length",
    "abort": "abort",
}


def sampling_kwargs(s: SamplingOptions) -> dict[str, Any]:
    """The ``SamplingParams`` arguments for ``s`` besides the length, stop and output settings and
    structured outputs (``serving.tool_output.structured_outputs``)."""
    kwargs: dict[str, Any] = {
        "n": s.n,
        "temperature": 1.0 if s.temperature is None else s.temperature,
        "top_p": 1.0 if s.top_p is None else s.top_p,
        "seed": s.seed,
        "frequency_penalty": s.frequency_penalty or 0.0,
        "presence_penalty": s.presence_penalty or 0.0,
        "logit_bias": dict(s.logit_bias) if s.logit_bias else None,
        "logprobs": s.logprobs,
    }
    return kwargs


def check_json_schema(schema: str) -> None:
    """Compile the JSON schema (JSON text) a client's ``response_format`` constrains the output to,
    as the engine will (xgrammar), before anything is queued: a schema it cannot use is a 400
    naming ``response_format``."""
    problem = _xgrammar_problem(schema)
    if problem is not None:
        raise BadRequestError(
            f"response_format: the JSON schema cannot be used by this model's engine: {problem}",
            param="response_format",
        )


@functools.lru_cache(maxsize=256)
def _xgrammar_problem(schema: str) -> str | None:
    """Why xgrammar cannot use ``schema``, if it cannot. Remembered: compiling takes milliseconds,
    and an app sends the same few schemas again and again."""
    from vllm.sampling_params import SamplingParams, StructuredOutputsParams
    from vllm.v1.structured_output.backend_xgrammar import validate_xgrammar_grammar

    try:
        validate_xgrammar_grammar(SamplingParams(structured_outputs=StructuredOutputsParams(json=schema)))
    except Exception as exc:  # vLLM's validation error, or xgrammar's own
        return str(exc)
    return None


def token_logprobs(
    token_ids: Sequence[int], steps: Sequence[Mapping[int, Any]] | None, top: int
) -> tuple[TokenLogprob, ...] | None:
    """vLLM's per-token log probabilities (``{token id: Logprob}`` per step) for the sampled
    ``token_ids``, each with the ``top`` most likely tokens of its step (by rank)."""
    if steps is None:
        return None
    out: list[TokenLogprob] = []
    for token_id, step in zip(token_ids, steps, strict=False):
        chosen = step.get(token_id)
        if chosen is None:  # pragma: no cover - vLLM always reports the sampled token
            continue
        alternatives = sorted(
            (lp for lp in step.values() if lp.rank is not None and lp.rank <= top), key=lambda lp: lp.rank
        )
        token = chosen.decoded_token or ""
        out.append(
            TokenLogprob(
                token=token,
                logprob=_finite(chosen.logprob),
                utf8=tuple(token.encode()),
                top=tuple(
                    TopLogprob(
                        token=lp.decoded_token or "",
                        logprob=_finite(lp.logprob),
                        utf8=tuple((lp.decoded_token or "").encode()),
                    )
                    for lp in alternatives
                ),
            )
        )
    return tuple(out)


def _finite(value: float) -> float:
    # a token the logit bias or the grammar ruled out has -inf: JSON has no infinity
    return max(float(value), -9999.0)


class ChoiceStream:
    """Deltas for one vLLM request's outputs: ``n`` choices numbered from ``first_index``."""

    def __init__(
        self,
        *,
        n: int,
        prompt_tokens: int,
        logprobs: int | None,
        first_index: int = 0,
        tools: ToolStream | None = None,
    ) -> None:
        #: reads tool calls from the output (one choice only: the engine refuses tools with n > 1)
        self._tools = tools
        self._open = set(range(n))
        self._first = first_index
        self._prompt_tokens = prompt_tokens
        self._top = logprobs
        self.completion_tokens = 0

    def deltas(self, outputs: Iterable[Any], *, finished: bool, cached: int) -> list[Delta]:
        """The deltas of one ``RequestOutput``'s choices; when ``finished``, every choice not ended
        yet ends here (its reason ``stop``), so the last delta is the end of the stream."""
        steps = list(outputs)
        for step in steps:
            self.completion_tokens += len(step.token_ids)
        out: list[Delta] = []
        for step in steps:
            index = int(step.index)
            reason: FinishReason | None = None
            if step.finish_reason is not None and index in self._open:
                reason = _FINISH.get(str(step.finish_reason), "stop")
                self._open.discard(index)
            if not (step.text or step.token_ids or reason):
                continue
            out.append(self._delta(index, step, reason, cached))
        if finished:
            for index in sorted(self._open):
                out.append(self._delta(index, None, "stop", cached))
            self._open.clear()
            # the stream's end goes last: a choice that ended earlier in this output came before it
            out.sort(key=lambda d: d.finish_reason is not None)
        return out

    def _delta(self, index: int, step: Any, reason: FinishReason | None, cached: int) -> Delta:
        logprobs = None
        if step is not None and self._top is not None:
            logprobs = token_logprobs(step.token_ids, step.logprobs, self._top)
        delta = Delta(
            text=step.text if step is not None else "",
            prompt_tokens=self._prompt_tokens,
            completion_tokens=self.completion_tokens,
            cached_tokens=cached,
            finish_reason=reason,
            index=self._first + index,
            logprobs=logprobs,
        )
        if self._tools is None:
            return delta
        return self._tools.delta(delta, step.token_ids if step is not None else ())


async def merge_streams(streams: Sequence[AsyncIterator[Delta]]) -> AsyncIterator[Delta]:
    """Several prompts' streams as one: their deltas as they come, with the token counts summed
    over all of them. The first failure ends it; closing it closes (aborts) every stream."""
    queue: asyncio.Queue[tuple[int, Delta | Exception | None]] = asyncio.Queue(maxsize=4 * len(streams))

    async def pump(i: int, stream: AsyncIterator[Delta]) -> None:
        try:
            async for delta in stream:
                await queue.put((i, delta))
            await queue.put((i, None))
        except Exception as exc:
            await queue.put((i, exc))
        finally:
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    totals = [(0, 0, 0)] * len(streams)
    live = len(streams)
    try:
        while live:
            i, item = await queue.get()
            if item is None:
                live -= 1
                continue
            if isinstance(item, Exception):
                raise item
            totals[i] = (item.prompt_tokens, item.completion_tokens, item.cached_tokens)
            yield msgspec.structs.replace(
                item,
                prompt_tokens=sum(t[0] for t in totals),
                completion_tokens=sum(t[1] for t in totals),
                cached_tokens=sum(t[2] for t in totals),
            )
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
