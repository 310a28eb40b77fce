"""BM25 top-k from per-term score lists held in memory: FTS5's own ranking, without scoring every
chunk that holds a common word.

FTS5 ranks ``a OR b OR c`` by calling ``bm25()`` on every row that holds any
of the terms; a query with one common word (held by half of 100k chunks) costs
about 100 ms on these cores, however rare its other words are. But FTS5's
BM25 is a sum over the query's phrases, each scored with the store's own
statistics (row count, average length, the phrase's document frequency), so a
phrase's contribution to a row does not depend on the other phrases. This
module keeps, per store and phrase, the sorted row ids holding the phrase and
their contributions (``-bm25`` of the one-phrase query, read from FTS5 once),
and answers a query by max-score evaluation (Turtle and Flood 1995):

1. Phrases held by at least half the rows, and by more than 2000 of them, are
   left out: FTS5 clamps their IDF to 1e-6, so they move no score by more
   than 2.2e-6 (a smaller store keeps them, as FTS5 would).
2. The rarest phrases' rows are scored exactly (their own contributions plus
   the common phrases' looked up by binary search).
3. If the k-th best of those scores is above the most any other row can score
   (the sum of the remaining phrases' largest contributions), that is the
   top k; otherwise the next rarest phrase joins step 2.

The result is FTS5's ``ORDER BY rank`` (ties by row id; a phrase repeated in
the query counts each time, as in FTS5) up to the clamped phrases' 2.2e-6 each,
except that rows holding nothing but such phrases are not returned: they carry
no evidence. The lists are dropped whenever the store's chunks change (the
backend's one thread does both), and the least recently used stores are
evicted past the byte budget.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import apsw
import numpy as np

__all__ = ["RARE_ROWS", "FulltextCache", "top_k"]

#: phrases held by at most this many rows are scored together first, and never left out
RARE_ROWS = 2000


@dataclass(slots=True, frozen=True)
class _Postings:
    rows: Any  # int64 [n], ascending: the rows holding the phrase
    scores: Any  # float64 [n]: the phrase's BM25 contribution to each (positive: better)

    @property
    def top(self) -> float:
        return float(self.scores.max()) if len(self.scores) else 0.0

    def at(self, rows: Any) -> Any:
        """The contribution to each of ``rows`` (0 where the phrase is absent)."""
        if not len(self.rows):
            return np.zeros(len(rows))
        i = np.minimum(np.searchsorted(self.rows, rows), len(self.rows) - 1)
        return np.where(self.rows[i] == rows, self.scores[i], 0.0)


def top_k(
    lists: Sequence[_Postings], k: int, allowed: Any | None = None, *, rare_rows: int = RARE_ROWS
) -> list[tuple[int, float]]:
    """The ``k`` best (row, summed contribution) over ``lists``, best first, ties by row; only
    rows in ``allowed`` (sorted int64) when given. Lists of at most ``rare_rows`` rows are
    scored together first."""
    ordered = sorted((p for p in lists if len(p.rows)), key=lambda p: len(p.rows))
    if not ordered or k <= 0:
        return []
    cut = 1
    while cut < len(ordered) and len(ordered[cut].rows) <= rare_rows:
        cut += 1
    while True:
        rare, common = ordered[:cut], ordered[cut:]
        rows = np.unique(np.concatenate([p.rows for p in rare]))
        if allowed is not None:
            rows = rows[np.isin(rows, allowed, assume_unique=True)]
        scores = np.zeros(len(rows))
        for p in ordered:
            scores += p.at(rows)
        best = np.lexsort((rows, -scores))[:k]
        outside = sum(p.top for p in common)
        if not common or (len(best) == k and scores[best[-1]] > outside):
            return [(int(rows[i]), float(scores[i])) for i in best]
        cut += 1


@dataclass(slots=True)
class _Store:
    rows: int
    phrases: dict[str, _Postings | None] = field(default_factory=dict)  # None: held by half or more
    nbytes: int = 0


class FulltextCache:
    """Per store, the score lists of the phrases searched since its chunks last changed."""

    def __init__(self, max_bytes: int, *, rare_rows: int = RARE_ROWS) -> None:
        self._max_bytes = max_bytes
        self._rare_rows = rare_rows
        self._stores: OrderedDict[int, _Store] = OrderedDict()
        self._bytes = 0

    @property
    def enabled(self) -> bool:
        return self._max_bytes > 0

    def drop(self, store_pk: int) -> None:
        gone = self._stores.pop(store_pk, None)
        if gone is not None:
            self._bytes -= gone.nbytes

    def clear(self) -> None:
        self._stores.clear()
        self._bytes = 0

    def search(
        self, conn: apsw.Connection, store_pk: int, phrases: Sequence[str], k: int, allowed: Any | None
    ) -> list[tuple[int, float]]:
        """The ``k`` best rows of ``fts_<store_pk>`` for any of ``phrases`` (FTS5 query strings, each
        one quoted phrase) as (row, BM25 score: positive, higher is better)."""
        store = self._stores.get(store_pk)
        if store is None:
            (count,) = conn.execute(
                "SELECT count(*) FROM chunks WHERE store_pk = ?", (store_pk,)
            ).fetchone() or (0,)
            store = self._stores[store_pk] = _Store(rows=int(count))
        self._stores.move_to_end(store_pk)
        lists = [p for p in (self._phrase(conn, store_pk, store, q) for q in phrases) if p]
        self._evict()
        return top_k(lists, k, allowed, rare_rows=self._rare_rows)

    def _phrase(self, conn: apsw.Connection, store_pk: int, store: _Store, phrase: str) -> _Postings | None:
        if phrase in store.phrases:
            return store.phrases[phrase]
        found: Any = conn.execute(
            f"SELECT rowid, -bm25(fts_{store_pk}) FROM fts_{store_pk} WHERE fts_{store_pk} MATCH ?"  # noqa: S608
            " ORDER BY rowid",
            (phrase,),
        ).fetchall()
        postings: _Postings | None = None
        if found and (2 * len(found) < store.rows or len(found) <= self._rare_rows):
            postings = _Postings(
                rows=np.array([r[0] for r in found], dtype=np.int64),
                scores=np.array([r[1] for r in found], dtype=np.float64),
            )
            store.nbytes += 16 * len(found)
            self._bytes += 16 * len(found)
        store.phrases[phrase] = postings
        return postings

    def _evict(self) -> None:
        while self._bytes > self._max_bytes and self._stores:
            if len(self._stores) == 1:  # one store over the budget: it keeps nothing
                (only,) = self._stores.values()
                self._bytes -= only.nbytes
                only.phrases.clear()
                only.nbytes = 0
                return
            _, old = self._stores.popitem(last=False)
            self._bytes -= old.nbytes
