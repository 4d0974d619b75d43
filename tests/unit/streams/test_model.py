"""Unit tests for the user-state model: folding events (streams.model) and ranking
(services.shared.ranking); expected numbers are hand-computed literals (see comments)."""

import itertools

import pytest

from services.shared.ranking import (
    Catalog,
    ModelConfig,
    Popularity,
    Recommendation,
    UserState,
    label_weights,
    recommend,
)
from streams.model import EventIn, apply_event, apply_events

HL = 10.0  # half-life in seconds for easy hand math: dt=10 -> x0.5, dt=20 -> x0.25


def cfg(**kw: object) -> ModelConfig:
    return ModelConfig(half_life_s=HL, **kw)  # type: ignore[arg-type]


# --- config ---------------------------------------------------------------------------------


def test_amounts_per_event_type_and_unknown_gets_default() -> None:
    c = ModelConfig()
    assert c.half_life_s == 604800.0  # 7 * 86400
    assert [c.amount_for(t) for t in ("view", "click", "add_to_cart", "purchase")] == [
        1.0,
        2.0,
        3.0,
        5.0,
    ]
    assert c.amount_for("share") == 1.0
    assert ModelConfig(default_amount=0.5).amount_for("share") == 0.5


def test_amount_is_what_lands_on_the_label() -> None:
    s = UserState()
    apply_event(s, cfg(), 0.0, "purchase", ["p"], [])
    apply_event(s, cfg(), 0.0, "add_to_cart", ["c"], [])
    apply_event(s, cfg(), 0.0, "mystery", ["m"], [])
    # same ts as ref_ts -> factor 1: purchase 5, add_to_cart 3, unknown -> default 1
    assert s.weights == {"p": 5.0, "c": 3.0, "m": 1.0}


@pytest.mark.parametrize(
    "kw",
    [{"half_life_s": 0.0}, {"half_life_s": float("nan")}, {"default_amount": -1.0}, {"top_k": -1}],
)
def test_config_rejects_bad_values(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ModelConfig(**kw)  # type: ignore[arg-type]


# --- decay ----------------------------------------------------------------------------------


def test_one_half_life_halves() -> None:
    s = UserState()
    apply_event(s, cfg(), 0.0, "view", ["a"], [])  # a = 1
    apply_event(s, cfg(), 10.0, "click", ["b"], [])  # a = 1 * 0.5 = 0.5 ; b = 2
    assert s.ref_ts == 10.0
    assert s.weights == pytest.approx({"a": 0.5, "b": 2.0})


def test_two_half_lives_then_add() -> None:
    s = UserState()
    apply_event(s, cfg(), 0.0, "purchase", ["x"], [])  # x = 5
    apply_event(s, cfg(), 20.0, "view", ["x"], [])  # x = 5 * 0.25 + 1 = 2.25
    assert s.weights["x"] == pytest.approx(2.25)


def test_late_event_is_discounted_and_does_not_move_ref_ts() -> None:
    s = UserState()
    apply_event(s, cfg(), 10.0, "view", ["a"], [])  # a = 1
    apply_event(s, cfg(), 0.0, "click", ["a"], [])  # a += 2 * 2**-1 = 1 -> 2.0
    assert s.ref_ts == 10.0
    assert s.weights["a"] == pytest.approx(2.0)


def test_default_half_life_one_week() -> None:
    s = UserState()
    apply_event(s, ModelConfig(), 0.0, "purchase", ["a"], [])
    apply_event(s, ModelConfig(), 604800.0, "view", ["b"], [])  # a = 5 * 0.5 = 2.5
    assert s.weights == pytest.approx({"a": 2.5, "b": 1.0})


def test_underflowed_weights_are_dropped_in_either_order() -> None:
    far = 20000.0  # 2000 half-lives: 2**-2000 underflows to 0.0
    in_order, late = UserState(), UserState()
    apply_event(in_order, cfg(), 0.0, "view", ["old"], [])
    apply_event(in_order, cfg(), far, "view", ["new"], [])
    apply_event(late, cfg(), far, "view", ["new"], [])
    apply_event(late, cfg(), 0.0, "view", ["old"], [])
    assert in_order.weights == {"new": 1.0}
    assert late.weights == {"new": 1.0}


# --- labels ---------------------------------------------------------------------------------


def test_union_of_event_and_asset_labels_counted_once() -> None:
    s = UserState()
    apply_event(s, cfg(), 0.0, "click", ["a", "b", "a"], ["b", "c"], "A1")
    # union {a, b, c}, each +2 once (b is NOT 4)
    assert s.weights == {"a": 2.0, "b": 2.0, "c": 2.0}


def test_single_string_labels_rejected() -> None:
    with pytest.raises(TypeError):
        apply_event(UserState(), cfg(), 0.0, "view", "sports", [])


def test_non_finite_ts_rejected() -> None:
    with pytest.raises(ValueError):
        apply_event(UserState(), cfg(), float("nan"), "view", ["a"], [])


# --- arrival order --------------------------------------------------------------------------

ASSETS = {"A1": ["b"], "A2": [], "A3": ["c", "a"]}
EVENTS = [
    EventIn(0.0, "view", ["a"], "A1"),  # a, b += 1 at t0
    EventIn(10.0, "click", ["a"], "A2"),  # a += 2 at t10
    EventIn(20.0, "purchase", [], "A3"),  # c, a += 5 at t20
    EventIn(5.0, "view", ["c"], None),  # c += 1 at t5
]
# ref_ts = 20:
#   a = 1 * 2**-2 + 2 * 2**-1 + 5 = 0.25 + 1 + 5 = 6.25
#   b = 1 * 2**-2 = 0.25
#   c = 5 + 1 * 2**-1.5 = 5 + 0.35355339059327373 = 5.353553390593274
EXPECTED = {"a": 6.25, "b": 0.25, "c": 5.353553390593274}
EXPECTED_RECENT = [(20.0, "A3"), (10.0, "A2"), (0.0, "A1")]


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_out_of_order_equals_in_order_one_by_one(order: tuple[int, ...]) -> None:
    s = UserState()
    for i in order:
        ev = EVENTS[i]
        labels = ASSETS.get(ev.asset_id, []) if ev.asset_id else []
        apply_event(s, cfg(), ev.ts, ev.event_type, ev.labels, labels, ev.asset_id)
    assert s.ref_ts == 20.0
    assert s.weights == pytest.approx(EXPECTED)
    assert s.recent == EXPECTED_RECENT


@pytest.mark.parametrize("order", [(0, 1, 2, 3), (3, 2, 1, 0), (2, 0, 3, 1)])
@pytest.mark.parametrize("split", [0, 1, 2, 4])
def test_batched_path_equals_one_by_one(order: tuple[int, ...], split: int) -> None:
    events = [EVENTS[i] for i in order]
    s = UserState()
    apply_events(s, cfg(), events[:split], ASSETS)  # two batches; empty batch is a no-op
    apply_events(s, cfg(), events[split:], Catalog(ASSETS))
    assert s.ref_ts == 20.0
    assert s.weights == pytest.approx(EXPECTED)
    assert s.recent == EXPECTED_RECENT


def test_apply_events_unknown_asset_adds_no_asset_labels() -> None:
    s = UserState()
    apply_events(s, cfg(), [EventIn(0.0, "click", ["a"], "nope")], Catalog({"A1": ["z"]}))
    assert s.weights == {"a": 2.0}
    assert s.recent == [(0.0, "nope")]


# --- recent ---------------------------------------------------------------------------------


def test_recent_keeps_newest_n_by_event_time() -> None:
    s = UserState()
    for ts, aid in [(1.0, "A"), (3.0, "B"), (2.0, "C"), (0.5, "D")]:
        apply_event(s, cfg(exclude_last_n=2), ts, "view", [], [], aid)
    assert s.recent == [(3.0, "B"), (2.0, "C")]


def test_recent_ties_keep_both_deterministically() -> None:
    a, b = UserState(), UserState()
    for ts, aid in [(5.0, "x"), (5.0, "y"), (1.0, "z")]:
        apply_event(a, cfg(exclude_last_n=2), ts, "view", [], [], aid)
    for ts, aid in [(1.0, "z"), (5.0, "y"), (5.0, "x")]:
        apply_event(b, cfg(exclude_last_n=2), ts, "view", [], [], aid)
    assert a.recent == [(5.0, "y"), (5.0, "x")]
    assert b.recent == a.recent


def test_recent_disabled_with_n_zero() -> None:
    s = UserState()
    apply_event(s, cfg(exclude_last_n=0), 1.0, "view", ["a"], [], "A")
    assert s.recent == []
    assert s.weights == {"a": 1.0}


# --- label_weights --------------------------------------------------------------------------


def test_label_weights_desc_then_name_asc() -> None:
    s = UserState(ref_ts=0.0, weights={"b": 2.0, "d": 0.5, "a": 2.0, "c": 5.0})
    assert label_weights(s) == [("c", 5.0), ("a", 2.0), ("b", 2.0), ("d", 0.5)]


# --- recommend ------------------------------------------------------------------------------


def ids(recs: list[Recommendation]) -> list[str]:
    return [r.asset_id for r in recs]


def test_ranking_by_dot_product() -> None:
    s = UserState(ref_ts=0.0, weights={"a": 3.0, "b": 1.0, "c": 0.5})
    catalog = Catalog(
        {
            "P1": ["a"],  # 3
            "P2": ["c", "b"],  # 1 + 0.5 = 1.5
            "P3": ["b", "a"],  # 3 + 1 = 4
            "P4": ["c", "zzz"],  # 0.5
            "P5": ["d"],  # 0 -> popularity fill
        }
    )
    recs = recommend(s, cfg(), catalog, Popularity({"P5": 100}), limit=5)
    assert ids(recs) == ["P3", "P1", "P2", "P4", "P5"]
    assert [r.score for r in recs] == pytest.approx([4.0, 3.0, 1.5, 0.5, 0.0])
    assert recs[0].labels == ["a", "b"]  # contribution 3 before 1
    assert recs[2].labels == ["b", "c"]  # 1 before 0.5
    assert recs[3].labels == ["c"]  # zzz has no user weight
    assert recs[4] == Recommendation("P5", 0.0, [])


def test_asset_labels_are_binary() -> None:
    s = UserState(ref_ts=0.0, weights={"a": 3.0})
    recs = recommend(s, cfg(), Catalog({"P": ["a", "a", "a"]}), Popularity())
    assert recs == [Recommendation("P", 3.0, ["a"])]  # 3 once, not 9


def test_excludes_last_n_assets() -> None:
    s = UserState()
    c = cfg(exclude_last_n=1)
    catalog = Catalog({"P1": ["a"], "P2": ["a"], "P3": ["a", "b"]})
    apply_event(s, c, 0.0, "view", ["a"], catalog["P1"], "P1")
    apply_event(s, c, 1.0, "view", ["b"], catalog["P3"], "P3")
    assert s.recent == [(1.0, "P3")]  # P1 fell out of the last-1 window
    recs = recommend(s, c, catalog, Popularity())
    assert "P3" not in ids(recs)
    # a = 1 * 2**-0.1 + 1 = 1.9330329915368074 ; P1 and P2 tie on it, then id asc
    assert ids(recs) == ["P1", "P2"]
    assert recs[0].score == pytest.approx(1.9330329915368074)


def test_ties_broken_by_popularity_then_asset_id() -> None:
    s = UserState(ref_ts=0.0, weights={"a": 1.0})
    catalog = Catalog({"X": ["a"], "Y": ["a"], "Z": ["a"], "W": ["a"]})
    pop = Popularity({"Y": 5, "Z": 5, "X": 1})
    assert ids(recommend(s, cfg(), catalog, pop)) == ["Y", "Z", "X", "W"]


def test_cold_start_most_popular_excluding_recent() -> None:
    catalog = Catalog({"A": ["x"], "B": ["y"], "C": ["z"], "D": ["w"]})
    pop = Popularity({"C": 10, "A": 3, "GONE": 99})  # GONE is not in the catalog
    recs = recommend(UserState(), cfg(), catalog, pop, limit=3)
    assert recs == [
        Recommendation("C", 0.0, []),
        Recommendation("A", 0.0, []),
        Recommendation("B", 0.0, []),  # zero count, id asc before D
    ]
    s = UserState(recent=[(1.0, "C")])
    assert ids(recommend(s, cfg(), catalog, pop, limit=3)) == ["A", "B", "D"]


def test_cold_start_when_weights_share_no_label() -> None:
    s = UserState(ref_ts=0.0, weights={"q": 2.0})
    catalog = Catalog({"A": ["x"], "B": ["y"]})
    recs = recommend(s, cfg(), catalog, Popularity({"B": 2}))
    assert recs == [Recommendation("B", 0.0, []), Recommendation("A", 0.0, [])]


def test_zero_scores_fill_after_positives_by_popularity() -> None:
    s = UserState(ref_ts=0.0, weights={"a": 1.0})
    catalog = Catalog({"P": ["a"], "Q": ["z"], "R": ["z"], "S": ["z"]})
    pop = Popularity({"R": 7, "S": 1, "P": 0})
    recs = recommend(s, cfg(), catalog, pop, limit=3)
    assert ids(recs) == ["P", "R", "S"]
    assert [r.score for r in recs] == [1.0, 0.0, 0.0]


def test_limit_defaults_to_top_k() -> None:
    s = UserState(ref_ts=0.0, weights={"a": 1.0})
    catalog = Catalog({f"P{i}": ["a"] for i in range(5)})
    assert ids(recommend(s, cfg(top_k=2), catalog, Popularity())) == ["P0", "P1"]
    assert ids(recommend(s, cfg(top_k=2), catalog, Popularity(), limit=1)) == ["P0"]
    assert recommend(s, cfg(top_k=2), catalog, Popularity(), limit=0) == []


def test_plain_mapping_catalog_gives_same_result() -> None:
    s = UserState(ref_ts=0.0, weights={"a": 2.0, "b": 1.0})
    raw = {"P1": ["a"], "P2": ["a", "b"], "P3": ["c"]}
    pop = Popularity({"P3": 1})
    expected = [
        Recommendation("P2", 3.0, ["a", "b"]),  # 2 + 1
        Recommendation("P1", 2.0, ["a"]),
        Recommendation("P3", 0.0, []),
    ]
    assert recommend(s, cfg(), raw, pop) == expected
    assert recommend(s, cfg(), Catalog(raw), pop) == expected


# --- catalog & popularity -------------------------------------------------------------------


def test_catalog_upsert_and_delete_keep_index_right() -> None:
    c = Catalog()
    c.upsert("A", ["x", "y"])
    c.upsert("B", ["y"])
    assert c.assets_with("x") == {"A"}
    assert c.assets_with("y") == {"A", "B"}
    c.upsert("A", ["y", "z", "z"])  # x removed, z added once
    assert c["A"] == ("y", "z")
    assert c.assets_with("x") == frozenset()
    assert c.assets_with("z") == {"A"}
    assert c.labels() == {"y", "z"}
    assert c.delete("A") is True
    assert c.delete("A") is False
    assert "A" not in c and len(c) == 1
    assert c.assets_with("y") == {"B"}
    assert c.labels() == {"y"}


def test_recommend_follows_catalog_updates() -> None:
    s = UserState(ref_ts=0.0, weights={"x": 1.0})
    c = Catalog({"A": ["x"], "B": ["y"]})
    assert recommend(s, cfg(), c, Popularity())[0] == Recommendation("A", 1.0, ["x"])
    c.upsert("A", ["y"])
    c.upsert("B", ["x"])
    assert recommend(s, cfg(), c, Popularity())[0] == Recommendation("B", 1.0, ["x"])
    c.delete("B")
    assert recommend(s, cfg(), c, Popularity()) == [Recommendation("A", 0.0, [])]


def test_popularity_counts() -> None:
    p = Popularity()
    p.add("A")
    p.add("A", 3)
    p.add("B", 2)
    assert (p.count("A"), p.count("B"), p.count("C")) == (4, 2, 0)  # 1 + 3 = 4
    p.add("B", -2)
    assert p.count("B") == 0 and len(p) == 1


def test_catalog_labels_of_follows_upserts_and_deletes() -> None:
    catalog = Catalog({"A1": ["x", "y", "x"]})
    assert catalog.labels_of("A1") == ("x", "y") and catalog.labels_of("nope") == ()
    catalog.upsert("A1", ["z"])
    assert catalog.labels_of("A1") == ("z",)
    catalog.delete("A1")
    assert catalog.labels_of("A1") == ()
