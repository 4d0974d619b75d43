"""Ranking assets for a user, and what ranking reads: the user's state, the model's tunables,
the program's catalog and its popularity.

Where the roles meet: the agents (``streams/``) fold events into a :class:`UserState` with a
:class:`ModelConfig` (``streams/model.py``); the gateway ranks at read time with
:func:`recommend` and :func:`label_weights`, from the user's state, the :class:`Catalog`
(asset id -> labels) and the program-wide :class:`Popularity` counts. :class:`ModelConfigs`
builds each program's :class:`ModelConfig` from the settings, for both.

Everything here is synchronous (stdlib and numpy), so the math can be unit-tested without a
broker. Weights are kept "as of" the user's newest event time (``ref_ts``); see
``streams/model.py`` for how events land in them.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from services.shared.topk import TieOrder, top_k

if TYPE_CHECKING:
    from services.shared.settings import Settings

__all__ = [
    "Catalog",
    "ModelConfig",
    "ModelConfigs",
    "Popularity",
    "Recommendation",
    "UserState",
    "label_weights",
    "recommend",
    "unique_labels",
]


def _default_amounts() -> dict[str, float]:
    return {"view": 1.0, "click": 2.0, "add_to_cart": 3.0, "purchase": 5.0}


def unique_labels(labels: Iterable[str]) -> tuple[str, ...]:
    """Dedupe while keeping first-seen order, so iteration (and float summation) is stable.

    A bare ``str`` is rejected: iterating it would silently turn "sports" into 6 labels.
    """
    if isinstance(labels, str):
        raise TypeError("labels must be an iterable of strings, not a single string")
    return tuple(dict.fromkeys(labels))


@dataclass(slots=True)
class ModelConfig:
    """Tunables of the model; validated up front so a bad deploy fails loudly, not silently."""

    half_life_s: float = 7 * 86400.0
    event_type_amounts: dict[str, float] = field(default_factory=_default_amounts)
    default_amount: float = 1.0
    top_k: int = 20
    exclude_last_n: int = 10

    def __post_init__(self) -> None:
        if not (math.isfinite(self.half_life_s) and self.half_life_s > 0):
            raise ValueError(f"half_life_s must be finite and > 0, got {self.half_life_s!r}")
        amounts = [self.default_amount, *self.event_type_amounts.values()]
        if any(not (math.isfinite(a) and a >= 0) for a in amounts):
            raise ValueError("event amounts must be finite and >= 0")
        if self.top_k < 0 or self.exclude_last_n < 0:
            raise ValueError("top_k and exclude_last_n must be >= 0")

    def amount_for(self, event_type: str) -> float:
        """How much interest one event of this type signals; unknown types get the default."""
        return self.event_type_amounts.get(event_type, self.default_amount)


class ModelConfigs:
    """One ModelConfig per program: event-type amounts may differ by program."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._for = lru_cache(maxsize=4096)(self._build)

    def __call__(self, program_id: str) -> ModelConfig:
        return self._for(program_id)

    def _build(self, program_id: str) -> ModelConfig:
        amounts = self.settings.event_type_amounts
        chosen = amounts.get(program_id, amounts.get("*", {}))
        return ModelConfig(
            half_life_s=self.settings.half_life_s,
            event_type_amounts=dict(chosen),
            default_amount=self.settings.default_event_amount,
            top_k=self.settings.top_k,
            exclude_last_n=self.settings.exclude_last_n,
        )


@dataclass(slots=True)
class UserState:
    """Per (program, user) state; small enough to live in a Faust table value."""

    ref_ts: float | None = None
    """Epoch seconds of the user's newest event seen; ``weights`` are expressed as of this time."""
    weights: dict[str, float] = field(default_factory=dict)
    """label -> decayed weight as of ``ref_ts``."""
    recent: list[tuple[float, str]] = field(default_factory=list)
    """(event_ts, asset_id) of the newest N events by event time, newest first."""


def label_weights(state: UserState) -> list[tuple[str, float]]:
    """The user's labels, heaviest first, ties by label name ascending (stable for APIs/tests)."""
    return sorted(state.weights.items(), key=lambda kv: (-kv[1], kv[0]))


_TOKENS = itertools.count(1)


class Popularity:
    """Program-wide event count per asset; tie-breaker and cold-start source.

    ``_token`` is new for every change (unique across instances, unlike ``id``): ranking
    caches its tie order per token.
    """

    __slots__ = ("_counts", "_token")

    def __init__(self, counts: Mapping[str, int] | None = None) -> None:
        self._counts: dict[str, int] = {}
        self._token = 0  # all empty popularities are alike
        for asset_id, n in (counts or {}).items():
            self.add(asset_id, n)

    def add(self, asset_id: str, n: int = 1) -> None:
        """Count ``n`` more events for the asset (negative ``n`` un-counts; <= 0 is dropped)."""
        total = self._counts.get(asset_id, 0) + n
        self._token = next(_TOKENS)
        if total > 0:
            self._counts[asset_id] = total
        else:
            self._counts.pop(asset_id, None)

    def count(self, asset_id: str) -> int:
        return self._counts.get(asset_id, 0)

    def items(self) -> Iterable[tuple[str, int]]:
        """(asset_id, count) for assets with a positive count, in no particular order."""
        return self._counts.items()

    def __len__(self) -> int:
        return len(self._counts)


class Catalog(Mapping[str, tuple[str, ...]]):
    """A program's assets (asset_id -> labels) plus an inverted index label -> asset ids.

    The index lets :func:`recommend` score only assets that share a label with the user instead
    of the whole catalog. It is also a read-only ``Mapping``, so it can be passed as
    ``asset_labels`` to ``apply_events`` (``streams/model.py``).

    Each asset also has a fixed position (kept when it is deleted), and each label's postings
    an array of positions, built when a recommendation first needs it after a change to that
    label: scoring is then one numpy add per user label instead of one dict update per
    posting (a dense catalog's label holds thousands of assets). ``_ties`` orders the slots
    for ranking's tie-break (``services/shared/topk.py``).
    """

    __slots__ = ("_arrays", "_ids", "_index", "_labels", "_position", "_ties")

    def __init__(self, assets: Mapping[str, Iterable[str]] | None = None) -> None:
        self._labels: dict[str, tuple[str, ...]] = {}
        self._index: dict[str, set[str]] = {}
        self._position: dict[str, int] = {}  # asset id -> its slot in a scores array
        self._ids: list[str] = []  # slot -> asset id
        self._arrays: dict[str, np.ndarray] = {}  # label -> its postings' slots (cache)
        self._ties = TieOrder()
        for asset_id, labels in (assets or {}).items():
            self.upsert(asset_id, labels)

    def upsert(self, asset_id: str, labels: Iterable[str]) -> None:
        """Insert or replace an asset's labels, keeping the index exact (old labels removed)."""
        new = unique_labels(labels)
        self._unindex(asset_id)
        self._labels[asset_id] = new
        if asset_id not in self._position:
            self._position[asset_id] = len(self._ids)
            self._ids.append(asset_id)
        for label in new:
            self._index.setdefault(label, set()).add(asset_id)
            self._arrays.pop(label, None)

    def delete(self, asset_id: str) -> bool:
        """Remove an asset; returns whether it existed."""
        if asset_id not in self._labels:
            return False
        self._unindex(asset_id)
        del self._labels[asset_id]
        return True

    def assets_with(self, label: str) -> frozenset[str]:
        """Asset ids carrying ``label`` (a copy: callers cannot corrupt the index)."""
        return frozenset(self._index.get(label, ()))

    def _unindex(self, asset_id: str) -> None:
        for label in self._labels.get(asset_id, ()):
            ids = self._index[label]
            ids.discard(asset_id)
            self._arrays.pop(label, None)
            if not ids:
                del self._index[label]  # no empty postings left behind for deleted labels

    def _slots(self, label: str) -> np.ndarray | None:
        """The slots of the assets carrying ``label``; None when none does."""
        slots = self._arrays.get(label)
        if slots is None:
            ids = self._index.get(label)
            if not ids:
                return None
            position = self._position
            slots = self._arrays[label] = np.fromiter(
                (position[a] for a in ids), dtype=np.intp, count=len(ids))
        return slots

    def __getitem__(self, asset_id: str) -> tuple[str, ...]:
        return self._labels[asset_id]

    def labels_of(self, asset_id: str) -> tuple[str, ...]:
        """The asset's labels, () if unknown: a plain dict lookup (the gateway calls it per
        event; Mapping.get would go through __getitem__ and a KeyError for each miss)."""
        return self._labels.get(asset_id, ())

    def __iter__(self) -> Iterator[str]:
        return iter(self._labels)

    def __len__(self) -> int:
        return len(self._labels)

    def __contains__(self, asset_id: object) -> bool:
        return asset_id in self._labels

    def labels(self) -> frozenset[str]:
        """All labels that at least one asset carries."""
        return frozenset(self._index)


@dataclass(frozen=True, slots=True)
class Recommendation:
    """One ranked asset; ``labels`` explains the score (user-weighted labels, biggest first)."""

    asset_id: str
    score: float
    labels: list[str]


def recommend(
    state: UserState,
    cfg: ModelConfig,
    catalog: Catalog | Mapping[str, Sequence[str]],
    popularity: Popularity,
    limit: int | None = None,
) -> list[Recommendation]:
    """Rank catalog assets for the user by dot product of label weights (binary asset labels).

    Order: score desc, popularity desc, asset_id asc. Assets among the user's last N events
    (``state.recent``) are excluded. If fewer than K assets score > 0 (including cold start:
    no weights at all), the rest is filled with the program's most popular catalog assets
    (then asset_id asc) at score 0.0 with no labels. ``limit`` defaults to ``cfg.top_k``;
    ``limit=0`` returns ``[]``. A plain mapping is indexed on the fly (O(catalog) per call);
    pass a :class:`Catalog` on the hot path.
    """
    k = cfg.top_k if limit is None else limit
    if k < 0:
        raise ValueError(f"limit must be >= 0, got {k}")
    if k == 0:
        return []
    cat = catalog if isinstance(catalog, Catalog) else Catalog(catalog)
    excluded = {asset_id for _, asset_id in state.recent}

    # each asset's score: the weights of its labels the user has, added in the same order
    # for every asset (so equal label sets give equal floats, as ties need)
    scores = np.zeros(len(cat._ids))
    for label, weight in state.weights.items():
        slots = cat._slots(label)
        if slots is not None:
            scores[slots] += weight  # a label's slots are distinct: no lost updates
    for asset_id in excluded:
        if (slot := cat._position.get(asset_id)) is not None:
            scores[slot] = 0.0
    counts = popularity._counts
    token = popularity._token if counts else 0
    top = top_k(scores, k, cat._ids, counts.get,
                lambda: cat._ties.ranks(cat._ids, cat._position, counts, token))
    weights = state.weights
    out = [
        Recommendation(
            asset_id=a,
            score=s,
            labels=sorted(
                (lb for lb in cat[a] if lb in weights), key=lambda lb: (-weights[lb], lb)
            ),
        )
        for s, a in top
    ]
    if len(out) < k:
        taken = excluded | {r.asset_id for r in out}
        out.extend(
            Recommendation(asset_id=a, score=0.0, labels=[])
            for a in _popular_fill(cat, popularity, taken, k - len(out))
        )
    return out


def _popular_fill(cat: Catalog, popularity: Popularity, taken: set[str], need: int) -> list[str]:
    """Up to ``need`` catalog assets not in ``taken``: popularity desc, then asset_id asc.

    Scans the popularity counts first; only touches the whole catalog when popular assets run
    out (zero-count assets, ordered by id).
    """
    popular = heapq.nsmallest(
        need,
        ((a, n) for a, n in popularity.items() if a in cat and a not in taken),
        key=lambda an: (-an[1], an[0]),
    )
    chosen = [a for a, _ in popular]
    if len(chosen) < need:
        skip = taken | set(chosen)
        chosen.extend(
            heapq.nsmallest(
                need - len(chosen),
                (a for a in cat if a not in skip and popularity.count(a) == 0),
            )
        )
    return chosen
