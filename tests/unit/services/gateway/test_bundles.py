"""A request's events -> one message per partition (split by size), each user whole and in order."""

from __future__ import annotations

from services.gateway.ingest import Bundles
from services.shared.events import message_key, partition_for


def keys(n: int) -> list[bytes]:
    return [message_key("p", f"user-{i}") for i in range(n)]


def test_one_message_per_partition_holding_its_users_lines_in_order() -> None:
    bundles = Bundles(4, 1_000_000)
    for key in keys(100):
        bundles.add(key, [key + b"-1", key + b"-2"])
    assert sorted(bundles.partitions) == sorted(set(bundles.partitions))  # one per partition
    assert len(bundles.partitions) == 4  # 100 users cover all 4 partitions
    values = bundles.values()
    for key in keys(100):
        index = bundles.message_of[key]
        assert bundles.partitions[index] == partition_for(key, 4)
        lines = values[index].split(b"\n")
        assert lines.index(key + b"-1") + 1 == lines.index(key + b"-2")
    assert sum(v.count(b"\n") + 1 for v in values) == 200


def test_a_partition_too_big_for_one_message_is_split_and_waits_for_the_last_part() -> None:
    key = keys(1)[0]
    lines = [b"x" * 100 + str(i).encode() for i in range(30)]
    bundles = Bundles(3, 1000)
    bundles.add(key, lines)
    values = bundles.values()
    assert len(values) == 4  # ~102 bytes a line + newline: 9 lines per 1000 bytes
    assert all(len(v) <= 1000 for v in values)
    assert set(bundles.partitions) == {partition_for(key, 3)}
    assert b"\n".join(values).split(b"\n") == lines  # nothing lost, order kept
    assert bundles.message_of[key] == 3


def test_a_line_larger_than_the_limit_goes_alone() -> None:
    key = keys(1)[0]
    bundles = Bundles(1, 10)
    bundles.add(key, [b"a" * 50, b"b", b"c" * 50])
    assert bundles.values() == [b"a" * 50, b"b", b"c" * 50]
