"""The stream a routed request returns: deltas plus where it went and why.

Wraps a provider's iterator after its first delta arrived (failover is over by
then). It restores redacted values when the tenant asks (placeholders may
straddle delta boundaries), reports the outcome once (success, failure, or
cancellation, each with the tokens known so far) so breakers, budgets and
spend stay right, and turns any failure after the first token into a
``BastionError`` raised from the iterator: a cut stream never ends as a clean
answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Literal

import msgspec

from router.restorer import Restorer
from serving.errors import BastionError, UpstreamError
from serving.protocol import Delta

__all__ = ["Attempt", "Charge", "Outcome", "RoutedStream"]


class _Empty:
    def __aiter__(self) -> _Empty:
        return self

    async def __anext__(self) -> Delta:
        raise StopAsyncIteration


_EMPTY = _Empty()


class Attempt(msgspec.Struct, frozen=True, kw_only=True):
    """One candidate considered for a request, for the audit record."""

    route: str
    model: str
    outcome: Literal["ok", "skipped", "failed", "rate-limited"]
    reason: str
    status_code: int | None = None


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """How a stream ended, with the tokens its deltas reported by then (0: none reported)."""

    ok: bool
    #: ``None``: the client went away; neither success nor failure
    error: BastionError | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cancelled: bool = False


class Charge(msgspec.Struct, frozen=True, kw_only=True):
    """What the tenant was charged for a stream, whatever its outcome."""

    prompt_tokens: int
    completion_tokens: int
    #: external spend in the configured currency (0 for local)
    cost: float = 0.0


class RoutedStream:
    """Async iterator of ``Delta`` with the route taken; see ``Router.open``."""

    def __init__(
        self,
        *,
        first: Delta,
        rest: AsyncIterator[Delta],
        route: str,
        reason: str,
        provider: str,
        model: str,
        revision: str,
        redactions: dict[str, int],
        attempts: list[Attempt],
        restorer: Restorer | None,
        settle: Callable[[Outcome], Charge],
    ) -> None:
        self.route = route
        self.reason = reason
        self.provider = provider
        self.model = model
        self.revision = revision
        self.redactions = redactions
        self.attempts = attempts
        #: usage so far; once the stream ended (any outcome), what the tenant was charged
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cost = 0.0
        self._first: Delta | None = first
        self._rest = rest
        self._restorer = restorer
        self._settle = settle
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
                    f"{self.route}: stream ended without a finish reason", reason="stream-truncated"
                )
            ) from None
        except BastionError as exc:
            raise self._fail(exc) from None
        except Exception as exc:
            raise self._fail(
                UpstreamError(f"{self.route}: stream failed ({type(exc).__name__})", reason="stream-failed")
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
        close = getattr(rest, "aclose", None)
        if close is not None:
            await close()

    def _fail(self, error: BastionError) -> BastionError:
        if not self._done:
            self._done = True
            self._charge(Outcome(ok=False, error=error))
        return error

    def _charge(self, outcome: Outcome) -> None:
        """Settle once, with the tokens known so far, and keep what was charged."""
        outcome = msgspec.structs.replace(
            outcome, prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens
        )
        charge = self._settle(outcome)
        self.prompt_tokens, self.completion_tokens = charge.prompt_tokens, charge.completion_tokens
        self.cost = charge.cost

    def _post(self, delta: Delta) -> Delta:
        # running totals; the final usage may correct the chunks an external provider counted
        if delta.prompt_tokens:
            self.prompt_tokens = delta.prompt_tokens
        if delta.completion_tokens:
            self.completion_tokens = delta.completion_tokens
        if self._restorer is not None:
            delta = self._restorer.delta(delta)
        if delta.finish_reason is None:
            return delta
        if not self._done:
            self._done = True
            self._charge(Outcome(ok=True))
        return delta
