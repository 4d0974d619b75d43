"""``recommend`` cuts big ties at the k-th score with a cached numpy rank (``topk.TieOrder``):
whatever the cache holds, the answer must be exactly the plain definition's (every catalog
asset scored, sorted by score desc, popularity desc, id asc; cold start filled by
popularity), through catalog changes, new and mutated popularities and exclusions."""

from __future__ import annotations

import random

import pytest

from services.shared import topk
from services.shared.ranking import (
    Catalog,
    ModelConfig,
    Popularity,
    Recommendation,
    UserState,
    recommend,
)


def reference(state: UserState, catalog: Catalog, popularity: Popularity,
              k: int) -> list[Recommendation]:
    excluded = {asset for _, asset in state.recent}
    weights = state.weights
    scored = []
    for asset in catalog:
        score = 0.0
        for label, weight in weights.items():  # the same order of adds as recommend's
            if label in catalog[asset]:
                score += weight
        if asset not in excluded and score > 0:
            scored.append((score, asset))
    scored.sort(key=lambda sa: (-sa[0], -popularity.count(sa[1]), sa[1]))
    out = [Recommendation(a, s, sorted((lb for lb in catalog[a] if lb in weights),
                                       key=lambda lb: (-weights[lb], lb)))
           for s, a in scored[:k]]
    taken = excluded | {r.asset_id for r in out}
    rest = sorted((a for a in catalog if a not in taken),
                  key=lambda a: (-popularity.count(a), a))
    return out + [Recommendation(a, 0.0, []) for a in rest[:k - len(out)]]


@pytest.fixture(params=["tuples", "ranks", "ranks, rebuilt on every growth"])
def tie_paths(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Small catalogs' ties go by tuples; also force them through the ranks, with and
    without the tolerance for assets added since a rank was built."""
    if request.param != "tuples":
        monkeypatch.setattr(topk, "TUPLES_UP_TO", 0)
    if request.param == "ranks, rebuilt on every growth":
        monkeypatch.setattr(topk, "GROWTH_TOLERATED", 0)


def test_recommend_is_the_reference_through_catalog_and_popularity_changes(
        tie_paths: None) -> None:
    rng = random.Random(3)
    for _ in range(40):
        labels = [f"l{i}" for i in range(rng.randint(1, 6))]
        ids = [f"a{i}" for i in range(rng.randint(1, 400))]  # "a10" < "a9": id order != slot's
        rng.shuffle(ids)
        catalog = Catalog({a: rng.sample(labels, rng.randint(1, min(2, len(labels))))
                           for a in ids[:rng.randint(0, len(ids))]})
        popularity = Popularity()
        for _ in range(25):
            change = rng.random()
            if change < 0.15:  # a new popularity, some of it for assets not (yet) there
                popularity = Popularity({a: rng.randint(1, 4)
                                         for a in rng.sample(ids, rng.randint(0, len(ids)))})
            elif change < 0.3:  # counted in place
                popularity.add(rng.choice(ids), rng.randint(-3, 3))
            elif change < 0.4:
                popularity = Popularity()
            for _ in range(rng.randint(0, 8)):  # upserts (new assets too), relabels, deletes
                asset = rng.choice(ids)
                if rng.random() < 0.3:
                    catalog.delete(asset)
                else:
                    catalog.upsert(asset, rng.sample(labels, rng.randint(1, len(labels))))
            state = UserState(
                ref_ts=0.0,
                weights={lb: rng.choice([0.5, 1.0, 1.0, 2.0])  # few values: big ties
                         for lb in rng.sample(labels, rng.randint(0, len(labels)))},
                recent=[(0.0, rng.choice(ids)) for _ in range(rng.randint(0, 10))])
            k = rng.choice([1, 2, 5, 20, 50, rng.randint(1, 500)])
            got = recommend(state, ModelConfig(top_k=k), catalog, popularity)
            assert got == reference(state, catalog, popularity, k)


def test_the_tie_order_cache_is_bounded_and_shared_by_empty_popularities() -> None:
    catalog = Catalog({f"a{i}": ["x"] for i in range(500)})
    state = UserState(ref_ts=0.0, weights={"x": 1.0})
    for _ in range(3):
        recommend(state, ModelConfig(top_k=5), catalog, Popularity())  # one rank for them all
    assert len(catalog._ties._ranks) == 1
    for n in range(10):
        popularity = Popularity({f"a{i}": n + 1 for i in range(0, 500, 7)})
        got = recommend(state, ModelConfig(top_k=5), catalog, popularity)
        assert got == reference(state, catalog, popularity, 5)
    assert len(catalog._ties._ranks) == topk.POPULARITIES_KEPT
