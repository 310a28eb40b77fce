"""The routing decision: which candidates, in which order, and why.

Pure functions over a snapshot (the tenant's residency, the local engine's
state, breakers, cooldowns, spend), so every rule is testable without I/O.

Residency is decided first and structurally: ``plan_local_only`` never sees
an external provider, so a ``local-only`` request cannot be planned outward.
Then the request's fields (``serving.contract``): a candidate whose kind cannot
honour a field the client set is skipped as ``unsupported:<field>``, before any
passing state (health, breakers, budgets) is looked at, so a plan left empty by
fields alone says so (``Plan.unsupported``) and the request is refused, not retried.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Final

import msgspec

from router.config import LOCAL_ONLY, ProviderConfig, RouteConfig, TenantPolicy
from serving.contract import Needs, lacking
from serving.errors import BadResidencyHeaderError

__all__ = [
    "RESIDENCY_HEADER",
    "Candidate",
    "ExternalState",
    "LocalState",
    "Plan",
    "Residency",
    "effective_residency",
    "plan_local_only",
    "plan_with_fallbacks",
]

RESIDENCY_HEADER: Final = "x-bastion-residency"
#: optional whitespace around a header list element (RFC 9110 5.6.3)
_OWS: Final = " \t"


class Residency(msgspec.Struct, frozen=True, kw_only=True):
    local_only: bool
    #: regions external providers may be in (``None``: local-only)
    regions: frozenset[str] | None = None


def effective_residency(
    policy: TenantPolicy, header_values: Sequence[str], *, regions: Collection[str]
) -> Residency:
    """The tenant's residency, tightened (never loosened) by ``x-bastion-residency``.

    ``header_values`` are every value the header arrived with, one per header
    line: HTTP lets a proxy join repeated lines with commas (RFC 9110 5.3), so
    lines and comma-separated elements are read alike, as one list. ``local-only``
    (any case) anywhere in it makes the request local-only; every other element
    must name a configured region (``regions``: the providers' regions, plus the
    tenant's own), and those named are intersected with the tenant's. A header
    that cannot be read (an empty element, an unknown name) is refused with
    ``BadResidencyHeaderError`` naming the element, never read loosely.
    """
    tenant = frozenset(policy.residency) if isinstance(policy.residency, tuple) else None
    local_only, named = _parse_header(header_values, frozenset(regions) | (tenant or frozenset()))
    if tenant is None or local_only:
        return Residency(local_only=True)
    return Residency(local_only=False, regions=tenant if named is None else tenant & named)


def _parse_header(values: Sequence[str], known: frozenset[str]) -> tuple[bool, frozenset[str] | None]:
    """(``local-only`` named anywhere, the regions named or ``None`` when none were)."""
    local_only = False
    named: set[str] = set()
    for value in values:
        for element in value.split(","):
            token = element.strip(_OWS).lower()
            if token == LOCAL_ONLY:
                local_only = True
            elif token in known:
                named.add(token)
            else:
                raise BadResidencyHeaderError(
                    f"{RESIDENCY_HEADER}: {_describe(element)}; expected 'local-only' or configured "
                    "region names, separated by commas",
                    param=RESIDENCY_HEADER,
                    reason="bad-residency-header",
                )
    return local_only, (frozenset(named) if named else None)


def _describe(element: str) -> str:
    if not element.strip(_OWS):
        return "empty element"
    shown = element.strip(_OWS)
    return f"unknown token {shown[:64]!r}" + ("..." if len(shown) > 64 else "")


class Candidate(msgspec.Struct, frozen=True, kw_only=True):
    #: ``local`` for the node's engine, else the external provider's name
    provider: str
    model: str
    local: bool

    @property
    def route(self) -> str:
        return "local" if self.local else f"external:{self.provider}"


class LocalState(msgspec.Struct, frozen=True, kw_only=True):
    """The local engine for this route, as seen now."""

    model: str
    healthy: bool
    breaker_open: bool
    overloaded: bool
    retry_after_s: float = 1.0
    #: request fields this model cannot honour although the local route can (``ProviderInfo``)
    unsupported: frozenset[str] = frozenset()

    @property
    def unavailable_reason(self) -> str | None:
        if not self.healthy:
            return "local-unhealthy"
        if self.breaker_open:
            return "breaker-open"
        if self.overloaded:
            return "overflow"
        return None


class ExternalState(msgspec.Struct, frozen=True, kw_only=True):
    breaker_open: bool = False
    #: seconds left of a 429 ``Retry-After`` cooldown
    cooldown_s: float = 0.0
    breaker_retry_after_s: float = 0.0
    available: bool = True


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    candidates: tuple[Candidate, ...]
    #: why the first candidate (``ok``, ``overflow``, ``local-unhealthy``, ``breaker-open``, ``no-local``)
    reason: str
    #: (provider, why) for everything left out
    skipped: tuple[tuple[str, str], ...] = ()
    #: when nothing is left: the soonest a retry could succeed
    retry_after_s: float = 1.0
    #: when nothing is left because of the monthly spend budget
    budget_exhausted: bool = False
    #: when nothing is left because every candidate residency allows lacks a field: that field
    unsupported: str | None = None


def plan_local_only(local: LocalState | None, needs: Needs = Needs()) -> Plan:
    """A plan from the local engine alone: the only planner a ``local-only`` request reaches."""
    if local is None:
        return Plan(candidates=(), reason="no-local", skipped=(("local", "no-local"),))
    if (field := lacking("local", needs, local.unsupported)) is not None:
        lacks = _unsupported(field)
        return Plan(candidates=(), reason=lacks, skipped=(("local", lacks),), unsupported=field)
    why = local.unavailable_reason
    if why is None:
        return Plan(candidates=(Candidate(provider="local", model=local.model, local=True),), reason="ok")
    return Plan(candidates=(), reason=why, skipped=(("local", why),), retry_after_s=local.retry_after_s)


def plan_with_fallbacks(
    route: RouteConfig,
    residency: Residency,
    policy: TenantPolicy,
    local: LocalState | None,
    providers: Mapping[str, ProviderConfig],
    external: Mapping[str, ExternalState],
    *,
    spend_left: float | None,
    needs: Needs = Needs(),
) -> Plan:
    """Local first when it can take the request in budget, then eligible fallbacks in order.

    An overloaded (but healthy) local engine goes last: better late than failed.
    """
    if residency.local_only or residency.regions is None:
        return plan_local_only(local, needs)
    head = plan_local_only(local, needs)
    skipped = list(head.skipped)
    candidates = list(head.candidates)
    retry_after = [head.retry_after_s] if not candidates else []
    budget_exhausted = False
    for fb in route.fallbacks:
        why = _ineligible(fb.provider, residency, policy, providers, external, spend_left, needs)
        state = external.get(fb.provider)
        if why is None and state is not None:
            candidates.append(Candidate(provider=fb.provider, model=fb.model, local=False))
            continue
        skipped.append((fb.provider, why or "no-provider"))
        budget_exhausted |= why == "budget"
        if state is not None and why == "breaker-open":
            retry_after.append(state.breaker_retry_after_s)
        elif state is not None and why == "upstream-rate-limited":
            retry_after.append(state.cooldown_s)
    if local is not None and local.unavailable_reason == "overflow" and head.unsupported is None:
        candidates.append(Candidate(provider="local", model=local.model, local=True))
    reason = head.reason if local is not None else "no-local"
    return Plan(
        candidates=tuple(candidates),
        reason=reason,
        skipped=tuple(skipped),
        retry_after_s=max(0.001, min(retry_after, default=1.0)),
        budget_exhausted=budget_exhausted and not candidates,
        unsupported=None if candidates else _only_fields(skipped),
    )


def _unsupported(field: str) -> str:
    return f"unsupported:{field}"


def _only_fields(skipped: Sequence[tuple[str, str]]) -> str | None:
    """The first field lacking when every candidate residency (or the tenant) allows lacks one."""
    fields = [why.removeprefix("unsupported:") for _, why in skipped if why.startswith("unsupported:")]
    structural = {"no-local", "no-provider", "residency", "not-allowed"}
    if fields and all(why.startswith("unsupported:") or why in structural for _, why in skipped):
        return fields[0]
    return None


def _ineligible(
    name: str,
    residency: Residency,
    policy: TenantPolicy,
    providers: Mapping[str, ProviderConfig],
    external: Mapping[str, ExternalState],
    spend_left: float | None,
    needs: Needs,
) -> str | None:
    config = providers.get(name)
    state = external.get(name)
    if config is None or state is None or not state.available:
        return "no-provider"
    if residency.regions is None or config.region not in residency.regions:
        return "residency"
    if policy.allowed_providers is not None and name not in policy.allowed_providers:
        return "not-allowed"
    if (field := lacking(config.kind, needs)) is not None:
        return _unsupported(field)
    if spend_left is not None and spend_left <= 0:
        return "budget"
    if state.breaker_open:
        return "breaker-open"
    if state.cooldown_s > 0:
        return "upstream-rate-limited"
    return None
