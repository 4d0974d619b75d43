"""Source records reach the agent in offset order, with no hole: what a rebalance broke.

Faust's consumer fetches in its own thread (``Consumer._wait_next_records``) and checks the
generation only after the fetch returns. A fetch that started before a rebalance and
returned after it delivers records from a position the rebalance has since replaced (the
worker kept the partition and was sought back to its committed offset), or leaves the
consumer's position past records that were never delivered. Either way Faust's drain loop
sees a jump in offsets and takes it for a compaction gap (``Consumer._add_gap``): the
skipped offsets count as done and the records, when read again, are dropped as already
read. Their events were never applied. Measured in tests/integration/test_agents_scaling.py
before this guard: 105 to 128 of 500 users short, or a partition whose committed offset
never moved again (faust-streaming#216 describes the race for apps without tables).

The events topic is not compacted and has no transaction markers, so a hole in its offsets
is always such a jump. Two checks keep it out:

- at the fetch (``_wait_next_records``), per source partition, the offset the next fetched
  record must have: the committed offset after each seek, then one past each record
  passed on. A fetch whose records of a partition start past it is not passed on, and the
  partition is sought back there;
- in the agent (:class:`SourceOrder`), before applying: the offset the next applied
  message must have, from the rebalance's seek to the committed offset (its *baseline*),
  then one past each message applied. A fetch-level seek back does not move it: messages
  fetched before that seek and still queued for the agent continue the partition and are
  applied (taking the seek's offset as the new start dropped them: 100 messages of one
  partition lost in a CI run, all their users 20 events short).

Changelog partitions (compacted, read by recovery) are not checked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.transport.drivers.aiokafka import Consumer  # the class the app's consumer is
from faust.types import TP

log = logging.getLogger(__name__)

_TOPICS: set[str] = set()
# called with (assignment, partition, offset) after the seek of every source partition at
# the end of a rebalance: where that assignment starts reading it (None: wherever the
# consumer is, nothing being committed and the log's start unknown)
BASELINE_LISTENERS: list[Callable[[int, int, int | None], None]] = []
_ASSIGNMENTS = [0]


def assignment() -> int:
    """The number of the group assignment this process is in (1, 2, ...): counted here
    rather than taken from the group's generation, which starts again at 0 with a new
    group (a broker that lost its state)."""
    return _ASSIGNMENTS[0]


def keep_source_offsets_contiguous(topic: str) -> None:
    """Install the guard on Faust's consumer for ``topic`` (once per process)."""
    first = not _TOPICS
    _TOPICS.add(topic)
    if not first:
        return
    fetch = Consumer._wait_next_records
    seek_to_committed = Consumer.seek_to_committed
    seek = Consumer.seek
    listener = faust_aiokafka.ConsumerRebalanceListener
    on_assigned = listener.on_partitions_assigned

    async def _on_partitions_assigned(self: Any, assigned: Any) -> None:
        _ASSIGNMENTS[0] += 1  # first: everything Faust does for this assignment comes after
        await on_assigned(self, assigned)

    async def _seek_in_thread(self: Consumer, partition: TP, offset: int) -> None:
        # Faust calls aiokafka's seek from the app's thread while the consumer's own thread
        # may be inside Fetcher.fetched_records, which then fails deleting the records the
        # seek dropped (KeyError: the fetcher crashed and the worker consumed nothing more)
        thread = self._thread

        async def seek_there() -> None:  # run by the consumer's thread
            thread.seek(partition, offset)

        await thread.call_thread(seek_there)

    def _next(self: Consumer) -> dict[TP, int]:
        expected: dict[TP, int] | None = getattr(self, "_sluice_next", None)
        if expected is None:
            expected = self._sluice_next = {}  # type: ignore[attr-defined]
        return expected

    async def _seek_to_committed(self: Consumer) -> Mapping[TP, int]:
        current = assignment()  # the assignment being sought
        committed = await seek_to_committed(self)
        expected = _next(self)
        expected.clear()
        for tp, offset in committed.items():
            if tp.topic not in _TOPICS:
                continue
            start = await _start(self, tp, offset)
            if start is not None:
                expected[tp] = start  # else: its first record sets it
            for baseline in BASELINE_LISTENERS:
                baseline(current, tp.partition, start)
        return committed

    async def _start(self: Consumer, tp: TP, committed: int | None) -> int | None:
        """Where the partition starts: its committed offset; with none (or 0, which
        aiokafka does not seek to) the consumer is sought to the log's start, so that a
        record passed on before this seek is read again after it."""
        if committed is not None and committed > 0:
            return committed
        try:
            start = 0 if committed == 0 else (await self.earliest_offsets(tp))[tp]
            await _seek(self, tp, start)
        except Exception as exc:  # noqa: BLE001 - the consumer's position stands
            log.info("agents: %s not sought to its start (%r)", tp, exc)
            return None
        return start

    async def _seek(self: Consumer, partition: TP, offset: int) -> None:
        if partition.topic in _TOPICS:  # first: a record at it may come right after the seek
            _next(self)[partition] = offset
        # Faust moves its read offset (records before it are dropped as read) after the seek
        # returns; the seek now waits for the consumer's thread, and the records it brings
        # back may come first: move it before
        self._read_offset[partition] = offset if offset else None
        await seek(self, partition, offset)

    async def _wait_next_records(self: Consumer, timeout: float) -> tuple[Any, Any]:
        records, active = await fetch(self, timeout)
        if not records:
            return records, active
        expected = _next(self)
        kept = {}
        for tp, batch in records.items():
            if tp.topic not in _TOPICS or not batch:
                kept[tp] = batch
                continue
            want = expected.get(tp, batch[0].offset)
            # records before it: read again after a seek (Faust drops what it delivered)
            if batch[0].offset > want:
                log.info("agents: %s fetched from offset %d, expected %d (a fetch across a "
                         "rebalance): not delivered, read again from %d",
                         tp, batch[0].offset, want, want)
                try:
                    await _seek(self, tp, want)
                except Exception as exc:  # noqa: BLE001 - no longer ours: the next seek decides
                    log.info("agents: %s not sought back (%r)", tp, exc)
                continue
            expected[tp] = max(want, batch[-1].offset + 1)
            kept[tp] = batch
        return kept, active

    listener.on_partitions_assigned = _on_partitions_assigned  # type: ignore[method-assign]
    Consumer._wait_next_records = _wait_next_records  # type: ignore[method-assign,assignment]
    Consumer.seek_to_committed = _seek_to_committed  # type: ignore[method-assign,assignment]
    Consumer.seek = _seek  # type: ignore[method-assign,assignment]
    Consumer._seek = _seek_in_thread  # type: ignore[method-assign,assignment]


def not_done(fetched: list[Any], unapplied: list[Any]) -> None:
    """Mark the messages of ``fetched`` from each partition's first unapplied offset on as
    acked, so that Faust's own ack (``take_events`` acks a batch even when the agent
    raised) never counts them and never commits past them: they are read again."""
    first: dict[int, int] = {}
    for event in unapplied:
        message = event.message
        first[message.partition] = min(message.offset, first.get(message.partition, message.offset))
    for event in fetched:
        message = event.message
        if message.partition in first and message.offset >= first[message.partition]:
            message.acked = True


class SourceOrder:
    """The agent's own check, before it applies a batch: each partition's messages are
    applied one after the other from the offset where the current assignment started it
    (its baseline, from the rebalance's seek to the committed offset). A user's record
    keeps only the last source offset it applied, so a message applied past a hole makes
    the hole's events count as applied for every user they share.

    - no baseline in the current assignment (messages fetched between the assignment and
      its seek): skipped; read again after the seek;
    - the offset due: applied;
    - an older one (read again after a stall's seek back to the committed offset): applied
      already in this assignment; not again, and acked as it was, so the commit moves;
    - a later one: a hole. It and what follows are skipped and the partition is sought
      back to the offset due (again if it has not come after ``patience`` messages, or
      within a second when no message comes to count them: :meth:`overdue`).

    Skipped messages are marked acked, so Faust never counts them as done (never commits
    past them); they are read again."""

    def __init__(self, app: Any, patience: int, current: Callable[[], int] = assignment) -> None:
        self.app = app
        self.patience = patience  # messages skipped before the seek back is made again
        self.current = current  # the assignment this worker is in
        # partition -> (assignment, offset due; None: the first that comes)
        self.due: dict[int, tuple[int, int | None]] = {}
        self.waiting: dict[int, int] = {}  # partition -> messages skipped since sought back
        # partition -> (tp, offset, when, seeks so far) of a seek back whose offset has not
        # come yet
        self.sought: dict[int, tuple[Any, int, float, int]] = {}
        self.holes = 0
        BASELINE_LISTENERS.append(self.baseline)

    def baseline(self, number: int, partition: int, offset: int | None) -> None:
        self.due[partition] = (number, offset)
        self.waiting.pop(partition, None)

    def healed(self, number: int, partition: int, offset: int) -> None:
        """A stalled partition was sought to its committed offset (streams.stalls): the
        baseline of an assignment whose own seek never reached the agent; one it has
        stays (what it applied since is acked again as it comes)."""
        since, _ = self.due.get(partition, (None, None))
        if since != number:
            self.baseline(number, partition, offset)

    def admit(self, batch: list[Any]) -> tuple[list[Any], dict[Any, int]]:
        """The batch's events to apply, in order, and the partitions to seek back (tp ->
        offset)."""
        number = self.current()
        admitted, seeks = [], {}
        for event in batch:
            message = event.message
            partition, offset = message.partition, message.offset
            since, due = self.due.get(partition, (None, None))
            if since != number:  # before this assignment's seek
                message.acked = True
                continue
            if due is None or offset == due:
                admitted.append(event)
                self.due[partition] = (number, offset + 1)
                self.waiting.pop(partition, None)
                if self.sought:
                    self.sought.pop(partition, None)
                continue
            if offset < due:
                continue  # applied in this assignment already: Faust acks it again
            message.acked = True
            waited = self.waiting.get(partition)
            if waited is None:
                self.holes += 1
                log.warning("agents: partition %d went from offset %d to %d: not applied, "
                            "read again from %d", partition, due - 1, offset, due)
            elif waited >= self.patience:  # the seek got lost: again
                log.warning("agents: partition %d did not bring offset %d after a seek; "
                            "seeking again", partition, due)
            else:
                self.waiting[partition] = waited + 1
                continue
            seeks[message.tp] = due
            self.waiting[partition] = 0
        return admitted, seeks

    def rewind(self, events: Iterable[Any]) -> None:
        """``events`` were admitted but not applied (the batch failed): due again."""
        number = self.current()
        for event in events:
            partition, offset = event.message.partition, event.message.offset
            since, due = self.due.get(partition, (None, None))
            if since == number and (due is None or offset < due):
                self.due[partition] = (number, offset)

    async def seek_back(self, seeks: dict[Any, int]) -> None:
        consumer = self.app.consumer
        for tp, offset in seeks.items():
            consumer._gap.pop(tp, None)  # Faust's "compaction gaps": none in this topic
            _, before, _, made = self.sought.get(tp.partition, (tp, None, 0.0, 0))
            self.sought[tp.partition] = (tp, offset, time.monotonic(),
                                         made + 1 if before == offset else 1)
            try:
                await consumer.seek(tp, offset)
            except Exception as exc:  # noqa: BLE001 - no longer ours: the next seek decides
                log.info("agents: %s not sought back (%r)", tp, exc)

    def overdue(self, after_s: float, now: float | None = None) -> dict[Any, int]:
        """The seeks back to make again: their offset has not come ``after_s`` after the
        seek (twice that after a second seek, and so on: a fetch slower than that, on a
        starved box, is not cut short again and again), in the same assignment. Counting
        skipped messages (``patience``) misses a seek that got lost when no message
        follows: the partition then waited for the stall heal (streams.stalls), 20 s, as a
        new generation of `sluice up`'s agents did with events published before they
        joined."""
        now = time.monotonic() if now is None else now
        number, late = self.current(), {}
        for partition, (tp, offset, at, seeks) in list(self.sought.items()):
            since, due = self.due.get(partition, (None, None))
            if since != number or due != offset:
                del self.sought[partition]  # moot: another assignment, or it came
            elif now - at >= after_s * 2 ** (seeks - 1):
                late[tp] = offset
        return late
