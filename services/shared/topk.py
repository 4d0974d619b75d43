"""The top k of a catalog's scores array: score desc, then popularity desc, then asset id asc.

A dense catalog ties thousands of assets at the k-th best score (bench: ~2,000 per user), and
ordering them as Python tuples per request was most of a recommendation's cost. So each
catalog keeps a :class:`TieOrder`: every asset's position in (popularity desc, id asc) order
as a numpy array, rebuilt only for a new popularity or a grown catalog, and the tie is cut
with ``argpartition`` on it. Small ties still go by tuples (no array to build for them).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping

import numpy as np

TUPLES_UP_TO = 64
"""Ties this small are ordered as tuples: cheaper than building a TieOrder for them."""
GROWTH_TOLERATED = 64
"""A rank built before at most this many (or an eighth more) assets were added is still used;
the newer assets' ties are merged in as tuples."""
POPULARITIES_KEPT = 4
"""Ranks kept per catalog, newest popularities': the gateway swaps one in every ttl."""


class TieOrder:
    """Per catalog: each slot's rank in (popularity desc, asset id asc) order, per popularity.

    Slots are append-only and keep their asset id (see ``Catalog``), so a rank stays right
    through relabels and deletes, and for a grown catalog it is right for the old slots.
    """

    __slots__ = ("_id_rank", "_ranks")

    def __init__(self) -> None:
        self._id_rank = np.empty(0, dtype=np.intp)  # slot -> its id's place among all ids
        self._ranks: dict[int, np.ndarray] = {}  # popularity token -> slot -> rank

    def ranks(self, ids: list[str], position: Mapping[str, int], counts: Mapping[str, int],
              token: int) -> np.ndarray:
        """The rank of slots ``[0, len(result))``: the popularity ``token`` names ``counts``
        (a new token for every change), slot ``i`` is asset ``ids[i]`` (``position`` the
        reverse)."""
        rank = self._ranks.get(token)
        n = len(ids)
        if rank is not None and n - len(rank) <= max(GROWTH_TOLERATED, len(rank) // 8):
            return rank
        if len(self._id_rank) != n:
            self._id_rank = _rank_of(np.array(sorted(range(n), key=ids.__getitem__),
                                              dtype=np.intp))
        popular = np.zeros(n, dtype=np.int64)
        if len(counts) < n:
            hits = [(s, c) for a, c in counts.items() if (s := position.get(a)) is not None]
            if hits:
                slots, ns = zip(*hits, strict=True)
                popular[list(slots)] = ns
        else:
            get = counts.get
            popular[:] = np.fromiter((get(a, 0) for a in ids), dtype=np.int64, count=n)
        rank = _rank_of(np.lexsort((self._id_rank, -popular)))
        self._ranks.pop(token, None)
        while len(self._ranks) >= POPULARITIES_KEPT:
            del self._ranks[next(iter(self._ranks))]  # the oldest
        self._ranks[token] = rank
        return rank


def _rank_of(order: np.ndarray) -> np.ndarray:
    """slot -> place, from the slots in order."""
    rank = np.empty(len(order), dtype=np.intp)
    rank[order] = np.arange(len(order), dtype=np.intp)
    return rank


def top_k(scores: np.ndarray, k: int, ids: list[str], count: Callable[[str, int], int],
          rank: Callable[[], np.ndarray]) -> list[tuple[float, str]]:
    """(score, asset id) of the (at most) ``k`` best positive scores, ``scores[slot]`` being
    asset ``ids[slot]``'s: score desc, ``count`` (popularity) desc, id asc. ``rank`` gives
    the :class:`TieOrder` rank, asked for only for a big tie at the k-th score."""
    positive = np.flatnonzero(scores > 0.0)
    kth = 0.0
    tied: list[int] = []
    if len(positive) > k:
        # every asset above the k-th best score (found on the bare floats; at most k - 1),
        # then the best of those at exactly that score
        at = scores[positive]
        kth = float(np.partition(at, len(at) - k)[len(at) - k])
        above = positive[at > kth]
        tied = _best_tied(positive[at == kth], k - len(above), ids, count, rank)
        positive = above
    ranked = sorted((-s, -count(ids[i], 0), ids[i])
                    for i, s in zip(positive.tolist(), scores[positive].tolist(), strict=True))
    return [(-neg, a) for neg, _, a in ranked] + [(kth, ids[i]) for i in tied]


def _best_tied(tied: np.ndarray, need: int, ids: list[str], count: Callable[[str, int], int],
               rank: Callable[[], np.ndarray]) -> list[int]:
    """The ``need`` best of the ``tied`` slots, best first: popularity desc, id asc."""
    if len(tied) <= max(TUPLES_UP_TO, need):
        return _by_tuples(tied.tolist(), need, ids, count)
    ranks = rank()
    old, new = tied[tied < len(ranks)], tied[tied >= len(ranks)]
    at = ranks[old]
    if need < len(old):
        best = np.argpartition(at, need - 1)[:need]
        old, at = old[best], at[best]
    chosen: list[int] = old[np.argsort(at)].tolist()  # ranks are distinct: an exact order
    if len(new):  # added since the rank was built: the best of both, by tuples
        chosen = _by_tuples(chosen + new.tolist(), need, ids, count)
    return chosen


def _by_tuples(slots: list[int], need: int, ids: list[str],
               count: Callable[[str, int], int]) -> list[int]:
    return [i for _, _, i in heapq.nsmallest(need, [(-count(ids[i], 0), ids[i], i)
                                                    for i in slots])]
