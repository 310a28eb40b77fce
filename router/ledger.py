"""Budget counters that survive a restart: each tenant's tokens today and external spend this month.

Rate windows (``rpm``, ``tpm``) are a minute long and stay in memory; the daily
token and monthly spend budgets would reset with every restart if they did too,
letting a tenant spend its month's budget again after each deploy. The limiter
keeps counting in memory (nothing on the request path) and the node flushes the
tenants that changed to this small SQLite file every second and at shutdown;
a crash loses at most that last second of counts.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Literal, NamedTuple

from audit import private_sqlite

__all__ = ["BudgetLedger", "LedgerRow"]

Kind = Literal["day_tokens", "month_spend"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    tenant TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('day_tokens', 'month_spend')),
    period TEXT NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (tenant, kind, period)
) STRICT
"""
_UPSERT = (
    "INSERT INTO usage (tenant, kind, period, value) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (tenant, kind, period) DO UPDATE SET value = excluded.value"
)


class LedgerRow(NamedTuple):
    tenant: str
    kind: Kind
    #: ``YYYY-MM-DD`` for day_tokens, ``YYYY-MM`` for month_spend (UTC)
    period: str
    value: float


class BudgetLedger:
    """One SQLite file; ``load`` at start-up, ``save`` from a background task (any thread)."""

    def __init__(self, path: Path) -> None:
        private_sqlite(path)  # 0600 in a 0700 folder; an existing one open to others is refused
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA busy_timeout=5000")
        self._conn.execute(_SCHEMA)

    def load(self) -> list[LedgerRow]:
        """Every tenant's latest period of each kind."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT tenant, kind, MAX(period), value FROM usage GROUP BY tenant, kind"
            ).fetchall()
        return [LedgerRow(str(t), k, str(p), float(v)) for t, k, p, v in rows]

    def save(self, rows: list[LedgerRow]) -> None:
        if not rows:
            return
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(_UPSERT, rows)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()
