"""One request's record: its audit events, timings, metrics and log line.

A record exists from the moment the caller is authenticated, before the body
is read, and every way out of the request path passes through it: an
authenticated request always leaves ``request.start`` and ``request.end``, or
``request.rejected`` (whatever refused it: a body that does not decode, a
limit, the router, an unexpected error).

A record is the router's ``RouteObserver`` for its request. The start record is
appended (and durable) in ``on_forward``, which the router awaits before it
contacts any provider; if the audit log cannot take it, the router forwards
nothing and the request counts as not forwarded (its end is a
``request.rejected``, never a ``request.end`` without a start). ``on_refuse``
keeps why the router found no route, ``on_settle`` what the tenant was
charged. The end record is durable before the response's last byte is sent.

The route reason (why the route: ``x-bastion-route-reason``, ``reason`` in the
records) and the error's reason (``x-bastion-route-error``, ``route_error``)
are kept apart.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio

from audit import AuditEvent
from router import Charge, ForwardDecision, Outcome, Refusal
from serving.errors import BastionError
from serving.protocol import Delta, GenerationRequest, ToolCall, choices

from .errors import to_bastion_error
from .logs import log_request
from .metrics import RequestTimer, RequestTimings
from .state import NodeState
from .tenancy import Principal

__all__ = ["RequestRecord"]

_log = logging.getLogger("bastion.request")


@dataclass(kw_only=True)
class RequestRecord:
    state: NodeState
    principal: Principal
    request_id: str
    endpoint: str
    started: float
    #: known once the body has decoded (``admitted``); a request refused before has none
    alias: str = ""
    subject: str | None = None
    generation: GenerationRequest | None = None
    #: what the start record encrypts for a request that is not a generation (embeddings' input)
    content: dict[str, Any] | None = None
    #: what the start and end records say of such a request's parameters
    params: dict[str, Any] = field(default_factory=dict)
    #: the router's last decision: once the request streams, the one it streams with
    decision: ForwardDecision | None = None
    #: why the router found no route, when it refused the request
    refusal: Refusal | None = None
    #: where ``headers()`` go when the request is refused before its response (the error handler's)
    refusal_headers: dict[str, str] | None = None
    #: [route, reason] of every candidate the plan left out
    skipped: list[list[str]] = field(default_factory=list)
    external_cost: float = 0.0
    #: (prompt, completion) tokens the tenant was charged once the stream ended (``None``: the last
    #: delta's counts)
    charged_tokens: tuple[int, int] | None = None
    forwarded: bool = False
    first_token_at: float | None = None
    last_token_at: float | None = None
    chunks: int = 0
    stream: bool = False
    timer: RequestTimer | None = None
    _ended: bool = False

    @property
    def tenant(self) -> str:
        return self.principal.tenant.name

    @property
    def route(self) -> str:
        return self.decision.route if self.decision is not None else "none"

    @property
    def reason(self) -> str:
        """The route reason: the decision's, the refusal's, or ``rejected`` (never an error's reason)."""
        if self.decision is not None:
            return self.decision.reason
        return self.refusal.reason if self.refusal is not None else "rejected"

    @contextlib.asynccontextmanager
    async def refusals_recorded(self) -> AsyncIterator[None]:
        """Around everything between authentication and the response (or the stream): whatever
        raises there ends the request through this record, so it is never left unrecorded.
        A node that is draining refuses the request here (503 ``draining``, recorded)."""
        try:
            self.state.drain.refuse_if_draining()
            yield
        except BaseException as exc:
            await self.failed_before_stream(exc)
            if self.refusal_headers is not None:
                self.refusal_headers.update(self.headers())
            raise

    def admitted(self, *, alias: str, subject: str | None, generation: GenerationRequest) -> None:
        """The body decoded into a generation request for ``alias``."""
        self.alias, self.subject, self.generation = alias, subject, generation

    async def on_forward(self, decision: ForwardDecision) -> None:
        """Awaited by the router before each attempt; the first writes the start record."""
        self.decision = decision
        event_type = "request.failover" if self.forwarded else "request.start"
        if event_type == "request.start":
            self._skipped(decision.skipped)
        if self.timer is None:
            meter = self.state.gpu_meters.get(decision.model) if decision.route == "local" else None
            self.timer = self.state.metrics.track_request(
                tenant=self.tenant,
                alias=self.alias,
                route=self.route,
                gpu_meter=meter,
            )
            self.timer.started_s = self.started
            self.timer.dequeued()
        # the provider that streams may not be the first one tried
        self.timer.exact_counts = decision.route == "local"
        audit = self.state.audit
        if audit is not None:
            content: dict[str, Any] | None = None
            if event_type == "request.start" and (g := self.generation) is not None:
                content = (
                    (
                        {"messages": [m_to_dict(m) for m in g.messages]}
                        if g.messages is not None
                        else {"prompt": g.prompt}
                    )
                    | _tools_content(g)
                    | _output_settings(g)
                )
            elif event_type == "request.start":
                content = self.content
            event = AuditEvent(
                type=event_type, tenant=self.tenant, subject=self.subject, meta=self._meta(), content=content
            )
            await audit.append(event)
        # Only once the start record is durable: if the append raised, nothing was forwarded
        # and the request ends as rejected, not with an end record that has no start.
        self.forwarded = True
        if event_type == "request.start" and self.state.feedback is not None:
            # lets /v1/feedback label its count with the model; never raises
            await self.state.feedback.remember(
                tenant=self.tenant, request_id=self.request_id, alias=self.alias
            )

    def on_refuse(self, refusal: Refusal) -> None:
        """The router's plan left no candidate: nothing was forwarded."""
        self.refusal = refusal
        self._skipped(refusal.skipped)

    def on_settle(self, outcome: Outcome, charge: Charge) -> None:
        """The stream ended: the end record, the metrics and the budgets take the router's charge
        (a cut or abandoned stream included)."""
        self.charged_tokens = (charge.prompt_tokens, charge.completion_tokens)
        self.external_cost = charge.cost

    def _skipped(self, skipped: tuple[tuple[str, str], ...]) -> None:
        """The candidates the plan left out: in the records and counted in the metrics."""
        self.skipped = [[str(route), str(why)] for route, why in skipped]
        self.state.metrics.observe_skips((route, why) for route, why in self.skipped)

    def _meta(self) -> dict[str, Any]:
        d = self.decision
        meta: dict[str, Any] = {
            "request_id": self.request_id,
            "key_id": self.principal.key_id,
            "endpoint": self.endpoint,
            "alias": self.alias,
            "route": self.route,
            "reason": self.reason,
            "provider": d.provider if d is not None else "",
            "model": d.model if d is not None else "",
            "revision": d.revision if d is not None else "",
            "redactions": dict(d.redactions) if d is not None else {},
        } | self.params
        if self.skipped:
            meta["skipped"] = self.skipped
        if self.generation is not None:
            s = self.generation.sampling
            meta["sampling"] = {
                "max_tokens": s.max_tokens,
                "temperature": s.temperature,
                "top_p": s.top_p,
                "stop": list(s.stop),
                "seed": s.seed,
                "n": s.n,
                "frequency_penalty": s.frequency_penalty,
                "presence_penalty": s.presence_penalty,
            }
        return meta

    def on_delta(self, delta: Delta) -> None:
        if delta.text or delta.tool_calls or delta.tool_call_deltas:
            now = time.monotonic()
            if self.first_token_at is None:
                self.first_token_at = now
            self.last_token_at = now
            self.chunks += 1
        if self.timer is not None:
            self.timer.tokens(
                delta.completion_tokens, output=bool(delta.text or delta.tool_calls or delta.tool_call_deltas)
            )

    def headers(self) -> dict[str, str]:
        """The response headers that say where the request ran."""
        headers = {"x-request-id": self.request_id}
        if self.decision is None and self.refusal is None:
            return headers  # refused before the router decided anything
        headers["x-bastion-route"] = self.route
        headers["x-bastion-route-reason"] = self.reason
        if self.decision is not None and self.decision.revision:
            headers["x-bastion-model-revision"] = self.decision.revision
        return headers

    async def failed_before_stream(self, exc: BaseException) -> None:
        """The request ended before any token: record it (forwarded or not) and count it."""
        err = to_bastion_error(exc) if isinstance(exc, Exception) else None
        status = "cancelled" if err is None else err.code
        try:
            with anyio.CancelScope(shield=True):  # a cancelled request is recorded all the same
                await self.ended(status=status, text="", error=err)
        except Exception:
            _log.exception("could not record a failed request %s", self.request_id)

    async def ended(
        self,
        *,
        status: str,
        text: str | list[str],
        error: BastionError | None,
        last: Delta | None = None,
        tool_calls: tuple[ToolCall, ...] | None = None,
    ) -> None:
        """The end record; ``text`` is the answer (one text per choice when there are several)."""
        if self._ended:
            return
        self._ended = True
        now = time.monotonic()
        last = last or Delta()
        prompt_tokens, completion_tokens = self.charged_tokens or (last.prompt_tokens, last.completion_tokens)
        ttft = (self.first_token_at - self.started) if self.first_token_at is not None else None
        e2e = now - self.started
        http_status = 200 if error is None and status == "ok" else (error.status_code if error else 499)
        meta = self._meta() | {
            "status": status,
            "http_status": http_status,
            "error_code": error.code if error else None,
            "route_error": error.reason if error else None,
            "param": error.param if error else None,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "cached_tokens": last.cached_tokens,
            "finish_reason": last.finish_reason,
            "ttft_ms": round(ttft * 1000, 3) if ttft is not None else None,
            "e2e_ms": round(e2e * 1000, 3),
        }
        timings = self._observe(http_status, prompt_tokens, completion_tokens)
        self.state.metrics.observe_endpoint(endpoint=self.endpoint, route=self.route, status=http_status)
        features = [
            name
            for name, used in (
                ("tools", self.generation and self.generation.tools),
                ("tool_calls", tool_calls),
            )
            if used
        ]
        if self.generation is not None:
            features += _features(self.generation)
        self.state.metrics.observe_features(features, route=self.route)
        log_request(
            _log,
            request_id=self.request_id,
            tenant=self.tenant,
            alias=self.alias,
            served_model=self.decision.model if self.decision is not None else "",
            route=self.route,
            status=http_status,
            timings=timings,
            endpoint=self.endpoint,
            code=error.code if error else (None if status == "ok" else status),
            stream=self.stream,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cached_tokens=last.cached_tokens,
            route_reason=self.reason,
        )
        audit = self.state.audit
        if audit is None:
            return
        event_type = "request.end" if self.forwarded else "request.rejected"
        # an output that is not text (embedding vectors) is not stored
        content: dict[str, Any] | None = None
        if self.forwarded and self.generation is not None:
            content = _completion(text)
            if tool_calls:
                content["tool_calls"] = [_call_dict(c) for c in tool_calls]
        await audit.append(
            AuditEvent(type=event_type, tenant=self.tenant, subject=self.subject, meta=meta, content=content)
        )

    def _observe(self, http_status: int, prompt_tokens: int, completion_tokens: int) -> RequestTimings:
        if self.timer is not None:
            return self.timer.finish(
                status=http_status,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                external_cost=self.external_cost,
            )
        # refused before any provider was contacted: counted, no latency observed
        e2e = time.monotonic() - self.started
        self.state.metrics.observe_request(
            tenant=self.tenant, alias=self.alias, route="none", status=http_status, e2e_s=None
        )
        return RequestTimings(
            e2e_s=e2e, queue_wait_s=None, ttft_s=None, itl_mean_s=None, gpu_seconds=0.0, cost=0.0
        )


def _call_dict(c: ToolCall) -> dict[str, Any]:
    return {"id": c.id, "name": c.function.name, "arguments": c.function.arguments}


def _tools_content(g: GenerationRequest) -> dict[str, Any]:
    """The tool definitions and choices of a request, for its (encrypted) start record."""
    out: dict[str, Any] = {}
    if g.tools:
        out["tools"] = list(g.tools)
    if g.tool_choice is not None:
        out["tool_choice"] = g.tool_choice
    if g.parallel_tool_calls is not None:
        out["parallel_tool_calls"] = g.parallel_tool_calls
    return out


def _output_settings(g: GenerationRequest) -> dict[str, Any]:
    """What the request asked of its output's shape, for the start record (encrypted with the
    prompt: a schema or a logit bias can say as much as the prompt does)."""
    out: dict[str, Any] = {}
    if g.response_format is not None:
        out["response_format"] = g.response_format
    s = g.sampling
    if s.logprobs is not None:
        out["logprobs"] = s.logprobs
    if s.logit_bias:
        out["logit_bias"] = {str(k): v for k, v in s.logit_bias.items()}
    return out


def _features(g: GenerationRequest) -> list[str]:
    """The API features (``node.metrics.FEATURES``) a request used."""
    out: list[str] = []
    kind = (g.response_format or {}).get("type")
    if kind in ("json_object", "json_schema"):
        out.append(str(kind))
    if g.sampling.logprobs is not None:
        out.append("logprobs")
    if choices(g) > 1:
        out.append("choices")
    return out


def _completion(text: str | list[str]) -> dict[str, Any]:
    if isinstance(text, str):
        return {"completion": text}
    if len(text) == 1:
        return {"completion": text[0]}
    return {"completion": text[0] if text else "", "choices": text}


def m_to_dict(m: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.name:
        out["name"] = m.name
    if m.tool_calls:
        out["tool_calls"] = [_call_dict(c) for c in m.tool_calls]
    if m.tool_call_id:
        out["tool_call_id"] = m.tool_call_id
    return out
