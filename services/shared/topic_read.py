"""A topic read from its beginning to its end, outside any consumer group.

What ``sluice dlq`` and ``sluice replay`` read (dead letters, their markers) and what a roll
of the embedded broker carries over (the changelog, the dead letters). Explicit assignment
under a throwaway group id: no session-timeout wait for an assignment, nothing committed.
The end is where a fetch reports end-of-partition, not ListOffsets: Tansu's ListOffsets
lags the log end by its last batch (see streams/recovery.py), its Fetch does not.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from services.shared.kafka import client_config
from services.shared.kafka_security import REFUSED
from services.shared.settings import Settings


class TopicUnread(Exception):
    """The broker did not answer or refused, or the topic was not read to its end in time:
    the message is the one line to show."""


def kafka_reason(exc: KafkaException) -> str:
    """The broker's refusal where there was one (a certificate, a password), else the error."""
    consumer_error = exc.args[0] if exc.args else None
    text = consumer_error.str() if isinstance(consumer_error, KafkaError) else str(exc)
    return REFUSED.recent() or text


def read_to_end(settings: Settings, topic: str, timeout_s: float = 30.0,
                batch: int = 1000, start: dict[int, int] | None = None,
                partitions: set[int] | None = None) -> Iterator[Message]:
    """Every record of ``topic`` (of ``partitions`` if given) up to each partition's end,
    each partition's in offset order (partitions interleave), from ``start``'s offset where
    it names one; none if the topic does not exist. :class:`TopicUnread` when the broker does not answer, or reading
    stalls ``timeout_s`` before the end."""
    consumer = Consumer(client_config(settings) | {
        "group.id": f"sluice-reader-{uuid.uuid4().hex}",
        "enable.auto.commit": False, "enable.partition.eof": True, "fetch.wait.max.ms": 10,
    })
    try:
        try:
            # all topics: asking for this one by name may auto-create it on some brokers
            meta = consumer.list_topics(timeout=10).topics.get(topic)
        except KafkaException as exc:
            raise TopicUnread(f"broker {settings.bootstrap} unreachable: "
                              f"{kafka_reason(exc)}") from None
        if meta is None or meta.error is not None:
            return
        waiting = set(meta.partitions) if partitions is None else set(meta.partitions) & partitions
        if not waiting:
            return
        consumer.assign([TopicPartition(topic, p, (start or {}).get(p, OFFSET_BEGINNING))
                         for p in waiting])
        deadline = time.monotonic() + timeout_s
        while waiting:
            if time.monotonic() > deadline:
                raise TopicUnread(f"broker {settings.bootstrap}: {topic} not read to its end "
                                  f"within {timeout_s:.0f}s")
            for message in consumer.consume(batch, 0.1):
                err = message.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        waiting.discard(message.partition() or 0)
                        continue
                    raise TopicUnread(f"broker {settings.bootstrap}: {err.str()}")
                deadline = time.monotonic() + timeout_s  # it moves: keep reading
                yield message
    finally:
        consumer.close()
