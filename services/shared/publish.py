"""Events -> the ``events`` topic; returns only once the broker acked every one (acks=all).

One confluent-kafka producer per process. ``produce()`` only queues; a background
thread serves delivery reports (``poll``), counts them down per batch and wakes the
waiting request through the event loop when the last one arrives. A batch that is not
fully acked within ``publish_timeout_s`` raises :class:`BrokerUnavailable` (-> 503), so
the API never reports as accepted an event the broker does not hold. The producer is a
:class:`HealingProducer`: one the broker fenced (after a stall) is replaced on the poll
thread, and ``problem()`` says why this process cannot take events now (readiness).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from prometheus_client import Gauge

from services.shared.kafka import HealingProducer, producer_config
from services.shared.kafka_security import REFUSED
from services.shared.settings import Settings

PARTITIONS_TTL_S = 30.0  # how often a publisher re-reads partition counts (scale-out)


class BrokerUnavailable(Exception):
    """The broker did not acknowledge in time: the client should retry later."""


class _BatchAck:
    """Counts down one batch's delivery reports; called on the poll thread."""

    __slots__ = ("check", "error", "future", "loop", "pending", "positions")

    def __init__(self, pending: int, loop: asyncio.AbstractEventLoop,
                 check: Callable[[KafkaError | None], None]) -> None:
        self.pending = pending
        self.check = check
        self.error: KafkaError | None = None
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.positions: list[tuple[int, int]] = [(-1, -1)] * pending

    def delivered(self, index: int, err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            self.check(err)
            if self.error is None:
                self.error = err
        else:
            self.positions[index] = (msg.partition(), msg.offset())
        self.pending -= 1
        if self.pending == 0:
            self.loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        if not self.future.done():
            self.future.set_result(None)


class Publisher:
    def __init__(self, settings: Settings, queue_gauge: Gauge | None = None) -> None:
        """``queue_gauge``: set to the local queue's length on every poll (the gateway's)."""
        self.settings = settings
        self._queue_gauge = queue_gauge
        self.topic = settings.topic_events
        self.producer = HealingProducer(producer_config(settings), name=f"publisher({self.topic})")
        # the configured count until the poll thread read the topic's (it does so at once)
        self._partition_count = settings.events_partitions
        self._running = True
        self.abandoned: str | None = None
        self._poller = threading.Thread(target=self._poll, name="kafka-delivery", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        refreshed = float("-inf")
        while self._running:
            self.producer.poll(0.05)
            if self._queue_gauge is not None:
                self._queue_gauge.set(len(self.producer))
            if time.monotonic() - refreshed > PARTITIONS_TTL_S:
                self._read_partition_count()
                refreshed = time.monotonic()

    async def publish(
        self,
        messages: Sequence[tuple[bytes | None, bytes | None]],  # value None: a tombstone
        topic: str | None = None,
        headers: list[tuple[str, str | bytes | None]] | None = None,
        partitions: Sequence[int] | None = None,
    ) -> list[tuple[int, int]]:
        """Produce (key, value) pairs, to the given partitions or by key; return when all are
        acked, else raise BrokerUnavailable. Returns where each message landed, in order:
        (partition, offset)."""
        if self.abandoned is not None:
            raise BrokerUnavailable(self.abandoned)
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + self.settings.publish_timeout_s
        ack = _BatchAck(len(messages), loop, self.producer.check)
        if not messages:
            return []
        produce, delivered = self.producer.produce, ack.delivered
        topic = topic or self.topic
        i = 0
        while i < len(messages):
            key, value = messages[i]
            try:
                produce(topic, value, key, partition=-1 if partitions is None else partitions[i],
                        on_delivery=partial(delivered, i), headers=headers)
                i += 1
            except BufferError:
                # librdkafka's local queue is full: the broker is slow or gone.
                if time.monotonic() > deadline:
                    raise BrokerUnavailable("the broker is not keeping up") from None
                await asyncio.sleep(0.005)
            except KafkaException as exc:
                self.producer.check(exc.args[0] if exc.args else None)
                raise BrokerUnavailable(str(exc)) from None
        try:
            await asyncio.wait_for(ack.future, max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            raise BrokerUnavailable(
                f"the broker did not acknowledge within {self.settings.publish_timeout_s}s"
            ) from None
        if ack.error is not None:
            raise BrokerUnavailable(f"the broker refused the events: {ack.error.str()}")
        return ack.positions

    def partition_count(self) -> int:
        """Partitions of the events topic as the broker last said (re-read every
        PARTITIONS_TTL_S on the poll thread); until the broker answered, the configured count."""
        return self._partition_count

    def _read_partition_count(self) -> None:
        try:
            meta = self.producer.list_topics(self.topic, timeout=5).topics.get(self.topic)
        except KafkaException:
            return
        if meta is not None and meta.error is None and meta.partitions:
            self._partition_count = len(meta.partitions)

    def broker_reachable(self, timeout_s: float = 1.0) -> bool:
        """A metadata round trip to the broker (blocking: call it off the event loop)."""
        try:
            self.producer.list_topics(self.topic, timeout=timeout_s)
            return True
        except KafkaException:
            return False

    def problem(self) -> str | None:
        """Why this process cannot take events now, or None (blocking: a metadata round trip)."""
        if self.abandoned is not None:
            return self.abandoned
        if self.producer.broken is not None:
            return f"producer broken, being replaced: {self.producer.broken}"
        queued = len(self.producer)
        if queued > self.settings.producer_queue_bound:
            return (f"{queued} messages wait in the local queue for the broker "
                    f"(bound {self.settings.producer_queue_bound})")
        if not self.broker_reachable():
            return REFUSED.recent() or "broker unreachable"
        return None

    def abandon(self, reason: str) -> None:
        """The broker is gone for good (the embedded one died): fail what waits for its acks
        now (503), instead of at the publish timeout, and start over with a new producer."""
        self.abandoned = reason  # and what comes after, until this generation is closed
        self.producer.mark_broken(reason)

    def close(self, timeout_s: float = 10.0) -> None:
        """Deliver what is queued, then stop the poll thread. A broker that is gone gets no
        wait: its messages' requests were answered 503 already (nothing acked is dropped)."""
        if self.producer.flush(min(timeout_s, 1.0)) and self.broker_reachable(0.5):
            self.producer.flush(timeout_s)
        self._running = False
        self._poller.join(1.0)
        self.producer.close()
