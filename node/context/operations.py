"""The context store's part in ``bastion audit shred`` and ``rotate-kek``.

Retrieval data keys are wrapped under the audit log's KEK, so the two key
operations cover them too:

- ``shred --tenant T`` (no ``--subject``) erases the tenant's stores, files,
  chunks, index entries and vectors and destroys their data keys. A subject's
  shred does not touch retrieval data: files are the tenant's, not tagged with
  data subjects (erase such a file with ``DELETE /v1/files/{id}``).
- ``rotate-kek`` rewraps every retrieval data key under the new KEK.

A running node does both through its admin socket with its open backend
(``node.admin.admin_channel(context=...)``); with no node running the CLI opens
the stores itself (``offline_shred``/``offline_rewrap``): the PostgreSQL
database ``[context]`` names (``backend = "postgres"``) and the SQLite file
(``<data_dir>/context.db``, or ``[context] path``) when it exists
(``node.context.backends.stored_backends``). ``check_database`` connects to
PostgreSQL first, so an unreachable server stops the command before the audit
log's keys change.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from audit.kek import KeyEncryptionKey

from ..config import NodeConfig
from .backend import ContextBackend
from .backends import CONTEXT_DB, check_database, stored_backends
from .records import Erased

__all__ = ["CONTEXT_DB", "check_database", "describe_erased", "offline_rewrap", "offline_shred"]

_T = TypeVar("_T")


def describe_erased(erased: Erased) -> dict[str, int]:
    return {
        "stores": len(erased.stores),
        "files": len(erased.files),
        "chunks": erased.chunks,
        "keys": erased.keys,
    }


def _each_store(
    config: NodeConfig,
    config_dir: Path,
    kek: KeyEncryptionKey,
    op: Callable[[ContextBackend], Awaitable[_T]],
) -> list[_T]:
    async def go() -> list[_T]:
        async with stored_backends(config, config_dir, kek) as backends:
            return [await op(backend) for backend in backends]

    return asyncio.run(go())


def offline_shred(config: NodeConfig, config_dir: Path, kek: KeyEncryptionKey, tenant: str) -> Erased | None:
    """Erase the tenant from every context store of the node; None when it has none."""
    done = _each_store(config, config_dir, kek, lambda backend: backend.erase_tenant(tenant))
    if not done:
        return None
    return Erased(
        stores=tuple(s for e in done for s in e.stores),
        files=tuple(f for e in done for f in e.files),
        chunks=sum(e.chunks for e in done),
        keys=sum(e.keys for e in done),
    )


def offline_rewrap(
    config: NodeConfig, config_dir: Path, old: KeyEncryptionKey, new: KeyEncryptionKey
) -> int | None:
    """Rewrap every context store's data keys from ``old`` to ``new``; None when there is none."""
    done = _each_store(config, config_dir, old, lambda backend: backend.rewrap(new))
    return sum(done) if done else None
