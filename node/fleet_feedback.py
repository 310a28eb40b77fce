"""Feedback across a fleet: the request index and the one-rating rule in the ``[state]`` PostgreSQL.

Behind a load balancer a request served by node A may be rated through node B, whose
own audit log has never seen it. Each node therefore also registers every request it
forwards here (keyed, as in ``feedback.db``, by an HMAC of tenant and request id, so
the table says neither), and a rating takes the request's row in ``bastion_ratings``
first: one statement, so two nodes cannot both accept a second rating. The HMAC secret
is created once per database by the first node and shared by all.

A rating needs the database (the one-rating rule cannot be checked without it): while it
is unreachable, ``/v1/feedback`` answers 503 ``feedback_unavailable``.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from serving.errors import FeedbackExistsError, FeedbackUnavailableError

from .budgets import postgres_url
from .config import StateConfig
from .feedback import FeedbackIndex, FeedbackStore

__all__ = ["FleetFeedback", "open_feedback"]

_log = logging.getLogger("bastion.feedback")

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS bastion_feedback_secret (id integer PRIMARY KEY CHECK (id = 1),"
    " secret bytea NOT NULL)",
    "CREATE TABLE IF NOT EXISTS bastion_requests (key bytea PRIMARY KEY, model text NOT NULL,"
    " node text NOT NULL, ts timestamptz NOT NULL DEFAULT now())",
    "CREATE TABLE IF NOT EXISTS bastion_ratings (key bytea PRIMARY KEY, node text NOT NULL,"
    " ts timestamptz NOT NULL DEFAULT now())",
)
_LOCK_ID = 0x0BA5_7106


@contextlib.asynccontextmanager
async def open_feedback(
    state: StateConfig, *, config_dir: Path, path: Path, node: str
) -> AsyncIterator[FeedbackIndex]:
    """This node's ``feedback.db``, or the fleet's tables when ``[state]`` names PostgreSQL."""
    if not state.shared:
        async with await FeedbackStore.open(path) as store:
            yield store
        return
    url = postgres_url(state, config_dir=config_dir)
    async with FleetFeedback.open(url, node=node, timeout_s=state.timeout_s) as fleet:
        yield fleet


class FleetFeedback:
    """The feedback index of ``node.feedback`` shared by every node of the fleet."""

    def __init__(self, pool: AsyncConnectionPool[Any], secret: bytes, node: str) -> None:
        self._pool = pool
        self._secret = secret
        self._node = node
        self._rating: set[bytes] = set()

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, url: str, *, node: str, timeout_s: float = 2.0) -> AsyncIterator[FleetFeedback]:
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=4,
            timeout=timeout_s,
            open=False,
            check=AsyncConnectionPool.check_connection,
            kwargs={"autocommit": True, "connect_timeout": max(1, round(timeout_s))},
            name="bastion-feedback",
        )
        try:
            await pool.open(wait=True, timeout=timeout_s)
        except Exception as exc:
            await pool.close()
            raise FeedbackUnavailableError(
                f"cannot reach the fleet's feedback store (PostgreSQL): {type(exc).__name__}"
            ) from None
        try:
            async with pool.connection() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
                for sql in _SCHEMA:
                    await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO bastion_feedback_secret (id, secret) VALUES (1, %s) ON CONFLICT DO NOTHING",
                    (secrets.token_bytes(32),),
                )
                row = await (await conn.execute("SELECT secret FROM bastion_feedback_secret")).fetchone()
            assert row is not None
            yield cls(pool, bytes(row[0]), node)
        finally:
            await pool.close()

    def _key(self, tenant: str, request_id: str) -> bytes:
        msg = len(tenant).to_bytes(4, "big") + tenant.encode() + request_id.encode()
        return hmac.new(self._secret, msg, hashlib.sha256).digest()

    @contextlib.contextmanager
    def claim(self, *, tenant: str, request_id: str) -> Iterator[None]:
        """Serialise ratings of one request on this node (``take_rating`` decides across nodes)."""
        key = self._key(tenant, request_id)
        if key in self._rating:
            raise FeedbackExistsError("This request is being rated already.", param="request_id")
        self._rating.add(key)
        try:
            yield
        finally:
            self._rating.discard(key)

    async def remember(self, *, tenant: str, request_id: str, alias: str) -> None:
        """Register a forwarded request for every node; never raises (it is logged)."""
        try:
            async with self._pool.connection() as conn:
                await conn.execute(
                    "INSERT INTO bastion_requests (key, model, node) VALUES (%s, %s, %s)"
                    " ON CONFLICT DO NOTHING",
                    (self._key(tenant, request_id), alias, self._node),
                )
        except (psycopg.Error, OSError):
            _log.warning("fleet feedback index: could not register a request", exc_info=True)

    async def alias_of(self, *, tenant: str, request_id: str) -> str | None:
        row = await self._fetch("SELECT model FROM bastion_requests WHERE key = %s", tenant, request_id)
        return None if row is None else str(row[0])

    async def known(self, *, tenant: str, request_id: str) -> bool:
        """Whether any node of the fleet forwarded this tenant's request."""
        row = await self._fetch("SELECT 1 FROM bastion_requests WHERE key = %s", tenant, request_id)
        return row is not None

    async def take_rating(self, *, tenant: str, request_id: str) -> None:
        """The request's one rating, fleet-wide, or ``FeedbackExistsError`` (409)."""
        row = await self._fetch(
            "INSERT INTO bastion_ratings (key, node) VALUES (%s, %s) ON CONFLICT DO NOTHING RETURNING 1",
            tenant,
            request_id,
            self._node,
        )
        if row is None:
            raise FeedbackExistsError("This request has already been rated.", param="request_id")

    async def release_rating(self, *, tenant: str, request_id: str) -> None:
        """Undo ``take_rating`` when the rating could not be recorded after all (best effort)."""
        with contextlib.suppress(FeedbackUnavailableError):
            await self._fetch(
                "DELETE FROM bastion_ratings WHERE key = %s AND node = %s RETURNING 1",
                tenant,
                request_id,
                self._node,
            )

    async def _fetch(self, sql: str, tenant: str, request_id: str, *more: str) -> tuple[Any, ...] | None:
        started = time.monotonic()
        try:
            async with self._pool.connection() as conn:
                cur = await conn.execute(sql, (self._key(tenant, request_id), *more))
                row: tuple[Any, ...] | None = await cur.fetchone()
                return row
        except (psycopg.Error, OSError) as exc:
            _log.error("fleet feedback store unavailable after %.1f s: %s", time.monotonic() - started, exc)
            raise FeedbackUnavailableError(
                "Feedback is shared by the fleet through PostgreSQL, which is unavailable; "
                "the rating was not recorded.",
                retry_after_s=1.0,
            ) from None
