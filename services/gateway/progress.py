"""How far the consumer groups have got: the sink's (stored) and the agents' (user state).

``wait=stored`` answers once ClickHouse holds every event of a batch. The sink commits a
message's offset only after its rows are in ClickHouse, so "stored" is "the sink's group
has committed past the batch's messages". The gateway reads those committed offsets from
Kafka (OffsetFetch, polled on a thread while anyone waits), never from the sink itself:
it works the same in ``sluice up`` and with the roles apart. The agents' group works the
same way for receipts of ``wait=user`` (Faust commits after the state is published).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Mapping
from functools import partial

from confluent_kafka import Consumer, KafkaException, TopicPartition

from services.gateway.futures import fail_unavailable, resolve
from services.shared.lag import offsets_reader
from services.shared.publish import BrokerUnavailable
from services.shared.settings import Settings

log = logging.getLogger(__name__)

Positions = Mapping[int, int]  # partition -> the highest offset that must be passed
_Waiter = tuple[str, dict[int, int], asyncio.Future[None], asyncio.AbstractEventLoop]


def reached(committed: Mapping[int, int], targets: Positions) -> bool:
    """A committed offset is the next one to read: it passes ``offset`` when greater."""
    return all(committed.get(p, -1) > offset for p, offset in targets.items())


class GroupProgress:
    """Committed offsets of the sink's and the agents' groups on the events topic."""

    POLL_S = 0.05

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topic = settings.topic_events
        self.groups = {"stored": settings.sink_group, "user": settings.agents_app_id}
        self._consumers: dict[str, Consumer] = {}
        self._waiters: list[_Waiter] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._running = True
        self.abandoned: str | None = None
        self._thread = threading.Thread(target=self._follow, name="group-progress", daemon=True)

    def start(self) -> GroupProgress:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._running = False
        self._wake.set()
        self._thread.join(5)
        for consumer in self._consumers.values():
            consumer.close()

    def abandon(self, reason: str) -> None:
        """The broker died with what it held (the embedded one): what is waited for may never
        be stored, so every waiter gets BrokerUnavailable (503: retry), never a 200 or 202."""
        with self._lock:
            self.abandoned = reason
            waiters = list(self._waiters)
        for _level, _targets, future, loop in waiters:
            loop.call_soon_threadsafe(fail_unavailable, future, reason)

    def committed(self, level: str, partitions: list[int], timeout_s: float = 5.0) -> dict[int, int]:
        """partition -> the group's committed offset (-1: none yet). Blocking."""
        consumer = self.reader(level)
        found = consumer.committed(
            [TopicPartition(self.topic, p) for p in partitions], timeout=timeout_s)
        return {tp.partition: tp.offset if tp.error is None else -1 for tp in found}

    async def wait(self, level: str, targets: Positions, timeout_s: float) -> bool:
        """Wait until ``level``'s group committed past every target; False on timeout."""
        if not targets:
            return True
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self.abandoned is not None:
                raise BrokerUnavailable(self.abandoned)
            self._waiters.append((level, dict(targets), future, loop))
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout_s)
            return True
        except TimeoutError:
            return False
        finally:
            with self._lock:
                self._waiters = [w for w in self._waiters if w[2] is not future]

    def readers(self) -> dict[str, Callable[[], Consumer]]:
        """group -> its offsets reader, for the gateway's backpressure."""
        return {group: partial(self.reader, level) for level, group in self.groups.items()}

    def reader(self, level: str) -> Consumer:
        """The offsets reader of ``level``'s group (made once; backpressure reads its lag
        through the same one)."""
        with self._lock:
            consumer = self._consumers.get(level)
            if consumer is None:  # never subscribes: it only reads the group's offsets
                consumer = self._consumers[level] = offsets_reader(
                    self.settings, self.groups[level])
            return consumer

    def _follow(self) -> None:
        while self._running:
            with self._lock:
                waiters = list(self._waiters)
            if not waiters:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            for level in {w[0] for w in waiters}:
                partitions = sorted({p for w in waiters if w[0] == level for p in w[1]})
                try:
                    committed = self.committed(level, partitions, timeout_s=2.0)
                except KafkaException as exc:
                    log.debug("progress: cannot read %s's offsets: %s", level, exc)
                    continue
                for waiter_level, targets, future, loop in waiters:
                    if waiter_level == level and reached(committed, targets):
                        loop.call_soon_threadsafe(resolve, future)
            self._wake.wait(self.POLL_S)
            self._wake.clear()
