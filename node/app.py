"""The composition root: ``create_app`` wires config, engines, router and audit.

Engines, the audit log's writer, HTTP clients and the GPU sampler live in one
lifespan (an ``AsyncExitStack``), so shutdown closes them in reverse order.
Tests pass real alternatives (a started engine, fake-upstream providers, an
opened audit log) through the same keyword parameters.
"""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import hmac
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from audit import AuditEvent, AuditLog
from router import Router
from router.config import RouteConfig, RouterConfig
from router.limits import LimitState
from serving.embedding import Embedder
from serving.errors import AuditFailedError, AuthenticationError, EngineUnavailableError
from serving.gpu import GpuSampler, load_nvml
from serving.models import ModelsFile, load_models_file, resolve_model_dir
from serving.protocol import Provider

from .admin import admin_channel, admin_socket_path, retention_schedule
from .budgets import open_limits
from .canaries import canary_job
from .completions import handle_generation
from .config import ConfigError, NodeConfig, resolve
from .drain import Drain
from .embeddings import handle_embeddings
from .errors import exception_handlers
from .fleet_feedback import open_feedback
from .keystore import KeyStore, flush_key_uses
from .metrics import AuditStats, GpuTimeMeter, Metrics
from .server import read_deadline_middleware
from .state import NodeState
from .tenancy import KeyUses, TenantRegistry

if TYPE_CHECKING:
    from .reload import Reloader

__all__ = ["create_app"]

_log = logging.getLogger("bastion.node")

#: the node's own databases in ``data_dir`` (and ``budgets.BUDGETS_DB``)
FEEDBACK_DB = "feedback.db"


def _request_id_middleware(app: ASGIApp) -> ASGIApp:
    """Every response carries ``x-request-id`` (handlers may set their own id first)."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # type: ignore[comparison-overlap]
            await app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state.setdefault("request_id", "req-" + uuid.uuid4().hex)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(k.lower() == b"x-request-id" for k, _ in headers):
                    headers.append((b"x-request-id", str(state["request_id"]).encode()))
                message["headers"] = headers
            await send(message)

        await app(scope, receive, send_with_id)

    return middleware


#: on every response: ``enabled``, or ``disabled`` on a node configured with ``[audit] enabled = false``
AUDIT_HEADER = "x-bastion-audit"


def _audit_header(*, enabled: bool) -> Callable[[Message, Scope], Awaitable[None]]:
    """A ``before_send`` hook: it sees every response, unknown paths included, so no
    client can miss that a node does not record its requests."""
    header = (AUDIT_HEADER.encode(), b"enabled" if enabled else b"disabled")

    async def before_send(message: Message, scope: Scope) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), header]

    return before_send


def served_models(config: NodeConfig, models: ModelsFile) -> list[str]:
    """The local models this node starts: ``serve``, else every one a tenant or route names.

    Every name must lead somewhere: a ``serve`` entry or a route's ``local`` to a
    model of the models file, a tenant's model to a route alias or a served model.
    A misspelt name would otherwise leave a node that starts, reports ready and
    answers every request with 404; it is a ``ConfigError`` naming the tenant (or
    route), the name and the closest known name, one line per such name.
    """
    known = list(models.names)
    problems: list[str] = []  # every name that leads nowhere, one line each
    aliases = [r.alias for r in config.routes]
    for name in config.serve or ():
        if name not in known:
            problems.append(
                f"`serve` names model {name!r}, which is not in the models file{_closest(name, known)}"
            )
    for route in config.routes:
        if route.local and route.local not in known:
            problems.append(
                f"route {route.alias!r} names local model {route.local!r}, which is not in the models file"
                + _closest(route.local, known)
            )
        elif route.local and models.get(route.local).task == "embed":
            problems.append(
                f"route {route.alias!r} names local model {route.local!r}, an embedding model: routes carry "
                "chat and completions; tenants name embedding models directly"
            )
    tenant_models = {m for t in config.tenants for m in t.models}
    # free-text redaction models run here, never elsewhere: each must be a served local model
    redacting = {t.redaction.ner_model for t in config.tenants if t.redaction.ner_model is not None}
    if config.serve is not None:
        wanted = list(config.serve)
    else:
        wanted = sorted(
            (tenant_models & set(known))
            | {r.local for r in config.routes if r.local}
            | (redacting & set(known))
        )
    for route in config.routes:
        if route.local and route.local in known and route.local not in wanted:
            problems.append(
                f"route {route.alias!r} names local model {route.local!r}, which `serve` leaves out"
            )
    reachable = set(wanted) | set(aliases)
    for tenant in config.tenants:
        for name in tenant.models:
            if name in reachable:
                continue
            if name in known:
                problems.append(f"tenant {tenant.name!r} names model {name!r}, which `serve` leaves out")
                continue
            problems.append(
                f"tenant {tenant.name!r} names model {name!r}, which is neither a model in the models file "
                f"nor a route alias{_closest(name, [*known, *aliases])}"
            )
    for tenant in config.tenants:
        ner = tenant.redaction.ner_model
        if ner is not None and ner in known and models.get(ner).task == "embed":
            problems.append(f"tenant {tenant.name!r} names redaction.ner_model {ner!r}, an embedding model")
        elif ner is not None and ner not in wanted:
            where = "which `serve` leaves out" if ner in known else "which is not in the models file"
            problems.append(
                f"tenant {tenant.name!r} names redaction.ner_model {ner!r}, {where}{_closest(ner, known)}"
            )
    if problems:
        raise ConfigError("\n".join(problems))
    return wanted


def _closest(name: str, candidates: Sequence[str]) -> str:
    """``; did you mean 'x'?`` for the nearest candidate, else the known names."""
    if match := difflib.get_close_matches(name, candidates, n=1, cutoff=0.5):
        return f"; did you mean {match[0]!r}?"
    return f" (known: {', '.join(sorted(set(candidates))) or 'none'})"


def router_config(config: NodeConfig, local: Mapping[str, Provider]) -> RouterConfig:
    """The configured routes, plus one local-only alias per served model that no route names
    (generating models only: an embedding model answers ``/v1/embeddings``, never the router)."""
    routes = list(config.routes)
    aliased = {r.alias for r in routes}
    for name, engine in local.items():
        if name not in aliased and not isinstance(engine, Embedder):
            routes.append(msgspec.convert({"alias": name, "local": name}, RouteConfig))
    return msgspec.convert(
        {
            "providers": [msgspec.to_builtins(p) for p in config.providers],
            "routes": [msgspec.to_builtins(r) for r in routes],
            "routing": msgspec.to_builtins(config.routing),
        },
        RouterConfig,
    )


async def start_engines(
    config: NodeConfig, base: Path, models: ModelsFile, stack: AsyncExitStack
) -> dict[str, Provider]:
    """Verify and start every served model's engine; each is closed when ``stack`` unwinds."""
    from serving.embedding import LocalEmbedder
    from serving.engine import LocalEngine  # vLLM is heavy: import it only to serve

    data_dir = resolve(base, config.data_dir)
    models_dir = resolve(base, config.models_file).parent
    local: dict[str, Provider] = {}
    for name in served_models(config, models):
        spec = models.get(name)
        kind = LocalEmbedder if spec.task == "embed" else LocalEngine
        engine = kind(spec, resolve_model_dir(spec, data_dir=data_dir, models_file_dir=models_dir))
        await engine.start()  # verifies every pinned file first; a mismatch never loads
        stack.push_async_callback(engine.aclose)
        local[name] = engine
    return local


def create_app(
    config: NodeConfig,
    *,
    config_dir: Path | None = None,
    engines: Mapping[str, Provider] | None = None,
    providers: Mapping[str, Provider] | None = None,
    audit: AuditLog | None = None,
    limits: LimitState | None = None,
    config_file: Path | None = None,
    drain: Drain | None = None,
) -> Litestar:
    """Build the node. ``engines``/``providers``/``audit``/``limits`` replace what config would start.

    With ``config_file`` (the ``node.toml`` that ``config`` came from) the node reloads it on
    SIGHUP and on the admin socket's ``reload`` (``node.reload``). ``drain``: the state that
    ``bastion serve``'s SIGTERM handler turns to draining (``node.drain``)."""
    base = config_dir or Path.cwd()
    # without a log only when the config says so (``[audit] enabled = false``)
    audit_enabled = audit is not None or config.audit is not None
    node_drain = drain if drain is not None else Drain(timeout_s=config.server.drain_timeout_s)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            models = load_models_file(resolve(base, config.models_file))
            local = dict(engines) if engines is not None else await start_engines(config, base, models, stack)
            log = audit
            if log is None and config.audit is not None:
                log = await stack.enter_async_context(await AuditLog.open(config.audit))
            if limits is None:
                counters = await stack.enter_async_context(
                    open_limits(config.state, config_dir=base, data_dir=resolve(base, config.data_dir))
                )
            else:
                counters = limits
            key_store, key_uses = KeyStore.in_data_dir(resolve(base, config.data_dir)), KeyUses()
            registry = TenantRegistry(
                config.tenants, await asyncio.to_thread(key_store.active), uses=key_uses
            )
            await stack.enter_async_context(flush_key_uses(key_store, key_uses))
            # embedding engines answer /v1/embeddings only: the router (chat, completions) never sees them
            embedders: dict[str, Embedder] = {n: e for n, e in local.items() if isinstance(e, Embedder)}
            generating = {name: e for name, e in local.items() if name not in embedders}
            routing = router_config(config, local)
            router = Router(routing, local=generating, external=providers, limits=counters)
            stack.push_async_callback(router.aclose)
            metrics = Metrics(
                tenants=[t.name for t in config.tenants],
                models=[r.alias for r in routing.routes] + list(local),
                # breakers are named "local:<model>" for local engines: keep them as their own labels
                providers=[p.name for p in routing.providers] + [f"local:{name}" for name in local],
                currency=config.metrics.currency,
                gpu_hour_cost=config.metrics.gpu_hour_cost,
                audit_enabled=audit_enabled,
            )
            gpu = await stack.enter_async_context(
                GpuSampler(nvml=load_nvml(), interval_s=config.metrics.gpu_interval_s)
            )
            state = NodeState(
                config=config,
                config_dir=base,
                tenants=registry,
                models=models,
                engines=local,
                embedders=embedders,
                router=router,
                audit=log,
                metrics=metrics,
                gpu=gpu,
                gpu_meters={name: GpuTimeMeter(gpus=_gpus_held(models, name)) for name in local},
                drain=node_drain,
            )
            if log is not None:
                state.feedback = await stack.enter_async_context(
                    open_feedback(
                        config.state,
                        config_dir=base,
                        path=resolve(base, config.data_dir) / FEEDBACK_DB,
                        node=f"{socket.gethostname()}:{config.server.port}",
                    )
                )
            _wire_metric_sources(state)
            app.state.node = state
            if log is not None:
                summary = config_summary(config, local, registry.key_ids(), reason="start")
                await log.append(AuditEvent(type="config.loaded", tenant="", meta=summary))
            reloader = None
            if config_file is not None:
                from .reload import Reloader, reload_on_sighup

                reloader = Reloader(state, config_file, key_store, key_uses)
                await stack.enter_async_context(reload_on_sighup(reloader))
            if log is not None:
                await _enter_operations(stack, log, config, base, reloader)
            else:
                _log.warning(
                    "AUDIT LOG DISABLED ([audit] enabled = false): requests are NOT recorded; "
                    "responses carry %s: disabled and /readyz and /metrics say so",
                    AUDIT_HEADER,
                )
            if config.metrics.canary_interval_s is not None:
                await stack.enter_async_context(
                    canary_job(state, config.metrics.canary_interval_s, providers=providers)
                )
            yield

    @post("/v1/chat/completions", status_code=200)
    async def chat_completions(request: Request[Any, Any, Any]) -> Response[Any]:
        return await handle_generation(_state(request), request, chat=True)

    @post("/v1/completions", status_code=200)
    async def completions(request: Request[Any, Any, Any]) -> Response[Any]:
        return await handle_generation(_state(request), request, chat=False)

    @post("/v1/embeddings", status_code=200)
    async def embeddings(request: Request[Any, Any, Any]) -> Response[Any]:
        return await handle_embeddings(_state(request), request)

    @get("/v1/models")
    async def list_models(request: Request[Any, Any, Any]) -> dict[str, Any]:
        state = _state(request)
        principal = state.tenants.authenticate(request.headers.get("authorization"))
        aliases = set(state.router.aliases()) | set(state.embedders)
        data = []
        for name in principal.tenant.models:
            if name in aliases:
                entry: dict[str, Any] = {
                    "id": name,
                    "object": "model",
                    "created": int(state.started_at),
                    "owned_by": "bastion",
                }
                if revision := state.revision_of(name):
                    entry["revision"] = revision
                data.append(entry)
        return {"object": "list", "data": data}

    @get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @get("/readyz")
    async def readyz(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
        state = _state(request)
        if state.drain.draining:  # out of rotation at once; /healthz (liveness) stays 200
            return Response({"status": "draining"}, status_code=503, headers={"retry-after": "5"})
        engines = {}
        for name, engine in state.engines.items():
            h = await engine.health()
            engines[name] = {
                "healthy": h.healthy,
                "revision": state.revision_of(name),
                "detail": h.detail,
                "waiting": h.waiting,
                "running": h.running,
            }
        ready = all(e["healthy"] for e in engines.values())
        if not ready:
            err = EngineUnavailableError("A local engine is not ready.")
            body = err.to_body() | {"engines": engines}
            return Response(body, status_code=503, headers={"retry-after": "5"})
        if state.audit is None:
            # an operator's explicit choice, so still ready, but never silently
            return Response({"status": "ready", "engines": engines, "audit": {"enabled": False}})
        if not state.audit.accepting:
            # Every request would be refused (fail closed): take this node out of rotation.
            failed = AuditFailedError("The audit log is not accepting records; requests are refused.")
            audit_state = {"enabled": True, "accepting": False}
            refused: dict[str, Any] = failed.to_body() | {"engines": engines, "audit": audit_state}
            return Response(refused, status_code=503, headers={"retry-after": "5"})
        ready_audit = {"enabled": True, "accepting": True}
        return Response({"status": "ready", "engines": engines, "audit": ready_audit})

    @get("/metrics")
    async def metrics_endpoint(request: Request[Any, Any, Any]) -> Response[bytes]:
        state = _state(request)
        _check_metrics_token(state, request.headers.get("authorization"))
        # The exposition format's own content type, charset included, as the header itself:
        # given as a text/* media type, Litestar appends a second "; charset=utf-8".
        return Response(state.metrics.render(), headers={"content-type": state.metrics.content_type})

    extra = _extra_routes()
    return Litestar(
        route_handlers=[
            chat_completions,
            completions,
            embeddings,
            list_models,
            healthz,
            readyz,
            metrics_endpoint,
            *extra,
        ],
        lifespan=[lifespan],
        exception_handlers=exception_handlers,  # type: ignore[arg-type]
        middleware=[_request_id_middleware, read_deadline_middleware],
        before_send=[_audit_header(enabled=audit_enabled)],
        request_max_body_size=config.server.max_body_bytes,
        openapi_config=None,
        debug=False,
    )


async def _enter_operations(
    stack: AsyncExitStack, log: AuditLog, config: NodeConfig, base: Path, reloader: Reloader | None
) -> None:
    """The admin socket (live shred, rotate-kek, retention, reload) and retention's schedule."""
    reload = reloader.reload if reloader is not None else None
    await stack.enter_async_context(admin_channel(admin_socket_path(config, base), log, reload=reload))
    if log.config.retention_months is not None:
        await stack.enter_async_context(retention_schedule(log, log.config.retention_interval_s))


def _gpus_held(models: ModelsFile, name: str) -> int:
    """Every GPU the model's engine holds (tensor x pipeline x data parallel), for its GPU cost."""
    return models.get(name).gpus if name in models.names else 1


def _wire_metric_sources(state: NodeState) -> None:
    """Values read at scrape time: never computed on the request path."""
    metrics = state.metrics
    if state.gpu is not None:
        metrics.add_gpu_source(state.gpu.snapshot)
    with_stats = {name: e for name, e in state.engines.items() if hasattr(e, "stats")}
    metrics.add_engine_source(lambda: {name: e.stats() for name, e in with_stats.items()})
    metrics.add_breaker_source(state.router.breaker_states)
    audit = state.audit
    if audit is not None:

        def audit_stats() -> AuditStats:
            st = audit.stats()
            return AuditStats(
                queue_depth=st.queue_depth,
                last_checkpoint_size=st.last_checkpoint_size,
                records=st.records,
                commits=st.commits,
                wal_checkpoint_errors=st.wal_checkpoint_errors,
            )

        metrics.add_audit_source(audit_stats)


def _extra_routes() -> list[Any]:
    from .feedback import feedback_routes

    return feedback_routes()


def _state(request: Request[Any, Any, Any]) -> NodeState:
    state: NodeState = request.app.state.node
    return state


def _check_metrics_token(state: NodeState, authorization: str | None) -> None:
    env = state.config.metrics.token_env
    if not env:
        return
    expected = os.environ.get(env, "")
    scheme, _, token = (authorization or "").partition(" ")
    if not expected or scheme.lower() != "bearer" or not hmac.compare_digest(token.strip(), expected):
        raise AuthenticationError("The metrics endpoint needs its bearer token.")


def config_summary(
    config: NodeConfig, local: Mapping[str, Provider], key_ids: Mapping[str, list[str]], *, reason: str
) -> dict[str, Any]:
    """What ``config.loaded`` says of the config (at start-up and each reload): shape and digests,
    never secrets."""
    digest = hashlib.sha256(msgspec.json.encode(config)).hexdigest()
    return {
        "reason": reason,
        "config_sha256": digest,
        "tenants": sorted(t.name for t in config.tenants),
        # key ids only (node.toml's and the keys database's): a key created or revoked shows as a change
        "api_keys": dict(key_ids),
        "models": {name: p.describe().revisions.get(name, "") for name, p in local.items()},
        "providers": sorted(p.name for p in config.providers),
        "dev_mode": config.dev_mode,
    }
