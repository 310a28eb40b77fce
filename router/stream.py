"""The stream a routed request returns: deltas plus where it went and why.

Wraps a provider's iterator after its first delta arrived (failover is over by
then). It restores redacted values when the tenant asks (placeholders may
straddle delta boundaries), reports the outcome once (success, failure, or
cancellation, each with the tokens known so far) so breakers, budgets and
spend stay right (``Account``; the observer hears it through ``on_settle``),
and turns any failure after the first token into a ``BastionError`` raised
from the iterator: a cut stream never ends as a clean answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from router.breaker import Breaker
from router.config import ModelPrice
from router.connect import Connection, aclose
from router.decision import Attempt, Charge, ForwardDecision, Outcome, RouteObserver
from router.limits import LimitState
from router.restorer import Restorer
from serving.errors import BastionError, UpstreamError
from serving.protocol import Delta, GenerationRequest, choices, prompts

__all__ = ["Account", "RoutedStream", "estimate_prompt_tokens"]

#: a prompt's size per token when estimated (no provider usage): about right for English BPE vocabularies
_BYTES_PER_TOKEN = 4


class _Empty:
    def __aiter__(self) -> _Empty:
        return self

    async def __anext__(self) -> Delta:
        raise StopAsyncIteration


_EMPTY = _Empty()


@dataclass(frozen=True, kw_only=True)
class Account:
    """Settles one stream: its breaker's verdict and the tenant's charge (tokens and spend)."""

    breaker: Breaker
    limits: LimitState
    tenant: str
    #: the served external model's price (``None``: local, no spend)
    price: ModelPrice | None
    #: the request: its prompt is estimated when no usage arrived
    generation: GenerationRequest

    def settle(self, outcome: Outcome) -> Charge:
        if outcome.cancelled:
            self.breaker.release()
        elif outcome.ok:
            self.breaker.record_success()
        else:
            self.breaker.record_failure()
        # Every outcome is charged: the engine did the work, an external provider bills for it.
        # A stream cut before the provider's usage arrived is charged the prompt as estimated.
        prompt = outcome.prompt_tokens or estimate_prompt_tokens(self.generation)
        completion = outcome.completion_tokens
        cost = 0.0
        if self.price is not None:
            cost = (prompt * self.price.input_per_mtok + completion * self.price.output_per_mtok) / 1_000_000
        self.limits.record(self.tenant, tokens=prompt + completion, spend=cost)
        return Charge(prompt_tokens=prompt, completion_tokens=completion, cost=cost)


def estimate_prompt_tokens(generation: GenerationRequest) -> int:
    """A prompt's tokens when no provider reported them: one per 4 bytes of text (at least 1)."""
    size = sum(len(p.encode()) for p in prompts(generation))
    for m in generation.messages or ():
        size += len((m.content or "").encode()) + sum(
            len(c.function.name) + len(c.function.arguments) for c in m.tool_calls or ()
        )
    return max(1, -(-size // _BYTES_PER_TOKEN))


class RoutedStream:
    """Async iterator of ``Delta``; ``decision`` says where it runs and why (see ``Router.open``)."""

    def __init__(
        self,
        *,
        connection: Connection,
        decision: ForwardDecision,
        attempts: tuple[Attempt, ...],
        restorer: Restorer | None,
        account: Account,
        observer: RouteObserver | None = None,
    ) -> None:
        #: the attempt that streams: route, reason, provider, model, revision, redactions
        self.decision = decision
        #: every candidate considered, in order (skipped, failed, and the one that streams)
        self.attempts = attempts
        #: what the tenant was charged, once the stream ended (any outcome)
        self.charge: Charge | None = None
        self._prompt_tokens = 0
        self._completion_tokens = 0
        self._first: Delta | None = connection.first
        self._rest = connection.rest
        #: one restorer per choice (a placeholder may straddle two deltas of one choice)
        self._restorers = {0: restorer} if restorer is not None else None
        self._account = account
        self._observer = observer
        #: choices not finished yet: the stream ends with the last one's finish
        self._open = choices(account.generation)
        self._done = False

    def __aiter__(self) -> RoutedStream:
        return self

    async def __anext__(self) -> Delta:
        if self._first is not None:
            delta, self._first = self._first, None
            return self._post(delta)
        if self._done:
            # One more pull lets a provider finish reading the body, so its connection is reused.
            try:
                await anext(self._rest)
            except Exception:  # noqa: S110 - the answer is complete; only cleanup is left
                pass
            await self._close_rest()
            raise StopAsyncIteration
        try:
            delta = await anext(self._rest)
        except StopAsyncIteration:
            raise self._fail(
                UpstreamError(
                    f"{self.decision.route}: stream ended without a finish reason", reason="stream-truncated"
                )
            ) from None
        except BastionError as exc:
            raise self._fail(exc) from None
        except Exception as exc:
            raise self._fail(
                UpstreamError(
                    f"{self.decision.route}: stream failed ({type(exc).__name__})", reason="stream-failed"
                )
            ) from exc
        return self._post(delta)

    async def aclose(self) -> None:
        """Stop early: aborts the upstream or local generation."""
        if not self._done:
            self._done = True
            self._charge(Outcome(ok=False, cancelled=True))
        await self._close_rest()

    async def _close_rest(self) -> None:
        rest, self._rest = self._rest, _EMPTY
        await aclose(rest)

    def _fail(self, error: BastionError) -> BastionError:
        if not self._done:
            self._done = True
            self._charge(Outcome(ok=False, error=error))
        return error

    def _charge(self, outcome: Outcome) -> None:
        """Settle once, with the tokens known so far, and keep what was charged."""
        outcome = msgspec.structs.replace(
            outcome, prompt_tokens=self._prompt_tokens, completion_tokens=self._completion_tokens
        )
        self.charge = self._account.settle(outcome)
        if self._observer is not None:
            self._observer.on_settle(outcome, self.charge)

    def _post(self, delta: Delta) -> Delta:
        # running totals; the final usage may correct the chunks an external provider counted
        if delta.prompt_tokens:
            self._prompt_tokens = delta.prompt_tokens
        if delta.completion_tokens:
            self._completion_tokens = delta.completion_tokens
        restorer = self._restorer(delta.index)
        if restorer is not None:
            delta = restorer.delta(delta)
        if delta.finish_reason is None:
            return delta
        self._open -= 1
        if not self._done and self._open <= 0:
            self._done = True
            self._charge(Outcome(ok=True))
        return delta

    def _restorer(self, index: int) -> Restorer | None:
        restorers = self._restorers
        if restorers is None:
            return None
        restorer = restorers.get(index)
        if restorer is None:
            restorer = restorers[index] = restorers[0].fresh()
        return restorer
