"""When the gateway refuses events for lag or broker memory, and when it takes them again."""

from __future__ import annotations

from services.gateway.backpressure import Backpressure, Reading, judge
from services.shared.settings import Settings

MB = 2**20


def settings(**over: object) -> Settings:
    return Settings(max_lag_events=1000, embedded_broker_max_mb=100, **over)  # type: ignore[arg-type]


def test_lag_over_the_bound_refuses_and_names_the_group() -> None:
    reason = judge(Reading({"sink": 10, "agents": 1001}, None), settings(), refusing=False)
    assert reason is not None and "'agents'" in reason and "1,001" in reason


def test_lag_at_the_bound_does_not_refuse() -> None:
    assert judge(Reading({"sink": 1000, "agents": 0}, None), settings(), refusing=False) is None


def test_refusing_lets_go_only_under_80_percent() -> None:
    s = settings()
    assert judge(Reading({"agents": 900}, None), s, refusing=True) is not None
    assert judge(Reading({"agents": 801}, None), s, refusing=True) is not None
    assert judge(Reading({"agents": 800}, None), s, refusing=True) is None
    assert judge(Reading({"agents": 900}, None), s, refusing=False) is None  # not yet refusing


def test_no_running_group_or_bound_off_never_refuses() -> None:
    assert judge(Reading({}, None), settings(), refusing=True) is None
    assert judge(Reading({"agents": 10**9}, None), Settings(max_lag_events=0),
                 refusing=False) is None


def test_broker_memory_refuses_at_90_percent_and_stays() -> None:
    s = settings()
    assert judge(Reading({}, 89 * MB), s, refusing=False) is None
    reason = judge(Reading({}, 90 * MB), s, refusing=False)
    assert reason is not None and "SLUICE_EMBEDDED_BROKER_MAX_MB=100" in reason
    assert judge(Reading({}, 90 * MB), s, refusing=True) is not None
    assert judge(Reading({}, 10**12), Settings(embedded_broker_max_mb=0), refusing=False) is None


def test_lag_is_counted_in_events_per_published_message() -> None:
    bp = Backpressure(settings(), {})
    assert bp.events_per_message == 1.0  # nothing published: never refuses on a guess
    bp.published(100)
    bp.published(300)
    assert bp.events_per_message == 200.0
