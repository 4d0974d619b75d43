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
is always such a jump. The guard keeps, per source partition, the offset the next record
must have: the committed offset after each seek (Faust seeks every partition there at the
end of every rebalance), then one past each record delivered. A fetch whose records of a
partition start past that offset is not delivered, and the partition is sought back to it.
Records before it (read again after a seek) go on: Faust drops what it delivered already,
and the agent skips what a user's record says it applied. Changelog partitions (compacted,
read by recovery) are not checked.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from faust.transport.drivers.aiokafka import Consumer  # the class the app's consumer is
from faust.types import TP

log = logging.getLogger(__name__)

_TOPICS: set[str] = set()
# called with (partition, offset) after every seek of a source partition: the offset its
# next record must have (SourceOrder starts there)
SEEK_LISTENERS: list[Callable[[int, int], None]] = []


def _sought(tp: Any, offset: int) -> None:
    for listener in SEEK_LISTENERS:
        listener(tp.partition, offset)


def keep_source_offsets_contiguous(topic: str) -> None:
    """Install the guard on Faust's consumer for ``topic`` (once per process)."""
    first = not _TOPICS
    _TOPICS.add(topic)
    if not first:
        return
    fetch = Consumer._wait_next_records
    seek_to_committed = Consumer.seek_to_committed
    seek = Consumer.seek

    def _next(self: Consumer) -> dict[TP, int]:
        expected: dict[TP, int] | None = getattr(self, "_sluice_next", None)
        if expected is None:
            expected = self._sluice_next = {}  # type: ignore[attr-defined]
        return expected

    async def _seek_to_committed(self: Consumer) -> Mapping[TP, int]:
        committed = await seek_to_committed(self)
        expected = _next(self)
        expected.clear()  # a partition with nothing committed: its first record sets it
        for tp, offset in committed.items():
            if tp.topic in _TOPICS and offset is not None and offset >= 0:
                expected[tp] = offset
                _sought(tp, offset)
        return committed

    async def _seek(self: Consumer, partition: TP, offset: int) -> None:
        if partition.topic in _TOPICS:  # first: a record at it may come right after the seek
            _next(self)[partition] = offset
            _sought(partition, offset)
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

    Consumer._wait_next_records = _wait_next_records  # type: ignore[method-assign,assignment]
    Consumer.seek_to_committed = _seek_to_committed  # type: ignore[method-assign,assignment]
    Consumer.seek = _seek  # type: ignore[method-assign,assignment]


class SourceOrder:
    """The agent's own check, before it applies a batch: each partition's messages continue
    from the offset the last seek of it set, then one after the other. A user's record keeps
    only the last source offset it applied, so a message applied past a hole makes the
    hole's events count as applied for every user they share. After a seek, messages until
    the one at the sought offset are stale (fetched before it) and skipped; a message past
    the one after the last applied is a hole: it and what follows are skipped and the
    partition is sought back. Skipped messages are marked acked so that Faust never counts
    them as done (never commits past them); they are read again."""

    def __init__(self, app: Any, patience: int) -> None:
        self.app = app
        self.patience = patience  # stale messages skipped before the seek is made again
        self.last: dict[int, int] = {}  # partition -> last offset admitted
        self.resume: dict[int, int] = {}  # partition -> offset it was sought to, not seen yet
        self.skipped: dict[int, int] = {}
        self.holes = 0
        SEEK_LISTENERS.append(self.sought)

    def assigned(self, *_: Any, **__: Any) -> None:
        """A new assignment: what this worker saw of a partition before may be old (another
        worker may have gone on with it meanwhile); the rebalance's seek sets the start."""
        self.last.clear()

    def sought(self, partition: int, offset: int) -> None:
        self.resume[partition] = offset
        self.last.pop(partition, None)
        self.skipped[partition] = 0

    def admit(self, batch: list[Any]) -> tuple[list[Any], dict[Any, int]]:
        """The batch's events to apply, in order, and the partitions to seek back (tp ->
        offset)."""
        admitted, seeks = [], {}
        for event in batch:
            message = event.message
            partition, offset = message.partition, message.offset
            want = self.resume.get(partition)
            if want is not None and offset != want:
                message.acked = True  # stale: applied before, or read again after want
                self.skipped[partition] = self.skipped.get(partition, 0) + 1
                if self.skipped[partition] > self.patience:  # the seek got lost: again
                    log.warning("agents: partition %d did not bring offset %d after a seek; "
                                "seeking again", partition, want)
                    seeks[message.tp] = want
                continue
            if want is None and partition in self.last and offset > self.last[partition] + 1:
                self.holes += 1
                back = self.last[partition] + 1
                log.warning("agents: partition %d went from offset %d to %d: not applied, "
                            "read again from %d", partition, back - 1, offset, back)
                seeks[message.tp] = back
                self.resume[partition] = back  # until the seek itself says so
                message.acked = True
                continue
            self.resume.pop(partition, None)
            admitted.append(event)
            self.last[partition] = max(offset, self.last.get(partition, offset))
        return admitted, seeks

    async def seek_back(self, seeks: dict[Any, int]) -> None:
        consumer = self.app.consumer
        for tp, offset in seeks.items():
            consumer._gap.pop(tp, None)  # Faust's "compaction gaps": none in this topic
            try:
                await consumer.seek(tp, offset)
            except Exception as exc:  # noqa: BLE001 - no longer ours: the next seek decides
                log.info("agents: %s not sought back (%r)", tp, exc)
