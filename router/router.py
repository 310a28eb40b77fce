"""The orchestrator: limits, decision, redaction, connect with failover, stream.

``Router.open`` is the one call the node makes per generation:

1. per-tenant limits (rpm, tpm, tokens per day) or 429;
2. the tenant's residency, tightened by ``x-bastion-residency``;
3. a plan: for ``local-only`` from the local engine alone (``plan_local_only``
   is given no external provider and ``_connect`` only the local table), else
   local first when it fits its TTFT budget, then fallbacks in order;
4. candidates tried in order until one yields its first delta (jittered
   backoff; ``router.connect.classify`` says what a failure means: a 429's
   ``Retry-After`` cools that provider down and is waited out when it fits the
   failover budget), redacting before the first egress; the observer's
   ``on_forward`` is awaited with each attempt's ``ForwardDecision`` first;
5. a ``RoutedStream`` that carries the decision it streams with, restores
   placeholders and settles breakers, budgets and spend when it ends (``Account``):
   however it ends (finished, failed mid-way, or the client gone), the tenant is
   charged the prompt and the tokens produced.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping

import msgspec

from router.anthropic_provider import AnthropicProvider
from router.breaker import Breaker
from router.config import RedactionConfig, RouteConfig, RouterConfig, TenantPolicy
from router.connect import Failure, connect
from router.decision import Attempt, ForwardDecision, Refusal, RouteObserver
from router.free_text import FreeTextDetector, FreeTextEntity
from router.limits import Limiter, LimitState
from router.openai_provider import OpenAIProvider
from router.policy import (
    Candidate,
    ExternalState,
    LocalState,
    Plan,
    Residency,
    effective_residency,
    plan_local_only,
    plan_with_fallbacks,
)
from router.providers import build_provider
from router.redaction import Redaction, Redactor, request_texts
from router.stream import Account, RoutedStream
from serving.contract import needs
from serving.errors import (
    BastionError,
    BudgetExceededError,
    EngineUnavailableError,
    ModelNotFoundError,
    RedactionError,
    ResidencyRejectedError,
    ServiceUnavailableError,
    UnsupportedFieldError,
    UpstreamError,
    UpstreamRateLimitedError,
)
from serving.protocol import GenerationRequest, Provider, prompts

__all__ = ["RouteRequest", "Router"]

_EWMA = 0.2
_REDACT_INLINE_CHARS = 16_384


class RouteRequest(msgspec.Struct, frozen=True, kw_only=True):
    tenant: str
    policy: TenantPolicy
    #: what the client asked for (``model`` in the OpenAI request)
    alias: str
    #: the request; its ``model`` is replaced by each candidate's own model name
    generation: GenerationRequest
    #: every value of ``x-bastion-residency``, one per header line: may only tighten the tenant's residency
    residency_headers: tuple[str, ...] = ()


class Router:
    """Routes generations for the node. ``local`` maps local served model names to engines;
    ``external`` maps provider names to providers (built from ``config`` when ``None``, and
    then owned and closed by the router). ``redactor``, when given, redacts for every tenant
    instead of one built from each tenant's ``redaction`` settings.
    ``limits`` holds the tenants' counters (this process's memory when ``None``; a fleet passes
    ``PgLimits``)."""

    def __init__(
        self,
        config: RouterConfig,
        *,
        local: Mapping[str, Provider],
        external: Mapping[str, Provider] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        redactor: Redactor | None = None,
        limits: LimitState | None = None,
    ) -> None:
        self._config = config
        self._options = config.routing
        self._routes = {r.alias: r for r in config.routes}
        self._providers = {p.name: p for p in config.providers}
        #: the region names a residency header may use (besides the tenant's own)
        self._regions = frozenset(p.region for p in config.providers)
        self._local = dict(local)
        self._owned: list[OpenAIProvider | AnthropicProvider] = []
        if external is None:
            built: dict[str, Provider] = {}
            for p in config.providers:
                provider = build_provider(p)
                self._owned.append(provider)
                built[p.name] = provider
            external = built
        self._external = dict(external)
        self._clock = clock
        self._breakers = {name: Breaker(p.breaker, clock=clock) for name, p in self._providers.items()}
        self._local_breakers = {
            name: Breaker(self._options.local_breaker, clock=clock) for name in self._local
        }
        self._cooldown_until: dict[str, float] = {}
        self._ttft_ms: dict[str, float] = {}
        self._limits: LimitState = limits or Limiter(clock=clock, wall_clock=wall_clock)
        self._redactor = redactor
        self._redactors: dict[RedactionConfig, Redactor] = {}

    @property
    def limits(self) -> LimitState:
        """The tenants' counters (``Limiter`` on a single node)."""
        return self._limits

    async def aclose(self) -> None:
        for provider in self._owned:
            await provider.aclose()

    def aliases(self) -> list[str]:
        return sorted(self._routes)

    def replace_routes(self, config: RouterConfig) -> None:
        """Take ``config``'s routes for every request opened from now on (a reload).

        Streams already open keep the route they were given. Providers and routing
        options hold connections, breakers and timers: a change to them needs a
        restart, and is a ``ValueError`` here that changes nothing.
        """
        if config.providers != self._config.providers or config.routing != self._config.routing:
            raise ValueError("providers and [routing] options change only with a restart")
        missing = {r.local for r in config.routes if r.local and r.local not in self._local}
        if missing:
            raise ValueError(f"routes name local models this node does not run: {sorted(missing)}")
        self._config = config
        self._routes = {r.alias: r for r in config.routes}

    def breaker_states(self) -> dict[str, str]:
        """``local:<model>`` and external provider names -> ``closed`` / ``open`` / ``half-open``."""
        states = {f"local:{k}": b.state.value for k, b in self._local_breakers.items()}
        states.update({k: b.state.value for k, b in self._breakers.items()})
        return states

    async def open(self, request: RouteRequest, *, observer: RouteObserver | None = None) -> RoutedStream:
        """Admit, decide, redact and connect; return once the first delta arrived.

        ``observer.on_forward`` is awaited before each attempt, before anything is sent
        to that provider (the node writes its durable audit start record there); if it
        raises, nothing is forwarded and the error propagates. ``on_refuse`` hears of a
        plan with no candidate, ``on_settle`` of the returned stream's end.

        Raises ``RateLimitedError``/``BudgetExceededError`` (429),
        ``ResidencyRejectedError``/``ServiceUnavailableError`` (503),
        ``RedactionError`` (503), ``UpstreamError`` (502) or a provider's
        ``BadRequestError``; each with ``reason`` and, where known, ``retry_after_s``.
        """
        route = self._routes.get(request.alias)
        if route is None:
            # The node decided access before (``node.access``): only a reload that dropped the
            # alias in between leads here, and it answers as the node would have.
            raise ModelNotFoundError.of(request.alias)
        residency = effective_residency(request.policy, request.residency_headers, regions=self._regions)
        await self._limits.admit(request.tenant, request.policy)
        plan = await self._plan(route, residency, request)
        if not plan.candidates and plan.reason == "overflow":
            plan = await self._wait_for_local(route, residency, request)
        if not plan.candidates:
            refused = self._rejection(plan, residency, request)
            if observer is not None:
                reason = refused.reason or plan.reason
                observer.on_refuse(Refusal(reason=reason, skipped=_route_names(plan.skipped)))
            raise refused
        attempts = [
            Attempt(route=route, model="", outcome="skipped", reason=why)
            for route, why in _route_names(plan.skipped)
        ]
        # The only table of providers a local-only request can reach: the local engines.
        table: Mapping[str, Provider] = {} if residency.local_only else self._external
        return await self._connect(request, residency, plan, table, attempts, observer)

    # -- deciding ---------------------------------------------------------------------------------

    async def _plan(self, route: RouteConfig, residency: Residency, request: RouteRequest) -> Plan:
        local = await self._local_state(route)
        wants = needs(request.generation)
        if residency.local_only:
            return plan_local_only(local, wants)
        now = self._clock()
        external = {
            name: ExternalState(
                breaker_open=not b.can_pass(),
                breaker_retry_after_s=b.retry_after_s(),
                cooldown_s=max(0.0, self._cooldown_until.get(name, 0.0) - now),
                available=name in self._external,
            )
            for name, b in self._breakers.items()
        }
        return plan_with_fallbacks(
            route,
            residency,
            request.policy,
            local,
            self._providers,
            external,
            spend_left=await self._limits.spend_left(request.tenant, request.policy),
            needs=wants,
        )

    async def _local_state(self, route: RouteConfig) -> LocalState | None:
        if route.local is None:
            return None
        provider = self._local.get(route.local)
        breaker = self._local_breakers.get(route.local)
        if provider is None or breaker is None:
            return LocalState(model=route.local, healthy=False, breaker_open=False, overloaded=False)
        try:
            health = await provider.health()
        except Exception:
            return LocalState(model=route.local, healthy=False, breaker_open=False, overloaded=False)
        predicted_ms = self._ttft_ms.get(route.local, self._options.local_ttft_prior_ms) * (
            health.waiting + 1
        )
        saturated = health.kv_cache_usage >= self._options.kv_cache_high and health.waiting > 0
        return LocalState(
            model=route.local,
            unsupported=provider.describe().unsupported,
            healthy=health.healthy,
            breaker_open=not breaker.can_pass(),
            overloaded=predicted_ms > route.ttft_budget_ms or saturated,
            retry_after_s=max(1.0, breaker.retry_after_s()),
        )

    async def _wait_for_local(self, route: RouteConfig, residency: Residency, request: RouteRequest) -> Plan:
        """The local engine is busy and nothing else may take the request: wait within its TTFT budget."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + route.ttft_budget_ms / 1000
        step = min(0.05, route.ttft_budget_ms / 10_000)
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return await self._plan(route, residency, request)
            await asyncio.sleep(min(step, remaining))
            plan = await self._plan(route, residency, request)
            if plan.candidates or plan.reason != "overflow":
                return plan

    def _rejection(self, plan: Plan, residency: Residency, request: RouteRequest) -> BastionError:
        if plan.unsupported is not None:
            lacks = "; ".join(
                f"{_route_name(name)} cannot honour `{why.removeprefix('unsupported:')}`"
                for name, why in plan.skipped
                if why.startswith("unsupported:")
            )
            scope = " (the request is local-only)" if residency.local_only else ""
            return UnsupportedFieldError(
                f"`{plan.unsupported}` is not supported by any route this request may take{scope}: "
                f"{lacks}; nothing was forwarded",
                param=plan.unsupported,
                reason=f"unsupported:{plan.unsupported}",
                skipped=_route_names(plan.skipped),
            )
        if residency.local_only:
            return ResidencyRejectedError(
                f"the local engine cannot take this local-only request now ({plan.reason}); "
                "it was not sent to any external provider",
                retry_after_s=plan.retry_after_s,
                reason=plan.reason,
            )
        if plan.budget_exhausted:
            return BudgetExceededError(
                f"tenant {request.tenant!r} has spent its external budget for this month",
                retry_after_s=self._limits.until_next_month(),
                reason="budget-spend-per-month",
            )
        external = {why for name, why in plan.skipped if name != "local"}
        if external <= {"no-provider"}:
            return EngineUnavailableError(
                f"the local engine cannot take the request now ({plan.reason}) and no fallback is configured",
                retry_after_s=plan.retry_after_s,
                reason=plan.reason,
            )
        if external <= {"residency", "not-allowed", "no-provider"}:
            return ResidencyRejectedError(
                f"no provider this tenant may use can take the request now ({plan.reason})",
                retry_after_s=plan.retry_after_s,
                reason=plan.reason,
            )
        reason = "breaker-open" if "breaker-open" in external else "upstream-rate-limited"
        return ServiceUnavailableError(
            f"every candidate is unavailable ({reason})",
            retry_after_s=plan.retry_after_s,
            reason=reason,
        )

    # -- connecting -------------------------------------------------------------------------------

    async def _connect(
        self,
        request: RouteRequest,
        residency: Residency,
        plan: Plan,
        table: Mapping[str, Provider],
        attempts: list[Attempt],
        observer: RouteObserver | None,
    ) -> RoutedStream:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._options.failover_budget_s
        queue = list(plan.candidates)
        deferred: list[tuple[float, Candidate]] = []  # (ready at, candidate) after a 429
        retried: set[str] = set()
        redaction: Redaction | None = None
        last: BastionError | None = None
        tries = 0
        while queue or deferred:
            if not queue:
                deferred.sort(key=lambda d: d[0])
                ready, candidate = deferred.pop(0)
                await asyncio.sleep(max(0.0, ready - loop.time()))
            else:
                candidate = queue.pop(0)
                if tries:
                    await asyncio.sleep(self._backoff(tries, deadline - loop.time()))
            if candidate.local:
                provider = self._local.get(candidate.model)
                breaker = self._local_breakers.get(candidate.model)
            else:
                provider = table.get(candidate.provider)
                breaker = self._breakers.get(candidate.provider)
            if provider is None or breaker is None:
                attempts.append(_skip(candidate, "no-provider"))
                continue
            generation = msgspec.structs.replace(request.generation, model=candidate.model)
            if not candidate.local and request.policy.redact:
                # Raises RedactionError when it cannot run: nothing goes out (fail closed).
                redaction = redaction or await self._redact(request)
                generation = msgspec.structs.replace(redaction.request, model=candidate.model)
            if not breaker.acquire():
                attempts.append(_skip(candidate, "breaker-open"))
                continue
            used = redaction if not candidate.local else None
            decision = _decision(candidate, provider, plan.reason, attempts, used, tries)
            try:
                if observer is not None:
                    await observer.on_forward(decision)
                started = self._clock()
                result = await connect(provider, generation, route=candidate.route)
            except BaseException:
                breaker.release()  # nothing was forwarded, or the client went away: neither outcome
                raise
            tries += 1
            if isinstance(result, Failure):
                last = self._failed(candidate, breaker, result, attempts)
                wait = result.wait_s
                if (
                    result.kind == "rate-limited"
                    and candidate.route not in retried
                    and loop.time() + wait <= deadline
                ):
                    retried.add(candidate.route)
                    deferred.append((loop.time() + wait, candidate))
                continue
            if candidate.local:
                self._observe_ttft(candidate.model, (self._clock() - started) * 1000)
            attempts.append(
                Attempt(route=candidate.route, model=candidate.model, outcome="ok", reason=decision.reason)
            )
            account = Account(
                breaker=breaker,
                limits=self._limits,
                tenant=request.tenant,
                price=None
                if candidate.local
                else self._providers[candidate.provider].models.get(candidate.model),
                generation=request.generation,
            )
            restorer = used.restorer() if used is not None and request.policy.restore_pii else None
            return RoutedStream(
                connection=result,
                decision=decision,
                attempts=tuple(attempts),
                restorer=restorer,
                account=account,
                observer=observer,
            )
        raise self._exhausted(residency, last)

    def _failed(
        self, candidate: Candidate, breaker: Breaker, failure: Failure, attempts: list[Attempt]
    ) -> BastionError:
        """Settle a failed attempt; raises a ``refused`` one's error, else returns what to remember."""
        if failure.kind == "refused":
            breaker.release()  # the request's fault: another provider would refuse it too
            raise failure.error
        if failure.kind == "rate-limited":
            breaker.release()  # a cooldown, not a breaker failure
            self._cooldown_until[candidate.provider] = self._clock() + failure.wait_s
        else:
            breaker.record_failure()
        attempts.append(
            Attempt(
                route=candidate.route,
                model=candidate.model,
                outcome=failure.kind,
                reason=failure.reason,
                status_code=failure.status_code,
            )
        )
        return failure.error

    def _exhausted(self, residency: Residency, last: BastionError | None) -> BastionError:
        if residency.local_only:
            return ResidencyRejectedError(
                "the local engine failed this local-only request; it was not sent to any external provider",
                retry_after_s=1.0,
                reason="local-failed",
            )
        if isinstance(last, UpstreamRateLimitedError):
            return ServiceUnavailableError(
                "every provider is rate limiting",
                reason="upstream-rate-limited",
                retry_after_s=last.retry_after_s or 1.0,
            )
        return UpstreamError(
            "no candidate could serve the request", reason="all-candidates-failed", retry_after_s=1.0
        )

    async def _redact(self, request: RouteRequest) -> Redaction:
        config = request.policy.redaction
        redactor = self._redactor or self._redactors.get(config)
        if redactor is None:
            redactor = self._redactors[config] = Redactor(config)
        generation = request.generation
        entities: list[FreeTextEntity] = []
        if config.ner_model is not None:
            # Only the node's own engines are asked: free text never leaves to be redacted.
            engine = self._local.get(config.ner_model)
            if engine is None:
                raise RedactionError(
                    f"the free-text redaction model {config.ner_model!r} is not served on this node; "
                    "the request was not sent out",
                    reason="free-text-unavailable",
                )
            detector = FreeTextDetector(engine, config.ner_model, timeout_s=config.ner_timeout_s)
            entities = await detector.detect(request_texts(generation))
        size = sum(len(p) for p in prompts(generation)) + sum(
            len(m.content or "") for m in generation.messages or ()
        )
        if size < _REDACT_INLINE_CHARS and not generation.tools:
            return redactor.redact(generation, entities)
        # Long prompts and tool definitions take milliseconds: let the event loop serve other
        # streams meanwhile.
        return await asyncio.to_thread(redactor.redact, generation, entities)

    def _backoff(self, tries: int, remaining: float) -> float:
        base = min(self._options.backoff_max_s, self._options.backoff_base_s * 2.0 ** (tries - 1))
        return max(0.0, min(remaining, base * random.uniform(0.5, 1.5)))

    def _observe_ttft(self, model: str, ms: float) -> None:
        old = self._ttft_ms.get(model)
        self._ttft_ms[model] = ms if old is None else old + _EWMA * (ms - old)


def _decision(
    candidate: Candidate,
    provider: Provider,
    plan_reason: str,
    attempts: list[Attempt],
    redaction: Redaction | None,
    tries: int,
) -> ForwardDecision:
    """The decision for one attempt: ``failover`` once an earlier attempt failed, else the plan's reason."""
    failed_before = any(a.outcome in ("failed", "rate-limited") for a in attempts)
    info = provider.describe()
    return ForwardDecision(
        route=candidate.route,
        reason="failover" if failed_before else plan_reason,
        provider=info.name,
        model=candidate.model,
        revision=info.revisions.get(candidate.model, candidate.model),
        redactions=dict(redaction.counts) if redaction is not None else {},
        attempt=tries,
        skipped=tuple((a.route, a.reason) for a in attempts if a.outcome == "skipped"),
    )


def _skip(candidate: Candidate, why: str) -> Attempt:
    return Attempt(route=candidate.route, model=candidate.model, outcome="skipped", reason=why)


def _route_names(skipped: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    return tuple((_route_name(name), why) for name, why in skipped)


def _route_name(provider: str) -> str:
    return "local" if provider == "local" else f"external:{provider}"
