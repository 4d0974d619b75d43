"""The agent's check that a partition's messages continue without a hole (SourceOrder)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from faust.types import TP

from streams.rebalance import SourceOrder, not_done

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
    consumer_generation_id: int = 1


def events(partition: int, *offsets: int) -> list[Event]:
    return [Event(Message(partition, o)) for o in offsets]


def offsets(admitted: list[Any]) -> list[tuple[int, int]]:
    return [(e.message.partition, e.message.offset) for e in admitted]


def order_of(app: App, patience: int = 100) -> SourceOrder:
    return SourceOrder(app, patience=patience, current=lambda: app.consumer_generation_id)


def order_with(consumer: Consumer | None = None, patience: int = 100) -> SourceOrder:
    return order_of(App(consumer or Consumer()), patience)


def test_contiguous_messages_from_the_baseline_are_all_applied() -> None:
    order = order_with()
    order.baseline(1, 0, 10)  # the rebalance's seek to the committed offset
    order.baseline(1, 1, None)  # nothing committed: from the first that comes
    admitted, seeks = order.admit(events(0, 10, 11, 12) + events(1, 5, 6))
    assert offsets(admitted) == [(0, 10), (0, 11), (0, 12), (1, 5), (1, 6)] and not seeks
    admitted, seeks = order.admit(events(0, 13) + events(1, 7))
    assert offsets(admitted) == [(0, 13), (1, 7)] and not seeks and order.holes == 0


def test_nothing_is_applied_before_the_generations_seek_and_never_counts_as_done() -> None:
    app = App(Consumer())
    order = order_of(app)
    order.baseline(1, 0, 10)
    app.consumer_generation_id = 2  # a rebalance: its seek has not come yet
    early = events(0, 12, 13)  # fetched between the assignment and the seek
    admitted, seeks = order.admit(early)
    assert admitted == [] and not seeks and all(e.message.acked for e in early)
    order.baseline(2, 0, 11)
    admitted, seeks = order.admit(events(0, 11, 12, 13))
    assert offsets(admitted) == [(0, 11), (0, 12), (0, 13)] and not seeks


def test_after_a_hole_nothing_is_applied_until_the_hole_is_read_again() -> None:
    consumer = Consumer()
    order = order_with(consumer)
    order.baseline(1, 0, 0)
    order.baseline(1, 1, 3)
    order.admit(events(0, 0, 1, 2))
    after = events(0, 5, 6)
    admitted, seeks = order.admit(after + events(1, 3))
    assert offsets(admitted) == [(1, 3)] and seeks == {TP(TOPIC, 0): 3}
    assert all(e.message.acked for e in after) and order.holes == 1
    asyncio.run(order.seek_back(seeks))
    assert consumer.sought == [(TP(TOPIC, 0), 3)]
    admitted, seeks = order.admit(events(0, 7))  # fetched before the seek: skipped
    assert admitted == [] and not seeks, "one seek back per hole"
    admitted, seeks = order.admit(events(0, 3, 4, 5, 6, 7))
    assert offsets(admitted) == [(0, o) for o in range(3, 8)] and not seeks


def test_messages_queued_before_a_fetch_level_seek_are_still_applied() -> None:
    """The fetch guard seeks a partition back to the offset after the last record it
    passed on; records before that offset may still wait for the agent. They continue
    the partition: dropping them lost 100 messages of a partition in a CI run."""
    order = order_with()
    order.baseline(1, 0, 100)
    order.admit(events(0, *range(100, 200)))
    # the guard passed 200-299 on (queued for the agent), then saw a fetch from 400 and
    # sought the partition back to 300
    admitted, seeks = order.admit(events(0, *range(200, 300)))
    assert offsets(admitted) == [(0, o) for o in range(200, 300)] and not seeks
    admitted, seeks = order.admit(events(0, *range(300, 310)))
    assert len(admitted) == 10 and not seeks and order.holes == 0


def test_a_seek_back_to_an_older_offset_acks_what_was_applied_without_applying_it() -> None:
    order = order_with()
    order.baseline(1, 0, 0)
    order.admit(events(0, 0, 1, 2, 3, 4, 5))
    again = events(0, 1, 2, 3, 4, 5)  # a stalled partition healed from its committed offset
    admitted, seeks = order.admit(again + events(0, 6))
    assert offsets(admitted) == [(0, 6)] and not seeks
    assert not any(e.message.acked for e in again), "Faust acks them: the commit moves on"


def test_a_seek_whose_offset_never_comes_is_made_again() -> None:
    order = order_with(patience=3)
    order.baseline(1, 0, 10)
    admitted, seeks = order.admit(events(0, 20))
    assert admitted == [] and seeks == {TP(TOPIC, 0): 10}
    admitted, seeks = order.admit(events(0, 21, 22, 23))
    assert admitted == [] and not seeks
    admitted, seeks = order.admit(events(0, 24))
    assert admitted == [] and seeks == {TP(TOPIC, 0): 10}, "never goes on past a hole"


def test_a_seek_whose_offset_does_not_come_in_a_second_is_made_again_without_messages() -> None:
    """No message comes to count patience by (a new generation of `sluice up`'s agents,
    events published before they joined, then none): the seek is made again by time."""
    order = order_with(patience=1000)
    order.baseline(1, 0, 0)
    order.baseline(1, 1, 0)
    _, seeks = order.admit(events(0, 61) + events(1, 5))
    asyncio.run(order.seek_back(seeks))
    sought_at = max(at for _, _, at, _ in order.sought.values())
    assert order.overdue(1.0, now=sought_at - 0.5) == {}
    assert order.overdue(1.0, now=sought_at + 1.0) == {TP(TOPIC, 0): 0, TP(TOPIC, 1): 0}
    admitted, _ = order.admit(events(1, 0, 1))  # partition 1's seek came
    assert offsets(admitted) == [(1, 0), (1, 1)]
    late = order.overdue(1.0, now=sought_at + 5)
    assert late == {TP(TOPIC, 0): 0}
    asyncio.run(order.seek_back(late))  # made again: the next after twice as long
    again_at = order.sought[0][2]
    assert order.overdue(1.0, now=again_at + 1.5) == {}
    assert order.overdue(1.0, now=again_at + 2.0) == {TP(TOPIC, 0): 0}


def test_an_overdue_seek_of_an_earlier_assignment_is_not_made_again() -> None:
    app = App(Consumer())
    order = order_of(app)
    order.baseline(1, 0, 0)
    _, seeks = order.admit(events(0, 9))
    asyncio.run(order.seek_back(seeks))
    app.consumer_generation_id = 2  # a rebalance: the new assignment's seek decides
    order.baseline(2, 0, 4)
    assert order.overdue(0.0, now=order.sought[0][2] + 10) == {} and not order.sought


def test_a_failed_batch_is_due_again() -> None:
    order = order_with()
    order.baseline(1, 0, 0)
    batch = events(0, 0, 1, 2, 3)
    admitted, _ = order.admit(batch)
    order.rewind(admitted[2:])  # runs of 0-1 applied, then the publish failed
    admitted, seeks = order.admit(events(0, 4))
    assert admitted == [] and seeks == {TP(TOPIC, 0): 2}
    admitted, seeks = order.admit(events(0, 2, 3, 4))
    assert offsets(admitted) == [(0, 2), (0, 3), (0, 4)] and not seeks


def test_a_failed_batch_is_never_counted_as_done_from_its_first_unapplied_message() -> None:
    fetched = events(0, 5, 6, 7) + events(1, 8, 9)
    not_done(fetched, [fetched[1], fetched[4]])  # 6 and 9 not applied
    assert [e.message.acked for e in fetched] == [False, True, True, False, True]


def test_a_heal_starts_a_partition_only_when_its_generation_has_no_baseline() -> None:
    order = order_with()
    order.healed(1, 0, 7)  # the generation's own seek never reached the agent
    admitted, _ = order.admit(events(0, 7, 8))
    assert offsets(admitted) == [(0, 7), (0, 8)]
    order.healed(1, 0, 3)  # a later heal moves nothing: 3-8 are acked again as they come
    admitted, seeks = order.admit(events(0, 3, 4, 5, 6, 7, 8, 9))
    assert offsets(admitted) == [(0, 9)] and not seeks
