"""What the router tells the node about one request, and the protocol it tells it through.

The request path goes node -> router -> engine or provider and back; the one
way the router calls into the node is a ``RouteObserver`` the node passes to
``Router.open``:

- ``on_forward(decision)`` is awaited before each attempt, before anything is
  sent to that provider (the node makes its audit start record durable there;
  if it raises, nothing is forwarded and the error propagates);
- ``on_refuse(refusal)`` when the plan leaves no candidate (nothing was forwarded);
- ``on_settle(outcome, charge)`` once, when the stream the request got ends
  (finished, failed mid-way, or the client gone), with what the tenant was charged.

Names: ``alias`` is what the client asked for (the OpenAI ``model`` field);
``model`` is the model name a candidate serves it with. The two never swap.
"""

from __future__ import annotations

from typing import Literal, Protocol

import msgspec

from serving.errors import BastionError

__all__ = ["Attempt", "Charge", "ForwardDecision", "Outcome", "Refusal", "RouteObserver"]


class ForwardDecision(msgspec.Struct, frozen=True, kw_only=True):
    """What the router is about to send where; the stream a request gets carries its last one."""

    #: ``local`` or ``external:<provider>``
    route: str
    #: why this route: the plan's reason (``ok``, ``overflow``, ``local-unhealthy``, ...) or ``failover``
    reason: str
    provider: str
    #: the model that serves the request (not the client's alias)
    model: str
    revision: str
    #: counts by type of what was redacted for this attempt (empty for local attempts)
    redactions: dict[str, int]
    #: 0 for the first attempt, then 1, 2, ... for failovers
    attempt: int
    #: (route, reason) of every candidate left out so far (``unsupported:<field>``, ``breaker-open``, ...)
    skipped: tuple[tuple[str, str], ...] = ()


class Refusal(msgspec.Struct, frozen=True, kw_only=True):
    """The plan left no candidate: why (a route reason) and what it left out."""

    reason: str
    skipped: tuple[tuple[str, str], ...] = ()


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


class RouteObserver(Protocol):
    """The node's side of a request, as the router sees it (see the module docstring)."""

    async def on_forward(self, decision: ForwardDecision) -> None: ...

    def on_refuse(self, refusal: Refusal) -> None: ...

    def on_settle(self, outcome: Outcome, charge: Charge) -> None: ...
