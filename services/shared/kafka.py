"""Kafka plumbing shared by every role: client configs and topic creation.

confluent-kafka (librdkafka) is the client of the hot paths: measured here it produces
several times faster than aiokafka (see bench/ and README). Group timeouts are short
because Tansu, like Kafka, makes a joining consumer wait a whole session timeout
before the first assignment.
"""

from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from services.shared.settings import Settings

log = logging.getLogger(__name__)


def producer_config(settings: Settings) -> dict[str, object]:
    return {
        "bootstrap.servers": settings.bootstrap,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": settings.producer_linger_ms,
        "compression.type": settings.kafka_compression,
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
        "batch.num.messages": 10_000,
        # A message the broker has not acked by then fails its delivery: the gateway
        # answers 503 before that anyway, so nothing is acknowledged that is not durable.
        "message.timeout.ms": int(settings.publish_timeout_s * 1000) + 1000,
        "partitioner": "murmur2_random",  # the Java client's partitioner: same key, same partition
        "log.connection.close": False,  # idle broker disconnects are routine, not news
    }


def consumer_config(settings: Settings, group: str) -> dict[str, object]:
    return {
        "bootstrap.servers": settings.bootstrap,
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 500,
        "fetch.max.bytes": 64 * 1024 * 1024,
        "max.partition.fetch.bytes": 16 * 1024 * 1024,
        "enable.partition.eof": False,
        "log.connection.close": False,
    }


def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> None:
    """Create the pipeline's topics if missing; waits for the broker to answer."""
    admin = AdminClient({"bootstrap.servers": settings.bootstrap})
    compacted = {"cleanup.policy": "compact"}
    wanted: dict[str, tuple[int, dict[str, str]]] = {
        settings.topic_events: (settings.events_partitions, {}),
        settings.topic_dlq: (1, {}),
        settings.topic_assets: (settings.events_partitions, compacted),
        # Faust would create it too; created here so gateways can follow it from the start.
        settings.topic_user_state: (settings.events_partitions, compacted),
    }
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            existing = admin.list_topics(timeout=5).topics
            break
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    new = [
        NewTopic(name, num_partitions=parts, replication_factor=settings.replication_factor,
                 config=config)
        for name, (parts, config) in wanted.items()
        if name not in existing
    ]
    if not new:
        return
    for name, future in admin.create_topics(new, operation_timeout=10).items():
        try:
            future.result()
            log.info("created topic %s", name)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise


def produce_waiting(producer: Producer, topic: str, value: bytes, key: bytes | None,
                    headers: list[tuple[str, str | bytes | None]] | None = None,
                    partition: int = -1) -> None:
    """produce(), waiting while librdkafka's local queue is full (bulk writers: rebuilds,
    benches), instead of failing with BufferError."""
    while True:
        try:
            producer.produce(topic, value, key, partition=partition, headers=headers)
            return
        except BufferError:
            producer.poll(0.005)
