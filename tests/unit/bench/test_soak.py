"""The soak section's arithmetic: quantiles from bucket deltas, and the flatness verdict."""

from __future__ import annotations

from bench.soak import per_minute, quantile, verdict


def test_quantile_is_the_upper_bound_of_the_bucket_between_two_scrapes() -> None:
    before = {0.1: 10.0, 0.5: 10.0, 1.0: 10.0, float("inf"): 10.0}
    after = {0.1: 60.0, 0.5: 108.0, 1.0: 110.0, float("inf"): 110.0}  # 50, 48, 2 in between
    assert quantile(before, after, 0.5) == 0.1
    assert quantile(before, after, 0.99) == 1.0
    assert quantile(after, after, 0.5) is None  # nothing counted


def samples(mib_per_s: float, seconds: int = 400) -> list[dict]:
    return [{"t": float(t), "rss": {"tansu": 100 + mib_per_s * t, "up": 300.0},
             "m": {"sluice_events_accepted_total": 1000.0 * t}} for t in range(seconds)]


def test_a_growing_role_is_not_flat_and_a_steady_one_is() -> None:
    v = verdict(samples(0.1))  # 360 MiB an hour on ~130 MiB
    assert v["rss tansu"]["flat"] is False and round(v["rss tansu"]["mib_per_hour"]) == 360
    assert v["rss up"] == {"mib": 300.0, "mib_per_hour": 0.0, "flat": True}


def test_per_minute_rates() -> None:
    rows = per_minute(samples(0.0, 180))
    assert [r["minute"] for r in rows] == [1, 2, 3]
    assert all(r["acked_per_s"] == 1000 for r in rows)
