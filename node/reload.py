"""Reload: apply tenant, key, limit and route changes to a running node, without a restart.

SIGHUP, or ``bastion reload`` (through the admin socket, ``node.admin``), re-reads
``node.toml`` and the API keys database and validates all of it with the functions
start-up uses (``load_config``, ``served_models``, ``router_config``, the
registry). Only then, in one step of the event loop, the node takes the new
tenants (their keys, models and limits), the new routes and ``[limits]``;
requests already admitted, streams in flight included, keep what they were
given. Anything else (models, providers, ``[server]``, ``[audit]``, ...) needs a
restart: a reload that changes it is refused, naming it. A refused reload
changes nothing and says why (the admin reply, and the node's log). A reload
that passes appends ``config.loaded`` (``reason: reload``, the new digest) to
the audit log before it takes effect: if the log refuses it, nothing changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec

from audit import AuditError, AuditEvent
from router.config import RouterConfig

from .assembly import config_summary
from .config import ConfigError, NodeConfig, load_config
from .keystore import KeyStore, KeyStoreError
from .served import router_config, served_models
from .state import NodeState
from .tenancy import KeyUses, TenantRegistry

__all__ = ["RELOADABLE", "Reloader", "reload_on_sighup"]

_log = logging.getLogger("bastion.reload")

#: the top-level settings a reload applies; every other one needs a restart
RELOADABLE = frozenset({"tenants", "routes", "limits"})


class _Refused(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class Reloader:
    """Reloads ``path`` (and the API keys database) into ``state``, one reload at a time."""

    def __init__(self, state: NodeState, path: Path, store: KeyStore, uses: KeyUses) -> None:
        self._state = state
        self._path = path
        self._store = store
        self._uses = uses
        self._lock = asyncio.Lock()
        # what the file said when the node started: [server] may have been overridden on the
        # command line (--host, --port), so restart-only settings are compared file to file
        self._file_config = load_config(path)

    async def reload(self) -> dict[str, Any]:
        """``{"reloaded": True, "config_sha256": ...}``, or ``{"reloaded": False, "problems": [...]}``."""
        async with self._lock:
            try:
                file_config, config, registry, routing = await asyncio.to_thread(self._prepare)
                summary = config_summary(config, self._state.engines, registry.key_ids(), reason="reload")
                if self._state.audit is not None:
                    try:
                        await self._state.audit.append(
                            AuditEvent(type="config.loaded", tenant="", meta=summary)
                        )
                    except AuditError as exc:
                        raise _Refused([f"the audit log refused config.loaded: {exc}"]) from None
            except _Refused as refused:
                for problem in refused.problems:
                    _log.error("reload refused, nothing changed: %s", problem)
                return {"reloaded": False, "problems": refused.problems}
            self._swap(config, registry, routing)
            self._file_config = file_config
        _log.warning("config reloaded from %s (sha256 %s)", self._path, summary["config_sha256"])
        return {"reloaded": True, "config_sha256": summary["config_sha256"], "api_keys": summary["api_keys"]}

    def _prepare(self) -> tuple[NodeConfig, NodeConfig, TenantRegistry, RouterConfig]:
        """Read and validate everything; raises ``_Refused`` with every problem found."""
        state = self._state
        try:
            file_config = load_config(self._path)
        except ConfigError as exc:
            raise _Refused([str(exc)]) from None
        problems = [
            f"`{field.name}` changed: that takes a restart (a reload applies {', '.join(sorted(RELOADABLE))})"
            for field in msgspec.structs.fields(NodeConfig)
            if field.name not in RELOADABLE
            and getattr(file_config, field.name) != getattr(self._file_config, field.name)
        ]
        config = msgspec.structs.replace(file_config, server=state.config.server)
        try:
            served = served_models(config, state.models)
        except ConfigError as exc:
            problems += str(exc).splitlines()
        else:
            if sorted(served) != sorted(state.engines):
                problems.append(
                    f"the node would serve {sorted(served)} instead of {sorted(state.engines)}: "
                    "starting or stopping an engine takes a restart"
                )
        routing: RouterConfig | None = None
        try:
            routing = router_config(config, state.engines)
        except (msgspec.ValidationError, ValueError) as exc:
            problems.append(f"routes: {exc}")
        registry: TenantRegistry | None = None
        try:
            registry = TenantRegistry(config.tenants, self._store.active(), uses=self._uses)
        except (KeyStoreError, ValueError) as exc:
            problems.append(str(exc))
        if problems or registry is None or routing is None:
            raise _Refused(problems)
        return file_config, config, registry, routing

    def _swap(self, config: NodeConfig, registry: TenantRegistry, routing: RouterConfig) -> None:
        """No await in here: every request admitted from now on sees all of the new config."""
        state = self._state
        state.router.replace_routes(routing)
        state.config = config
        state.tenants = registry
        state.metrics.relabel(
            tenants=[t.name for t in config.tenants],
            models=[r.alias for r in routing.routes] + list(state.engines),
        )


@contextlib.asynccontextmanager
async def reload_on_sighup(reloader: Reloader) -> AsyncIterator[None]:
    """SIGHUP reloads while the context is open (the outcome goes to the node's log)."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[dict[str, Any]]] = set()

    def on_hup() -> None:
        task = loop.create_task(reloader.reload(), name="bastion-reload")
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
        for task in list(tasks):
            with contextlib.suppress(Exception):
                await task
