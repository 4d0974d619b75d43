"""Source partitions a worker owns but no longer moves: found, shown and healed.

A partition is stalled when this worker owns and serves it, the group's committed offset
for it is behind the partition's end, and that offset has not moved for
``SLUICE_AGENTS_STALL_S`` (a worker commits every SLUICE_AGENTS_COMMIT_INTERVAL_S while it acks). Two ways to get there
are known: Faust skipping records it took for a compaction gap (offsets that are then never
acked, so never committed past; see streams.rebalance), and a member's late commit of an
older offset after the owner had committed further (Tansu takes one with a current
member's id and generation; whether it refuses an older generation's, as Kafka does, was
not checked). Either way the partition's lag never drains and a restart would re-read
from there.

The heal is always safe: seek the partition back to its committed offset, with Faust's
bookkeeping of it reset, so everything after it is read again. Messages this worker applied
already are acked without being applied again (streams.rebalance.SourceOrder), the rest are
applied, and the acks commit past the stall. Shown on ``/readyz`` (503), ``/stats``,
``sluice_agents_stalled_partitions`` and ``sluice status``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import KafkaException
from faust.types import TP

from services.shared.lag import PartitionLag, group_lag, offsets_reader
from services.shared.metrics import STALL_HEALS, STALLED_PARTITIONS
from services.shared.settings import Settings
from streams.reads import owned_partitions
from streams.rebalance import assignment

log = logging.getLogger(__name__)


class StallClock:
    """When each partition's committed offset last moved: pure bookkeeping, no Kafka."""

    def __init__(self, stall_s: float) -> None:
        self.stall_s = stall_s
        self._since: dict[int, tuple[int, float]] = {}  # partition -> (committed, seen since)

    def observe(self, lags: Iterable[PartitionLag], owned: frozenset[int] | set[int],
                now: float) -> list[PartitionLag]:
        """The owned partitions with lag whose committed offset has not moved for stall_s."""
        stalled = []
        seen = set()
        for lag in lags:
            if lag.partition not in owned or lag.lag <= 0:
                continue
            seen.add(lag.partition)
            committed, since = self._since.get(lag.partition, (lag.committed, now))
            if committed != lag.committed:
                since = now
            self._since[lag.partition] = (lag.committed, since)
            if now - since >= self.stall_s:
                stalled.append(lag)
        for partition in set(self._since) - seen:
            del self._since[partition]
        return stalled

    def restart(self, partition: int | None = None) -> None:
        """Forget the clocks: of one partition (just healed), or all (a rebalance)."""
        if partition is None:
            self._since.clear()
        else:
            self._since.pop(partition, None)


class Stalls:
    """Checks the worker's owned partitions every ``stall_s / 4`` (a Faust timer)."""

    def __init__(self, app: Any, settings: Settings, serving: Callable[[], frozenset[int]],
                 healed: Callable[[int, int, int], None] | None = None) -> None:
        self.app, self.settings, self._serving = app, settings, serving
        self._healed = healed  # (assignment, partition, offset) after a heal's seek
        self.topic = settings.topic_events
        self.clock = StallClock(settings.agents_stall_s)
        self.stalled: frozenset[int] = frozenset()
        self.heals = 0
        self._reader: Any = None

    def _lags(self) -> list[PartitionLag]:
        if self._reader is None:
            self._reader = offsets_reader(self.settings, self.settings.agents_app_id)
        return group_lag(self._reader, self.settings.agents_app_id, [self.topic], timeout_s=5)

    async def check(self) -> None:
        if self.app.rebalancing:  # offsets move hands now; every clock starts again after
            self.clock.restart()
            self.stalled = frozenset()
            STALLED_PARTITIONS.set(0)
            return
        try:
            lags = await asyncio.to_thread(self._lags)
        except KafkaException as exc:  # a broker that does not answer: nothing to judge by
            log.debug("agents: could not read the group's offsets: %r", exc)
            return
        if self.app.rebalancing:  # began while the offsets were read
            return
        # the consumer's own assignment too: the assignor's can still name a partition the
        # last rebalance moved away
        assigned = {tp.partition for tp in self.app.consumer.assignment()
                    if tp.topic == self.topic}
        owned = self._serving() & owned_partitions(self.app, self.topic) & assigned
        stalled = self.clock.observe(lags, owned, time.monotonic())
        self.stalled = frozenset(lag.partition for lag in stalled)
        STALLED_PARTITIONS.set(len(stalled))
        for lag in stalled:
            try:
                await self.heal(lag)
            except Exception as exc:  # noqa: BLE001 - e.g. the partition just moved: a timer
                # that raised would crash the worker; the next check decides again
                log.warning("agents: partition %d not healed: %r", lag.partition, exc)

    async def heal(self, lag: PartitionLag) -> None:
        # from the committed offset (or the partition's start when nothing was committed)
        offset = lag.committed if lag.committed >= 0 else lag.end - lag.lag
        consumer = self.app.consumer
        tp = TP(self.topic, lag.partition)
        if tp not in consumer.assignment():
            return
        log.warning("agents: partition %d of %s stalled at committed offset %d of %d for "
                    "%.0fs: reading it again from there", lag.partition, self.topic,
                    lag.committed, lag.end, self.settings.agents_stall_s)
        # Faust's bookkeeping of the partition (private; faust-streaming<0.16 is pinned):
        # acks from the committed offset on count again, no old gap or ack is carried over
        consumer._committed_offset[tp] = offset or None
        for name in ("_acked", "_acked_index", "_gap"):
            getattr(consumer, name).pop(tp, None)
        current = assignment()
        await consumer.seek(tp, offset)  # also sets Faust's read offset there
        if self._healed is not None:
            self._healed(current, lag.partition, offset)
        self.heals += 1
        STALL_HEALS.inc()
        self.clock.restart(lag.partition)
