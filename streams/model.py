"""Real-time user-state model: folding one user's events into label weights with event-time decay.

In: one user's events (event time, event type, event labels, asset id) plus the program's asset
catalog (asset id -> labels).
Out: the user's mutated :class:`UserState` (decayed label weights, last-N assets). Ranking that
state, and the state, tunables and catalog themselves, live in ``services/shared/ranking.py``,
which the gateway uses too.

Everything here is pure, synchronous and stdlib-only so the Faust agents stay thin and the math
can be unit-tested without a broker. Weights are kept "as of" the user's newest event time
(``ref_ts``) and older contributions are discounted by their distance to it, which makes the
result independent of arrival order: late or out-of-order events land exactly where they would
have landed had they arrived in order (up to float rounding).
"""

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

from services.shared.ranking import ModelConfig, UserState, unique_labels

__all__ = [
    "EventIn",
    "apply_event",
    "apply_events",
]


def _check_ts(ts: float) -> None:
    if not math.isfinite(ts):
        raise ValueError(f"event time must be finite, got {ts!r}")


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
    labels = unique_labels((*unique_labels(event_labels), *unique_labels(asset_labels)))
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
    ``asset_labels`` (a plain mapping or a ``Catalog``) contribute no asset labels.
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
