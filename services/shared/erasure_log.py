"""Erasures on the ``events`` topic, outside the gateway: published by ``sluice users
erase``, and checked (is the message still where its receipt says, have the groups passed
it) by the CLI and the gateway. The message and its receipt: services.shared.erasures.

Blocking calls, for a command or a gateway's worker thread.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from services.shared import erasures
from services.shared.erasures import Erasure, Receipt, Stored
from services.shared.events import partition_for
from services.shared.kafka import client_config, producer_config
from services.shared.lag import offsets_reader
from services.shared.settings import Settings


class NotPublished(Exception):
    """The broker did not acknowledge the erasure: nothing was erased; try again."""


def partitions_of(settings: Settings, timeout_s: float = 10.0) -> int:
    """Partitions of the events topic as the broker has it (the user's partition needs it)."""
    probe = Consumer(client_config(settings) | {"group.id": f"sluice-probe-{uuid.uuid4().hex[:8]}"})
    try:
        meta = probe.list_topics(settings.topic_events, timeout=timeout_s).topics.get(
            settings.topic_events)
        if meta is None or meta.error is not None or not meta.partitions:
            return settings.events_partitions
        return len(meta.partitions)
    finally:
        probe.close()


def publish(settings: Settings, erasure: Erasure, timeout_s: float = 10.0) -> Receipt:
    """Put the erasure on the user's partition with acks=all; its receipt."""
    producer = Producer(producer_config(settings))
    partition = partition_for(erasure.key, partitions_of(settings))
    landed: list[Message] = []
    errors: list[str] = []

    def delivered(err: KafkaError | None, msg: Message) -> None:
        (errors.append(err.str()) if err is not None else landed.append(msg))

    producer.produce(settings.topic_events, erasure.encode(), erasure.key, partition=partition,
                     headers=[erasures.HEADER], on_delivery=delivered)
    producer.flush(timeout_s)
    if not landed:
        why = errors[0] if errors else f"no acknowledgement within {timeout_s:.0f}s"
        raise NotPublished(f"broker {settings.bootstrap} did not take the erasure: {why}")
    return erasures.receipt_for(erasure, partition, landed[0].offset() or 0)


def still_in_topic(settings: Settings, receipt: Receipt, timeout_s: float = 1.5) -> bool:
    """Whether the events topic still holds this erasure at the receipt's position. A fetch
    decides where it answers; else the partition's ends: a log that starts after the
    position (retention) or ends at or before it (the topic started over) does not."""
    consumer = Consumer(client_config(settings) | {
        "group.id": f"sluice-erasure-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
        "enable.partition.eof": True, "auto.offset.reset": "error"})
    tp = TopicPartition(settings.topic_events, receipt.partition, receipt.offset)
    try:
        low, high = consumer.get_watermark_offsets(tp, timeout=timeout_s)
        if low > receipt.offset:
            return False
        consumer.assign([tp])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for message in consumer.consume(1, 0.2):
                if (err := message.error()) is not None:
                    if err.code() in GONE:
                        return False  # the log ends before it: the topic started over
                    continue
                if message.offset() != receipt.offset or not erasures.is_erasure(message.value()):
                    return False
                try:
                    return erasures.decode(message.value()).erasure_id == receipt.erasure_id
                except erasures.InvalidEvent:
                    return False
        # no fetch answered: Tansu's high watermark may lag its log by a batch, never lead
        return bool(high > receipt.offset)
    except KafkaException:
        return True  # the broker cannot say: pending, never a false "lost"
    finally:
        consumer.close()


GONE = frozenset({KafkaError._PARTITION_EOF, KafkaError._AUTO_OFFSET_RESET,
                  KafkaError.OFFSET_OUT_OF_RANGE})


class Groups:
    """The sink's and the agents' committed offsets on the events topic (no group join)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._readers = {level: offsets_reader(settings, group) for level, group in
                         (("stored", settings.sink_group), ("user", settings.agents_app_id))}

    def committed(self, level: str, partitions: list[int], timeout_s: float = 5.0) -> dict[int, int]:
        found = self._readers[level].committed(
            [TopicPartition(self.settings.topic_events, p) for p in partitions], timeout=timeout_s)
        return {tp.partition: tp.offset if tp.error is None else -1 for tp in found}

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()


Committed = Callable[[str, list[int]], dict[int, int]]


def status(settings: Settings, receipt: Receipt, committed: Committed,
           query: Callable[[str, dict[str, Any]], list[dict[str, Any]]] | None) -> dict[str, Any]:
    """Where the erasure stands (services.shared.erasures.decide); ``query``: ClickHouse's,
    None where this process cannot open it."""
    p = receipt.partition
    stored: Stored | None = erasures.stored_row(query, receipt) if query is not None else None
    return erasures.decide(
        receipt, committed("stored", [p]).get(p, -1), committed("user", [p]).get(p, -1),
        stored, query is not None, lambda: still_in_topic(settings, receipt))
