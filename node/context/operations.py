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
``<data_dir>/context.db`` itself (``offline_shred``/``offline_rewrap``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from audit.kek import KeyEncryptionKey

from .records import Erased
from .sqlite import SqliteBackend

__all__ = ["CONTEXT_DB", "describe_erased", "offline_rewrap", "offline_shred"]

#: the node's context database in ``data_dir``
CONTEXT_DB = "context.db"


def describe_erased(erased: Erased) -> dict[str, int]:
    return {
        "stores": len(erased.stores),
        "files": len(erased.files),
        "chunks": erased.chunks,
        "keys": erased.keys,
    }


def offline_shred(data_dir: Path, kek: KeyEncryptionKey, tenant: str) -> Erased | None:
    """Erase the tenant from ``<data_dir>/context.db``; None when the node has no context store."""
    db = data_dir / CONTEXT_DB
    if not db.exists():
        return None

    async def go() -> Erased:
        backend = await SqliteBackend.open(db, kek)
        try:
            return await backend.erase_tenant(tenant)
        finally:
            await backend.aclose()

    return asyncio.run(go())


def offline_rewrap(data_dir: Path, old: KeyEncryptionKey, new: KeyEncryptionKey) -> int | None:
    """Rewrap ``<data_dir>/context.db``'s data keys from ``old`` to ``new``; None when there is none."""
    db = data_dir / CONTEXT_DB
    if not db.exists():
        return None

    async def go() -> int:
        backend = await SqliteBackend.open(db, old)
        try:
            return await backend.rewrap(new)
        finally:
            await backend.aclose()

    return asyncio.run(go())
