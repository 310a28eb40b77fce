"""What a running node holds: built once by ``node.assembly.build_node``, read by every handler."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from audit import AuditLog
from router import Router
from serving.models import ModelsFile
from serving.protocol import Provider

from .config import NodeConfig
from .drain import Drain
from .tenancy import TenantRegistry

if TYPE_CHECKING:
    from serving.embedding import Embedder
    from serving.gpu import GpuSampler

    from .context_api import ContextApi
    from .feedback import FeedbackIndex
    from .metrics import GpuTimeMeter, Metrics

__all__ = ["NodeState"]


@dataclass(kw_only=True)
class NodeState:
    config: NodeConfig
    config_dir: Path
    tenants: TenantRegistry
    models: ModelsFile
    #: every local engine, generating and embedding ones alike (health, revisions, metrics)
    engines: dict[str, Provider]
    router: Router
    audit: AuditLog | None
    metrics: Metrics
    gpu: GpuSampler | None = None
    #: the local embedding models (``/v1/embeddings``); the router never sees them
    embedders: dict[str, Embedder] = field(default_factory=dict)
    #: the external providers by name (the router's and the drift canaries')
    providers: dict[str, Provider] = field(default_factory=dict)
    feedback: FeedbackIndex | None = None
    #: files, vector stores and ``file_search`` (``[context]``); None without the section
    context: ContextApi | None = None
    #: per local model: splits engine time among concurrent requests (GPU-seconds per request)
    gpu_meters: dict[str, GpuTimeMeter] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)
    #: SIGTERM's drain: ``/readyz`` and new requests answer 503 while it lasts
    drain: Drain = field(default_factory=lambda: Drain(timeout_s=30.0))

    def revision_of(self, model: str) -> str:
        engine = self.engines.get(model)
        if engine is None:
            return ""
        return engine.describe().revisions.get(model, "")
