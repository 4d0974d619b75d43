"""The soak section's arithmetic: quantiles from bucket deltas, and the flatness verdict."""

from __future__ import annotations

from bench.soak import per_minute, quantile, roll_waits, totals, verdict


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


def test_rates_and_totals_carry_over_a_rolls_restarted_worker_and_its_gap() -> None:
    # the agents' counter restarts at 0 with the worker a roll starts; 3 s nobody answered
    rows = []
    for t in range(120):
        m: dict = {"sluice_events_accepted_total": 1000.0 * t,
                   "sluice_agents_events_total": 1000.0 * (t if t < 60 else t - 63),
                   "sluice_embedded_broker_rolls_total": 0.0 if t < 60 else 1.0}
        rows.append({"t": float(t), "rss": {"tansu": 30.0 if t < 60 else 20.0},
                     "m": {} if 60 <= t < 63 else m})
    by_minute = per_minute(rows)
    assert [r["rolls"] for r in by_minute] == [0, 1]
    assert by_minute[1]["applied_per_s"] > 0  # not a negative rate from the reset
    total = totals(rows)
    assert total["acked"] == 119_000
    assert total["applied"] == 59_000 + 56_000  # before the roll, and the new worker's
    assert total["rolls"] == 1 and total["tansu_max_mib"] == 30.0


def test_a_roll_whose_gap_straddles_a_minute_counts_in_that_minute() -> None:
    # the gateway does not answer from t=58 to t=64 (the agents do): the roll happened then
    rows = []
    for t in range(120):
        gateway = {"sluice_events_accepted_total": 1000.0 * t,
                   "sluice_embedded_broker_rolls_total": 0.0 if t < 60 else 1.0}
        m = {"sluice_agents_events_total": 1000.0 * t} | ({} if 58 <= t < 64 else gateway)
        rows.append({"t": float(t), "rss": {}, "m": m})
    assert [r["rolls"] for r in per_minute(rows)] == [0, 1]
    # the gap's events count in the minute that saw them answered, not lost
    assert [round(r["acked_per_s"], -2) for r in per_minute(rows)] == [1000, 1000]


def test_each_rolls_wait_is_read_from_sluice_ups_log() -> None:
    log = (
        "2026-12-06 08:30:26,027 WARNING services.broker_roll rolled the embedded broker in "
        "19.4 s: requests went to the next one 0.9 s in, waiting for none of it; waits for "
        "user state held 17.2 s (the old agents caught up in 1.3 s, the next joined 15.9 s "
        "after); reads answered throughout\nunrelated line, waits for user state held 9 s\n"
        "... rolled the embedded broker in 3.3 s: requests went to the next one 0.7 s in, "
        "waiting for none of it; waits for user state held 1.5 s (the old agents ...)\n")
    assert roll_waits(log) == [17.2, 1.5]
