"""``recommend`` picks its top k from the assets at or above the k-th best score only, and
breaks ties on plain tuples: it must give exactly what the plain definition gives (every
catalog asset scored, sorted by score desc, popularity desc, id asc)."""

from __future__ import annotations

import random

from services.shared.ranking import Catalog, ModelConfig, Popularity, UserState, recommend


def plain(state: UserState, catalog: Catalog, popularity: Popularity, k: int) -> list[str]:
    excluded = {asset for _, asset in state.recent}
    scored = []
    for asset in catalog:
        score = 0.0
        for label, weight in state.weights.items():
            if label in catalog[asset]:
                score += weight
        if asset not in excluded and score > 0:
            scored.append((score, asset))
    scored.sort(key=lambda sa: (-sa[0], -popularity.count(sa[1]), sa[1]))
    return [asset for _, asset in scored[:k]]


def test_the_top_k_is_the_plain_definitions_on_random_catalogs_with_many_ties() -> None:
    rng = random.Random(7)
    for _ in range(300):
        labels = [f"l{i}" for i in range(rng.randint(1, 12))]
        catalog = Catalog({f"a{i}": rng.sample(labels, rng.randint(1, min(3, len(labels))))
                           for i in range(rng.randint(1, 300))})
        state = UserState(
            ref_ts=0.0,
            weights={lb: rng.choice([0.5, 1.0, 2.0, 3.5])  # few values: many equal scores
                     for lb in rng.sample(labels, rng.randint(1, len(labels)))},
            recent=[(0.0, f"a{rng.randint(0, 50)}") for _ in range(rng.randint(0, 5))])
        popularity = Popularity({f"a{i}": rng.randint(0, 5) for i in range(0, 300, 3)})
        k = rng.randint(1, 30)
        got = recommend(state, ModelConfig(), catalog, popularity, k)
        assert [r.asset_id for r in got if r.score > 0] == plain(state, catalog, popularity, k)


def test_the_top_k_follows_the_catalog_as_assets_change_and_go() -> None:
    """Ranked, then assets relabelled, added and deleted, then ranked again: each label's
    postings are re-read after a change to it (nothing stale, nothing deleted comes back)."""
    rng = random.Random(11)
    labels = [f"l{i}" for i in range(6)]
    catalog = Catalog({f"a{i}": rng.sample(labels, 2) for i in range(200)})
    popularity = Popularity({f"a{i}": rng.randint(0, 3) for i in range(0, 260, 2)})
    state = UserState(ref_ts=0.0, weights={lb: rng.choice([1.0, 2.0]) for lb in labels[:4]},
                      recent=[(0.0, "a3")])
    for _ in range(100):
        for _ in range(rng.randint(1, 5)):
            asset = f"a{rng.randint(0, 259)}"
            if rng.random() < 0.3:
                catalog.delete(asset)
            else:
                catalog.upsert(asset, rng.sample(labels, rng.randint(1, 3)))
        got = recommend(state, ModelConfig(), catalog, popularity, 15)
        assert [r.asset_id for r in got if r.score > 0] == plain(state, catalog, popularity, 15)
