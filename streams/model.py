"""Real-time user-state model: label weights with event-time decay, and recommendations.

In: one user's events (event time, event type, event labels, asset id) plus the program's asset
catalog (asset id -> labels) and program-wide asset popularity counts.
Out: the user's mutated :class:`UserState` (decayed label weights, last-N assets) and a ranked
list of :class:`Recommendation` for that user.

Everything here is pure, synchronous and stdlib-only so the Faust agents stay thin and the math
can be unit-tested without a broker. Weights are kept "as of" the user's newest event time
(``ref_ts``) and older contributions are discounted by their distance to it, which makes the
result independent of arrival order: late or out-of-order events land exactly where they would
have landed had they arrived in order (up to float rounding).
"""

import heapq
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = [
    "Catalog",
    "EventIn",
    "ModelConfig",
    "Popularity",
    "Recommendation",
    "UserState",
    "apply_event",
    "apply_events",
    "label_weights",
    "recommend",
]


def _default_amounts() -> dict[str, float]:
    return {"view": 1.0, "click": 2.0, "add_to_cart": 3.0, "purchase": 5.0}


def _labels_tuple(labels: Iterable[str]) -> tuple[str, ...]:
    """Dedupe while keeping first-seen order, so iteration (and float summation) is stable.

    A bare ``str`` is rejected: iterating it would silently turn "sports" into 6 labels.
    """
    if isinstance(labels, str):
        raise TypeError("labels must be an iterable of strings, not a single string")
    return tuple(dict.fromkeys(labels))


def _check_ts(ts: float) -> None:
    if not math.isfinite(ts):
        raise ValueError(f"event time must be finite, got {ts!r}")


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


@dataclass(slots=True)
class UserState:
    """Per (program, user) state; small enough to live in a Faust table value."""

    ref_ts: float | None = None
    """Epoch seconds of the user's newest event seen; ``weights`` are expressed as of this time."""
    weights: dict[str, float] = field(default_factory=dict)
    """label -> decayed weight as of ``ref_ts``."""
    recent: list[tuple[float, str]] = field(default_factory=list)
    """(event_ts, asset_id) of the newest N events by event time, newest first."""


class EventIn(NamedTuple):
    """One user event as the model needs it (the wire format is parsed elsewhere)."""

    ts: float
    event_type: str
    labels: Sequence[str] = ()
    asset_id: str | None = None


def _advance(state: UserState, cfg: ModelConfig, ts: float) -> None:
    """Move ``ref_ts`` forward to ``ts``, decaying all weights; no-op for older events.

    Weights that underflow to exactly 0.0 are dropped so that in-order and out-of-order arrival
    leave the same set of keys (an old event added late contributes 0.0 and is skipped too).
    """
    if state.ref_ts is None:
        state.ref_ts = ts
        return
    if ts <= state.ref_ts:
        return
    factor = math.exp2(-(ts - state.ref_ts) / cfg.half_life_s)
    state.weights = {k: w for k, v in state.weights.items() if (w := v * factor) != 0.0}
    state.ref_ts = ts


def _add(
    state: UserState,
    cfg: ModelConfig,
    ts: float,
    event_type: str,
    event_labels: Iterable[str],
    asset_labels: Iterable[str],
    asset_id: str | None,
) -> None:
    """Add one event's contribution; requires ``ts <= state.ref_ts`` (see :func:`_advance`)."""
    assert state.ref_ts is not None
    labels = _labels_tuple((*_labels_tuple(event_labels), *_labels_tuple(asset_labels)))
    contribution = cfg.amount_for(event_type) * math.exp2(-(state.ref_ts - ts) / cfg.half_life_s)
    if contribution != 0.0:
        weights = state.weights
        for label in labels:
            weights[label] = weights.get(label, 0.0) + contribution
    if asset_id is not None:
        _remember(state, cfg.exclude_last_n, ts, asset_id)


def _remember(state: UserState, n: int, ts: float, asset_id: str) -> None:
    """Keep the newest ``n`` (ts, asset_id) pairs; the total order makes it arrival-independent."""
    if n <= 0:
        state.recent.clear()
        return
    item = (ts, asset_id)
    recent = state.recent
    if len(recent) >= n and item <= recent[-1]:
        return  # older than everything we keep (ties on both fields change nothing)
    recent.append(item)
    recent.sort(reverse=True)
    del recent[n:]


def apply_event(
    state: UserState,
    cfg: ModelConfig,
    ts: float,
    event_type: str,
    event_labels: Iterable[str],
    asset_labels: Iterable[str],
    asset_id: str | None = None,
) -> None:
    """Fold one event into ``state`` in place.

    Amount ``cfg.amount_for(event_type)`` goes once to every label in the union of the event's
    and the asset's labels, discounted by ``2 ** -((ref_ts - ts) / half_life_s)``. A newer event
    first decays the existing weights to its own time and becomes the new ``ref_ts``.
    """
    _check_ts(ts)
    _advance(state, cfg, ts)
    _add(state, cfg, ts, event_type, event_labels, asset_labels, asset_id)


def apply_events(
    state: UserState,
    cfg: ModelConfig,
    events: Iterable[EventIn],
    asset_labels: Mapping[str, Sequence[str]],
) -> None:
    """Fold a batch of one user's events into ``state`` (the agents' one-call-per-user path).

    Decays the existing weights once, to the batch's newest time, instead of once per newer
    event; the result equals calling :func:`apply_event` per event. Assets missing from
    ``asset_labels`` (a plain mapping or a :class:`Catalog`) contribute no asset labels.
    """
    batch = list(events)
    if not batch:
        return
    for ev in batch:
        _check_ts(ev.ts)
    _advance(state, cfg, max(ev.ts for ev in batch))
    for ev in batch:
        extra: Sequence[str] = ()
        if ev.asset_id is not None:
            extra = asset_labels.get(ev.asset_id, ())
        _add(state, cfg, ev.ts, ev.event_type, ev.labels, extra, ev.asset_id)


def label_weights(state: UserState) -> list[tuple[str, float]]:
    """The user's labels, heaviest first, ties by label name ascending (stable for APIs/tests)."""
    return sorted(state.weights.items(), key=lambda kv: (-kv[1], kv[0]))


class Popularity:
    """Program-wide event count per asset; tie-breaker and cold-start source."""

    __slots__ = ("_counts",)

    def __init__(self, counts: Mapping[str, int] | None = None) -> None:
        self._counts: dict[str, int] = {}
        for asset_id, n in (counts or {}).items():
            self.add(asset_id, n)

    def add(self, asset_id: str, n: int = 1) -> None:
        """Count ``n`` more events for the asset (negative ``n`` un-counts; <= 0 is dropped)."""
        total = self._counts.get(asset_id, 0) + n
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
    ``asset_labels`` to :func:`apply_events`.
    """

    __slots__ = ("_index", "_labels")

    def __init__(self, assets: Mapping[str, Iterable[str]] | None = None) -> None:
        self._labels: dict[str, tuple[str, ...]] = {}
        self._index: dict[str, set[str]] = {}
        for asset_id, labels in (assets or {}).items():
            self.upsert(asset_id, labels)

    def upsert(self, asset_id: str, labels: Iterable[str]) -> None:
        """Insert or replace an asset's labels, keeping the index exact (old labels removed)."""
        new = _labels_tuple(labels)
        self._unindex(asset_id)
        self._labels[asset_id] = new
        for label in new:
            self._index.setdefault(label, set()).add(asset_id)

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
            if not ids:
                del self._index[label]  # no empty postings left behind for deleted labels

    def _postings(self, label: str) -> Iterable[str]:
        return self._index.get(label, ())

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

    scores: dict[str, float] = {}
    for label, weight in state.weights.items():
        for asset_id in cat._postings(label):
            if asset_id not in excluded:
                scores[asset_id] = scores.get(asset_id, 0.0) + weight

    pop = popularity.count
    top = heapq.nsmallest(
        k,
        ((s, a) for a, s in scores.items() if s > 0.0),
        key=lambda sa: (-sa[0], -pop(sa[1]), sa[1]),
    )
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
