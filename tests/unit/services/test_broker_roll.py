"""When `sluice up` rolls its embedded broker (services.broker_roll.roll_at)."""

from __future__ import annotations

from services.broker_roll import carried_users, roll_at
from services.shared.broker import free_port
from services.shared.settings import Settings

MIB = 2**20


def test_rolls_at_its_share_of_the_bound() -> None:
    settings = Settings(embedded_broker_max_mb=1000, embedded_broker_roll_share=0.6)
    assert roll_at(settings) == 600 * MIB
    assert roll_at(settings, held_after_roll=20 * MIB) == 600 * MIB


def test_a_carried_state_near_the_share_does_not_roll_again_at_once() -> None:
    settings = Settings(embedded_broker_max_mb=1000, embedded_broker_roll_share=0.6)
    # the new broker holds 550 MiB right after the roll: the next waits for 200 MiB more
    assert roll_at(settings, held_after_roll=550 * MIB) == 750 * MIB


def test_never_without_a_share_or_a_bound() -> None:
    assert roll_at(Settings(embedded_broker_max_mb=1000, embedded_broker_roll_share=0)) is None
    assert roll_at(Settings(embedded_broker_max_mb=0, embedded_broker_roll_share=0.6)) is None


def test_an_old_changelog_that_cannot_be_read_makes_the_roll_rebuild_not_fail() -> None:
    """A broker that stops answering mid-read (seen with a million users under overload:
    `sluice up` died of it) gives no carried users: the roll rebuilds from ClickHouse."""
    gone = Settings(kafka_bootstrap=f"127.0.0.1:{free_port()}")  # nothing listens there
    assert carried_users(gone) is None
