"""Which local models a config serves, and the routes the router is given for them.

Pure functions of the config and the models file: start-up (``node.assembly``),
the pre-flight checks (``node.startup``), reload and the canary commands all
decide with these, so they can never disagree.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence

import msgspec

from router.config import RouteConfig, RouterConfig
from serving.embedding import Embedder
from serving.models import ModelsFile
from serving.protocol import Provider
from serving.rerank import Reranker

from .config import ConfigError, NodeConfig

__all__ = ["router_config", "served_models"]


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
        elif route.local and models.get(route.local).task == "rerank":
            problems.append(
                f"route {route.alias!r} names local model {route.local!r}, a reranker: it serves "
                "[context] search only"
            )
    tenant_models = {m for t in config.tenants for m in t.models}
    # free-text redaction models run here, never elsewhere: each must be a served local model
    redacting = {t.redaction.ner_model for t in config.tenants if t.redaction.ner_model is not None}
    reranker = _context_reranker(config, models, problems)
    if config.serve is not None:
        wanted = list(config.serve)
        if reranker is not None and reranker not in wanted:
            problems.append(f"[context] reranker {reranker!r} is a model `serve` leaves out")
    else:
        wanted = sorted(
            (tenant_models & set(known))
            | {r.local for r in config.routes if r.local}
            | (redacting & set(known))
            | ({reranker} if reranker is not None else set())
        )
    for route in config.routes:
        if route.local and route.local in known and route.local not in wanted:
            problems.append(
                f"route {route.alias!r} names local model {route.local!r}, which `serve` leaves out"
            )
    reachable = set(wanted) | set(aliases)
    for tenant in config.tenants:
        for name in tenant.models:
            if name in known and models.get(name).task == "rerank":
                problems.append(
                    f"tenant {tenant.name!r} names model {name!r}, a reranker: it serves [context] only"
                )
                continue
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


def _context_reranker(config: NodeConfig, models: ModelsFile, problems: list[str]) -> str | None:
    """``[context] reranker`` when it names a ``task = "rerank"`` model (else a line in ``problems``)."""
    context = config.context
    if context is None or not context.enabled or context.reranker is None:
        return None
    name, known = context.reranker, list(models.names)
    if name not in known:
        problems.append(f"[context] reranker {name!r} is not in the models file{_closest(name, known)}")
        return None
    if (task := models.get(name).task) != "rerank":
        problems.append(f'[context] reranker {name!r} has task = "{task}": a reranker has task = "rerank"')
        return None
    return name


def _closest(name: str, candidates: Sequence[str]) -> str:
    """``; did you mean 'x'?`` for the nearest candidate, else the known names."""
    if match := difflib.get_close_matches(name, candidates, n=1, cutoff=0.5):
        return f"; did you mean {match[0]!r}?"
    return f" (known: {', '.join(sorted(set(candidates))) or 'none'})"


def router_config(config: NodeConfig, local: Mapping[str, Provider]) -> RouterConfig:
    """The configured routes, plus one local-only alias per served model that no route names
    (generating models only: an embedding model answers ``/v1/embeddings`` and a reranker serves
    ``[context]``, never the router)."""
    routes = list(config.routes)
    aliased = {r.alias for r in routes}
    for name, engine in local.items():
        if name not in aliased and not isinstance(engine, Embedder | Reranker):
            routes.append(msgspec.convert({"alias": name, "local": name}, RouteConfig))
    return msgspec.convert(
        {
            "providers": [msgspec.to_builtins(p) for p in config.providers],
            "routes": [msgspec.to_builtins(r) for r in routes],
            "routing": msgspec.to_builtins(config.routing),
        },
        RouterConfig,
    )
