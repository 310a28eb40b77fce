"""``POST /v1/feedback``: a tenant rates one of its own requests.

Who made a request is answered by the audit log (``AuditLog.find`` matches a
keyed HMAC of tenant and request id), so a tenant can only ever find its own
requests, and the answer survives restarts. Another tenant's request id gets
the same 404 as an id that never existed: ids of other tenants are not revealed.

The rating is appended to the audit log as a ``feedback`` event (the comment
as encrypted content) and counted per model in ``bastion_feedback``. The audit
records do not say in the open which model served a request, so the node keeps
a small index of its own (``FeedbackStore``: request id -> model, keyed by an
HMAC of tenant and id, in ``<data_dir>/feedback.db``) for the metric's label;
a request it does not know (recorded before the index existed) counts as
``other``.

Scale: ``-1`` (bad), ``0`` (neutral), ``1`` (good), as thumbs in a chat UI.
One rating per request: a second one is 409, so counts cannot be inflated.
A refused rating (400, 404, 409) leaves a ``request.rejected`` record, as
a refused generation request does.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import Annotated, Any, Final, Protocol

import aiosqlite
import msgspec

from audit import AuditEvent, AuditLog, check_private, private_sqlite
from serving.errors import FeedbackExistsError, FeedbackUnavailableError, RequestNotFoundError

from .metrics import OTHER
from .state import NodeState

__all__ = [
    "FEEDBACK_DB",
    "MAX_COMMENT_CHARS",
    "FeedbackIndex",
    "FeedbackRequest",
    "FeedbackStore",
    "submit_feedback",
]

_log = logging.getLogger("bastion.feedback")

MAX_COMMENT_CHARS: Final = 2000
#: audit event types that prove a request was made (and forwarded) by the tenant
_RATABLE: Final = frozenset({"request.start", "request.end"})
_FEEDBACK_EVENT: Final = "feedback"


class FeedbackRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    request_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")]
    #: -1 bad, 0 neutral, 1 good
    rating: Annotated[int, msgspec.Meta(ge=-1, le=1)]
    comment: Annotated[str, msgspec.Meta(max_length=MAX_COMMENT_CHARS)] | None = None


class FeedbackIndex(Protocol):
    """Which model served a tenant's request, and the one-rating rule beyond this node's log:
    ``FeedbackStore`` for one node, ``node.fleet_feedback.FleetFeedback`` for a fleet."""

    def claim(self, *, tenant: str, request_id: str) -> AbstractContextManager[None]: ...

    async def remember(self, *, tenant: str, request_id: str, alias: str) -> None: ...

    async def alias_of(self, *, tenant: str, request_id: str) -> str | None: ...

    async def known(self, *, tenant: str, request_id: str) -> bool: ...

    async def take_rating(self, *, tenant: str, request_id: str) -> None: ...

    async def release_rating(self, *, tenant: str, request_id: str) -> None: ...


class FeedbackStore:
    """Request id -> the alias it asked for (column ``model``), per tenant, in a SQLite file beside
    the node's data.

    Rows are keyed by HMAC-SHA256(secret, tenant, request id), so the file alone
    says neither who made a request nor its id. The secret lives in a 0600 file
    beside the database. Writes are best-effort: this index only labels a
    metric; whether a request exists is the audit log's answer.
    """

    def __init__(self, conn: aiosqlite.Connection, secret: bytes) -> None:
        self._conn = conn
        self._secret = secret
        #: requests whose rating is being checked and recorded right now
        self._rating: set[bytes] = set()

    @contextlib.contextmanager
    def claim(self, *, tenant: str, request_id: str) -> Iterator[None]:
        """Hold one request's rating while it is checked and appended: a concurrent second
        rating of the same request gets 409 instead of racing past the duplicate check."""
        key = self._key(tenant, request_id)
        if key in self._rating:
            raise FeedbackExistsError("This request is being rated already.", param="request_id")
        self._rating.add(key)
        try:
            yield
        finally:
            self._rating.discard(key)

    @classmethod
    async def open(cls, path: Path) -> FeedbackStore:
        private_sqlite(path)  # 0600 in a 0700 folder; an existing one open to others is refused
        secret = _load_or_create_secret(secret_path(path))
        conn = await aiosqlite.connect(path, isolation_level=None)
        try:
            await conn.execute("PRAGMA journal_mode=WAL")
            # losing the last few index rows on power loss only relabels a metric as "other"
            await conn.execute("PRAGMA synchronous=NORMAL")
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS requests (key BLOB PRIMARY KEY, model TEXT NOT NULL,"
                " ts_ns INTEGER NOT NULL) WITHOUT ROWID"
            )
        except BaseException:
            await conn.close()
            raise
        return cls(conn, secret)

    def _key(self, tenant: str, request_id: str) -> bytes:
        msg = len(tenant).to_bytes(4, "big") + tenant.encode() + request_id.encode()
        return hmac.new(self._secret, msg, hashlib.sha256).digest()

    async def remember(self, *, tenant: str, request_id: str, alias: str) -> None:
        """Called by the request path once a request is forwarded; never raises."""
        try:
            await self._conn.execute(
                "INSERT OR IGNORE INTO requests (key, model, ts_ns) VALUES (?, ?, ?)",
                (self._key(tenant, request_id), alias, time.time_ns()),
            )
        except (sqlite3.Error, ValueError):
            _log.warning("feedback index: could not record a request", exc_info=True)

    async def alias_of(self, *, tenant: str, request_id: str) -> str | None:
        try:
            cur = await self._conn.execute(
                "SELECT model FROM requests WHERE key = ?", (self._key(tenant, request_id),)
            )
            row = await cur.fetchone()
        except (sqlite3.Error, ValueError):
            _log.warning("feedback index: lookup failed", exc_info=True)
            return None
        return None if row is None else str(row[0])

    async def known(self, *, tenant: str, request_id: str) -> bool:
        return False  # on one node, the audit log alone says whether a request exists

    async def take_rating(self, *, tenant: str, request_id: str) -> None:
        return None  # on one node, the log's feedback record and ``claim`` keep it to one

    async def release_rating(self, *, tenant: str, request_id: str) -> None:
        return None

    async def aclose(self) -> None:
        await self._conn.close()

    async def __aenter__(self) -> FeedbackStore:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


#: the feedback index in the node's ``data_dir`` (when ``[state]`` names no PostgreSQL)
FEEDBACK_DB = "feedback.db"


def secret_path(db: Path) -> Path:
    """The HMAC secret beside the feedback database."""
    return db.with_name(db.name + ".key")


def _load_or_create_secret(path: Path) -> bytes:
    check_private(path)
    try:
        secret = path.read_bytes()
    except FileNotFoundError:
        secret = secrets.token_bytes(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secret)
            f.flush()
            os.fsync(f.fileno())
        return secret
    if len(secret) != 32:
        raise ValueError(f"{path}: expected a 32-byte secret, found {len(secret)} bytes")
    return secret


async def submit_feedback(state: NodeState, tenant: str, body: FeedbackRequest) -> dict[str, Any]:
    """Check the request is the tenant's, record the rating, count it; the response body."""
    audit: AuditLog | None = state.audit
    if audit is None or state.feedback is None:
        raise FeedbackUnavailableError("Feedback is stored in the audit log, which is off on this node.")
    with state.feedback.claim(tenant=tenant, request_id=body.request_id):
        return await _record_feedback(state, audit, state.feedback, tenant, body)


async def _record_feedback(
    state: NodeState, audit: AuditLog, store: FeedbackIndex, tenant: str, body: FeedbackRequest
) -> dict[str, Any]:
    rid = body.request_id
    hits = await audit.find(request_id=rid, tenant=tenant)
    here = any(h.type in _RATABLE for h in hits)
    # in a fleet, another node may have served it: the shared index knows
    if not here and not await store.known(tenant=tenant, request_id=rid):
        raise RequestNotFoundError(
            f"No request '{rid}' was found for this API key's tenant.", param="request_id"
        )
    if any(h.type == _FEEDBACK_EVENT for h in hits):
        raise FeedbackExistsError("This request has already been rated.", param="request_id")
    alias = await store.alias_of(tenant=tenant, request_id=rid)
    await store.take_rating(tenant=tenant, request_id=rid)
    try:
        await audit.append(
            AuditEvent(
                type=_FEEDBACK_EVENT,
                tenant=tenant,
                meta={"request_id": rid, "rating": body.rating, "model": alias or ""},
                content=None if body.comment is None else {"comment": body.comment},
            )
        )
    except BaseException:
        await store.release_rating(tenant=tenant, request_id=rid)
        raise
    state.metrics.observe_feedback(alias=alias or OTHER, rating=body.rating)
    return {"object": "feedback", "request_id": body.request_id, "rating": body.rating}
