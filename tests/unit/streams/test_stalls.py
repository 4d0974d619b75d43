"""When an owned partition counts as stalled: lag, and a committed offset that stays."""

from services.shared.lag import PartitionLag
from streams.stalls import StallClock


def lag(partition: int, committed: int, end: int) -> PartitionLag:
    return PartitionLag("g", "events", partition, committed, end, max(0, end - committed))


def test_a_partition_with_lag_and_a_committed_offset_that_stays_is_stalled() -> None:
    clock = StallClock(stall_s=10)
    assert clock.observe([lag(0, 5, 9)], {0}, now=0) == []
    assert clock.observe([lag(0, 5, 12)], {0}, now=9.9) == []
    assert [p.partition for p in clock.observe([lag(0, 5, 12)], {0}, now=10)] == [0]


def test_progress_no_lag_or_another_owner_restart_the_clock() -> None:
    clock = StallClock(stall_s=10)
    clock.observe([lag(0, 5, 9), lag(1, 3, 9), lag(2, 1, 9)], {0, 1, 2}, now=0)
    # 0 moved, 1 caught up, 2 went to another worker
    assert clock.observe([lag(0, 6, 9), lag(1, 9, 9), lag(2, 1, 9)], {0, 1}, now=11) == []
    assert clock.observe([lag(0, 6, 9), lag(1, 9, 12), lag(2, 1, 9)], {0, 1, 2}, now=20) == []
    stalled = clock.observe([lag(0, 6, 9), lag(1, 9, 12), lag(2, 1, 9)], {0, 1, 2}, now=31)
    assert [p.partition for p in stalled] == [0, 1, 2]


def test_a_healed_partition_gets_a_new_clock() -> None:
    clock = StallClock(stall_s=10)
    clock.observe([lag(0, 5, 9)], {0}, now=0)
    assert clock.observe([lag(0, 5, 9)], {0}, now=10)
    clock.restart(0)
    assert clock.observe([lag(0, 5, 9)], {0}, now=11) == []
    assert clock.observe([lag(0, 5, 9)], {0}, now=21)
