"""The agent's check that a partition's messages continue without a hole (SourceOrder)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from faust.types import TP

from streams.rebalance import SourceOrder

TOPIC = "events"


@dataclass
class Message:
    partition: int
    offset: int
    acked: bool = False

    @property
    def tp(self) -> TP:
        return TP(TOPIC, self.partition)


@dataclass
class Event:
    message: Message


@dataclass
class Consumer:
    _committed_offset: dict[TP, int] = field(default_factory=dict)
    _gap: dict[TP, list[int]] = field(default_factory=dict)
    sought: list[tuple[TP, int]] = field(default_factory=list)

    async def seek(self, tp: TP, offset: int) -> None:
        self.sought.append((tp, offset))


@dataclass
class App:
    consumer: Consumer


def events(partition: int, *offsets: int) -> list[Event]:
    return [Event(Message(partition, o)) for o in offsets]


def offsets(admitted: list[Any]) -> list[tuple[int, int]]:
    return [(e.message.partition, e.message.offset) for e in admitted]


def order_with(consumer: Consumer | None = None, patience: int = 100) -> SourceOrder:
    return SourceOrder(App(consumer or Consumer()), patience=patience)


def test_contiguous_messages_from_the_sought_offset_are_all_applied() -> None:
    order = order_with()
    order.sought(0, 10)  # the rebalance's seek to the committed offset
    admitted, seeks = order.admit(events(0, 10, 11, 12) + events(1, 5, 6))  # 1: never sought
    assert offsets(admitted) == [(0, 10), (0, 11), (0, 12), (1, 5), (1, 6)] and not seeks
    admitted, seeks = order.admit(events(0, 13) + events(1, 7))
    assert offsets(admitted) == [(0, 13), (1, 7)] and not seeks and order.holes == 0


def test_records_fetched_before_a_seek_are_skipped_and_never_count_as_done() -> None:
    order = order_with()
    order.sought(0, 10)
    stale = events(0, 14, 15)  # from the position before the seek
    admitted, seeks = order.admit(stale + events(0, 10, 11))
    assert offsets(admitted) == [(0, 10), (0, 11)] and not seeks
    assert all(e.message.acked for e in stale), "Faust must not count them as done"


def test_after_a_hole_nothing_is_applied_until_the_hole_is_read_again() -> None:
    consumer = Consumer()
    order = order_with(consumer)
    order.admit(events(0, 0, 1, 2))
    after = events(0, 5, 6)
    admitted, seeks = order.admit(after + events(1, 3))
    assert offsets(admitted) == [(1, 3)] and seeks == {TP(TOPIC, 0): 3}
    assert all(e.message.acked for e in after) and order.holes == 1
    asyncio.run(order.seek_back(seeks))
    assert consumer.sought == [(TP(TOPIC, 0), 3)]
    admitted, _ = order.admit(events(0, 7))  # fetched before the seek: skipped
    assert admitted == []
    admitted, seeks = order.admit(events(0, 3, 4, 5, 6, 7))
    assert offsets(admitted) == [(0, o) for o in range(3, 8)] and not seeks


def test_a_seek_back_to_an_older_offset_reads_applied_messages_again_in_order() -> None:
    order = order_with()
    order.admit(events(0, 0, 1, 2, 3, 4, 5))
    order.sought(0, 1)  # a stalled partition healed from its committed offset
    admitted, seeks = order.admit(events(0, 6) + events(0, 1, 2, 3, 4, 5, 6))
    assert offsets(admitted) == [(0, o) for o in range(1, 7)] and not seeks


def test_a_seek_whose_offset_never_comes_is_made_again() -> None:
    order = order_with(patience=3)
    order.sought(0, 10)
    admitted, seeks = order.admit(events(0, 20, 21, 22))
    assert admitted == [] and not seeks
    admitted, seeks = order.admit(events(0, 23))
    assert admitted == [] and seeks == {TP(TOPIC, 0): 10}, "never goes on past a hole"


def test_a_new_assignment_forgets_what_was_seen_before_it() -> None:
    order = order_with()
    order.admit(events(0, 0, 1, 2))
    order.assigned()  # the partition went to another worker and came back
    admitted, seeks = order.admit(events(0, 40, 41))  # no seek seen: starts here
    assert offsets(admitted) == [(0, 40), (0, 41)] and not seeks and order.holes == 0
