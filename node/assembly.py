"""The one assembly: ``build_node`` puts a node's services together; ``create_app`` serves them.

``bastion serve``, the tests and the benchmarks build a node the same way::

    async with build_node(config, config_dir=base) as node:   # engines, audit log, router, ...
        app = create_app(node)                                 # the HTTP layer only

In order: the models file; the engines (each model's files verified against
their pins first); the audit log; the tenants' counters (``[state]``); the API
keys; the external providers; the router; metrics and the GPU sampler; the
feedback index; the context store (``[context]``: files, vector stores);
``config.loaded`` in the audit log; SIGHUP reload; the admin socket and the
retention schedule; the drift canaries. Everything is closed in reverse order
when the context ends. Keyword arguments replace what the config would start
(tests pass a started engine, fake-upstream providers, an opened log): what is
passed in is the caller's to close.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from audit import AuditError, AuditEvent, AuditLog
from router import Router, external_providers
from router.limits import LimitState
from serving.embedding import Embedder
from serving.errors import EngineUnavailableError, PinMismatchError
from serving.gpu import GpuSampler, load_nvml
from serving.models import ModelsFile, load_models_file, resolve_model_dir
from serving.protocol import Provider
from serving.rerank import Reranker

from .admin import admin_channel, admin_socket_path, retention_schedule
from .budgets import open_limits
from .canaries import canary_job
from .config import NodeConfig, resolve
from .context_api import open_context
from .drain import Drain
from .feedback import FEEDBACK_DB
from .fleet_feedback import open_feedback
from .keystore import KeyStore, flush_key_uses
from .metrics import GpuTimeMeter, Metrics
from .served import router_config, served_models
from .startup import ExitCode, StartupError
from .state import NodeState
from .tenancy import KeyUses, TenantRegistry

if TYPE_CHECKING:
    from .reload import Reloader

__all__ = ["AUDIT_HEADER", "build_node", "config_summary", "start_engines"]

_log = logging.getLogger("bastion.node")

#: on every response: ``enabled``, or ``disabled`` on a node configured with ``[audit] enabled = false``
AUDIT_HEADER = "x-bastion-audit"


@asynccontextmanager
async def build_node(
    config: NodeConfig,
    *,
    config_dir: Path | None = None,
    engines: Mapping[str, Provider] | None = None,
    providers: Mapping[str, Provider] | None = None,
    audit: AuditLog | None = None,
    limits: LimitState | None = None,
    config_file: Path | None = None,
    drain: Drain | None = None,
) -> AsyncIterator[NodeState]:
    """The node's services, open while the context is (see the module doc for the order).

    ``engines``/``providers``/``audit``/``limits`` replace what the config would start.
    With ``config_file`` (the ``node.toml`` that ``config`` came from) the node reloads it on
    SIGHUP and on the admin socket's ``reload`` (``node.reload``). ``drain``: the state that
    ``bastion serve``'s SIGTERM handler turns to draining (``node.drain``).

    An engine that fails its pins or does not start, or an audit log that refuses to open,
    is a ``StartupError`` carrying ``bastion serve``'s exit code and its whole message.
    """
    base = config_dir or Path.cwd()
    data_dir = resolve(base, config.data_dir)
    async with AsyncExitStack() as stack:
        models = load_models_file(resolve(base, config.models_file))
        local = dict(engines) if engines is not None else await _start_served(config, base, models, stack)
        log = audit if audit is not None else await _open_audit(config, stack)
        if limits is None:
            limits = await stack.enter_async_context(
                open_limits(config.state, config_dir=base, data_dir=data_dir)
            )
        key_store, key_uses = KeyStore.in_data_dir(data_dir), KeyUses()
        registry = TenantRegistry(config.tenants, await asyncio.to_thread(key_store.active), uses=key_uses)
        await stack.enter_async_context(flush_key_uses(key_store, key_uses))
        if providers is None:
            providers = await stack.enter_async_context(external_providers(config.providers))
        # embedding engines answer /v1/embeddings only: the router (chat, completions) never sees them
        embedders: dict[str, Embedder] = {n: e for n, e in local.items() if isinstance(e, Embedder)}
        # a reranker serves [context] search only (``node.context_api``)
        generating = {
            name: e for name, e in local.items() if name not in embedders and not isinstance(e, Reranker)
        }
        routing = router_config(config, local)
        router = Router(routing, local=generating, external=providers, limits=limits)
        stack.push_async_callback(router.aclose)
        metrics = Metrics(
            tenants=[t.name for t in config.tenants],
            models=[r.alias for r in routing.routes] + list(local),
            # breakers are named "local:<model>" for local engines: keep them as their own labels
            providers=[p.name for p in routing.providers] + [f"local:{name}" for name in local],
            currency=config.metrics.currency,
            gpu_hour_cost=config.metrics.gpu_hour_cost,
            audit_enabled=log is not None,
        )
        gpu = await stack.enter_async_context(
            GpuSampler(nvml=load_nvml(), interval_s=config.metrics.gpu_interval_s)
        )
        node = NodeState(
            config=config,
            config_dir=base,
            tenants=registry,
            models=models,
            engines=local,
            embedders=embedders,
            providers=dict(providers),
            router=router,
            audit=log,
            metrics=metrics,
            gpu=gpu,
            gpu_meters={name: GpuTimeMeter(gpus=_gpus_held(models, name)) for name in local},
            drain=drain if drain is not None else Drain(timeout_s=config.server.drain_timeout_s),
        )
        if log is not None:
            node.feedback = await stack.enter_async_context(
                open_feedback(
                    config.state,
                    config_dir=base,
                    path=data_dir / FEEDBACK_DB,
                    node=f"{socket.gethostname()}:{config.server.port}",
                )
            )
        node.context = await stack.enter_async_context(
            open_context(
                config,
                config_dir=base,
                data_dir=data_dir,
                models=models,
                engines=local,
                embedders=embedders,
                audit=log,
            )
        )
        _wire_metric_sources(node)
        if log is not None:
            summary = config_summary(config, local, registry.key_ids(), reason="start")
            await log.append(AuditEvent(type="config.loaded", tenant="", meta=summary))
        reloader = None
        if config_file is not None:
            from .reload import Reloader, reload_on_sighup

            reloader = Reloader(node, config_file, key_store, key_uses)
            await stack.enter_async_context(reload_on_sighup(reloader))
        if log is not None:
            await _enter_operations(stack, log, config, base, reloader, node)
        else:
            _log.warning(
                "AUDIT LOG DISABLED ([audit] enabled = false): requests are NOT recorded; "
                "responses carry %s: disabled and /readyz and /metrics say so",
                AUDIT_HEADER,
            )
        if config.metrics.canary_interval_s is not None:
            await stack.enter_async_context(canary_job(node, config.metrics.canary_interval_s))
        yield node


async def start_engines(
    models: ModelsFile, names: Iterable[str], *, data_dir: Path, models_dir: Path, stack: AsyncExitStack
) -> dict[str, Provider]:
    """Verify and start the engine of each model in ``names``; each is closed when ``stack`` unwinds.

    A model's folder is ``resolve_model_dir``'s; raises ``PinMismatchError`` (a file fails
    its pin, or is missing) or ``EngineUnavailableError`` (the engine does not start)."""
    from serving.embedding import LocalEmbedder
    from serving.engine import LocalEngine
    from serving.rerank import LocalReranker  # vLLM is heavy: import it only to serve

    local: dict[str, Provider] = {}
    for name in names:
        spec = models.get(name)
        kinds = {"embed": LocalEmbedder, "rerank": LocalReranker}
        kind = kinds.get(spec.task, LocalEngine)
        engine = kind(spec, resolve_model_dir(spec, data_dir=data_dir, models_file_dir=models_dir))
        await engine.start()  # verifies every pinned file first; a mismatch never loads
        stack.push_async_callback(engine.aclose)
        local[name] = engine
    return local


async def _start_served(
    config: NodeConfig, base: Path, models: ModelsFile, stack: AsyncExitStack
) -> dict[str, Provider]:
    try:
        return await start_engines(
            models,
            served_models(config, models),
            data_dir=resolve(base, config.data_dir),
            models_dir=resolve(base, config.models_file).parent,
            stack=stack,
        )
    except PinMismatchError as exc:
        raise StartupError(ExitCode.PIN_MISMATCH, f"refusing to serve: {exc}") from exc
    except EngineUnavailableError as exc:
        raise StartupError(ExitCode.ENGINE, str(exc)) from exc


async def _open_audit(config: NodeConfig, stack: AsyncExitStack) -> AuditLog | None:
    """The log the config names; ``None`` only when it says so (``[audit] enabled = false``)."""
    if config.audit is None:
        return None
    try:
        return await stack.enter_async_context(await AuditLog.open(config.audit))
    except AuditError as exc:
        raise StartupError(ExitCode.AUDIT, f"refusing to serve: audit log: {exc}") from exc


async def _enter_operations(
    stack: AsyncExitStack,
    log: AuditLog,
    config: NodeConfig,
    base: Path,
    reloader: Reloader | None,
    node: NodeState,
) -> None:
    """The admin socket (live shred, rotate-kek, retention, reload; the context store's data too)
    and retention's schedule."""
    reload = reloader.reload if reloader is not None else None
    context = node.context.service.backend if node.context is not None else None
    await stack.enter_async_context(
        admin_channel(admin_socket_path(config, base), log, reload=reload, context=context)
    )
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
        metrics.add_audit_source(audit.stats)


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
