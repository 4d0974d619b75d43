"""A request's lines per partition -> its chunks (one message each), split by size
between lines."""

from __future__ import annotations

import orjson

from services.gateway.ingest import Bundles


def line(user: str, n: int, pad: int = 0) -> bytes:
    return orjson.dumps({"user_id": user, "n": n, "pad": "x" * pad})


def values(bundles: Bundles) -> list[bytes]:
    """Each chunk as the message it becomes; its size is that message's length."""
    joined = [b"\n".join(lines) for _, lines, _ in bundles.chunks]
    assert [size for _, _, size in bundles.chunks] == [len(v) for v in joined]
    return joined


def partitions(bundles: Bundles) -> list[int]:
    return [partition for partition, _, _ in bundles.chunks]


def test_one_message_per_partition_in_line_order() -> None:
    lines_of = {2: [line("a", 1), line("b", 1), line("a", 2)], 0: [line("c", 1)]}
    bundles = Bundles(lines_of, 1_000_000)
    assert partitions(bundles) == [2, 0]
    assert values(bundles) == [b"\n".join(lines_of[2]), line("c", 1)]
    assert (bundles.message_of("a", 2), bundles.message_of("b", 2), bundles.message_of("c", 0)) == (0, 0, 1)


def test_a_partition_too_big_for_one_message_is_split_and_users_wait_for_their_last_part() -> None:
    lines = [line(f"u{i % 3}", i, pad=100) for i in range(30)]  # ~130 bytes each: 7 per part
    bundles = Bundles({1: lines, 3: [line("z", 0)]}, 1000)
    assert partitions(bundles) == [1, 1, 1, 1, 1, 3]
    split = values(bundles)[:5]
    assert all(len(v) <= 1000 for v in split)
    assert b"\n".join(split).split(b"\n") == lines  # nothing lost, order kept
    # parts hold lines 0-6, 7-13, 14-20, 21-27, 28-29; u0 ends at 27, u1 at 28, u2 at 29
    assert {u: bundles.message_of(u, 1) for u in ("u0", "u1", "u2")} == {"u0": 3, "u1": 4, "u2": 4}
    assert bundles.message_of("z", 3) == 5


def test_a_user_whose_lines_end_early_waits_for_that_part_only() -> None:
    lines = [line("early", 0, pad=500), line("late", 1, pad=500), line("late", 2, pad=500)]
    bundles = Bundles({0: lines}, 600)
    assert len(values(bundles)) == 3
    assert (bundles.message_of("early", 0), bundles.message_of("late", 0)) == (0, 2)


def test_a_line_larger_than_the_limit_goes_alone() -> None:
    big, small = line("a", 1, pad=50), line("a", 2)
    bundles = Bundles({0: [big, small, big]}, 40)
    assert values(bundles) == [big, small, big]
    assert bundles.message_of("a", 0) == 2
