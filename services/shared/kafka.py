"""Kafka plumbing shared by every role: client configs and topic creation.

confluent-kafka (librdkafka) is the client of the hot paths: measured here it produces
several times faster than aiokafka (see bench/ and docs/benchmarks.md). Group timeouts are short
because Tansu, like Kafka, makes a joining consumer wait a whole session timeout
before the first assignment.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from services.shared.kafka_security import (
    REFUSED,
    KafkaRefused,
    librdkafka_security,
    warn_if_unverified,
)
from services.shared.settings import Settings

log = logging.getLogger(__name__)
LIBRDKAFKA_LOG = logging.getLogger("librdkafka")


def client_config(settings: Settings) -> dict[str, object]:
    """What every librdkafka client of Sluice starts from: where the brokers are, how to
    reach them (TLS, SASL), logs through Python's logging, refusals kept for /readyz."""
    return {
        "bootstrap.servers": settings.bootstrap,
        "logger": LIBRDKAFKA_LOG,  # through Python's logging (SLUICE_LOG_FORMAT), not raw stderr
        "error_cb": REFUSED.note,
        "log.connection.close": False,  # idle broker disconnects are routine, not news
    } | librdkafka_security(settings)


def producer_config(settings: Settings) -> dict[str, object]:
    return client_config(settings) | {
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
    }


# Delivery errors after which this producer object never delivers again: with idempotence,
# a broker that lost or fenced its producer id answers every later batch with one of
# these (measured with Tansu after a 12 s stall: PRODUCER_FENCED for as long as it lived,
# and librdkafka does not flag it fatal). Only a new producer recovers.
PRODUCER_BREAKING = frozenset({
    KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH,
    KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, KafkaError.UNKNOWN_PRODUCER_ID,
    KafkaError.INVALID_PRODUCER_ID_MAPPING, KafkaError._FENCED, KafkaError._FATAL,
})


def breaks_producer(err: KafkaError) -> bool:
    return bool(err.fatal()) or err.code() in PRODUCER_BREAKING


class HealingProducer:
    """A confluent-kafka Producer that replaces itself once it is broken.

    A fatal error (``error_cb``) or a breaking delivery error (``check`` it in every
    delivery callback) marks it broken; the next ``poll`` on the owning thread builds a
    new Producer, purges the old one (its queued messages fail now, so their requests get
    503 at once instead of at their timeout) and keeps serving the old one's last reports
    until it is empty. Every role's producer is one: the gateway's, the agents' changelog
    producer, the sink's DLQ producer.
    """

    def __init__(self, config: dict[str, object], name: str) -> None:
        self.name = name
        self._config = config | {"error_cb": self.check}
        self.producer = Producer(self._config)
        self.broken: str | None = None  # why, until it is replaced
        self._retired: list[Producer] = []

    def check(self, err: KafkaError | None) -> None:
        """The error callback, and call it from delivery callbacks: a breaking error marks
        this producer broken."""
        REFUSED.note(err)
        if err is not None and breaks_producer(err):
            self.mark_broken(err.str())

    def mark_broken(self, reason: str) -> None:
        if self.broken is None:
            self.broken = reason

    def produce(self, topic: str, value: bytes | None, key: bytes | None = None,
                **kwargs: Any) -> None:
        self.producer.produce(topic, value, key, **kwargs)

    def poll(self, timeout_s: float) -> int:
        """Serve delivery reports; replace the producer if it broke meanwhile."""
        served = int(self.producer.poll(timeout_s))
        if self.broken is not None:
            self.heal()
        for old in list(self._retired):
            old.poll(0)
            if len(old) == 0:
                self._retired.remove(old)
        return served

    def heal(self) -> None:
        reason, self.broken = self.broken, None
        old, self.producer = self.producer, Producer(self._config)
        log.warning("%s: replaced the Kafka producer after: %s", self.name, reason)
        old.purge()  # what it still holds fails now (its requests answer 503)
        old.poll(0)
        if len(old):
            self._retired.append(old)

    def flush(self, timeout_s: float) -> int:
        """Deliver what is queued; the number of messages still undelivered."""
        left = int(self.producer.flush(timeout_s))
        if self.broken is not None:
            self.heal()
        return left

    def close(self) -> None:
        """Destroy the librdkafka clients now, their threads and buffers with them; what is
        still queued is dropped (flush first). Without it a producer outlived its owner:
        each generation of `sluice up` left its gateway's and its sink's running (two more
        librdkafka clients, ~7 MiB and 10 fds, at every roll of the embedded broker)."""
        for producer in (self.producer, *self._retired):
            producer.purge()
            producer.poll(0)
            producer.close()
        self._retired.clear()

    def __len__(self) -> int:
        return len(self.producer) + sum(map(len, self._retired))

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        return self.producer.list_topics(topic, timeout=timeout)


def consumer_config(settings: Settings, group: str) -> dict[str, object]:
    return client_config(settings) | {
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 500,
        "fetch.max.bytes": 64 * 1024 * 1024,
        "max.partition.fetch.bytes": 16 * 1024 * 1024,
        "enable.partition.eof": False,
        # Tansu answers a waiting fetch only when this wait ends, even if data came
        # (librdkafka's default: 500 ms): that is how late the sink sees a quiet stream,
        # and how late wait=stored answers at light load.
        "fetch.wait.max.ms": 50,
    }


def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> None:
    """Create the pipeline's topics if missing; waits for the broker to answer. Every role
    calls it at start: a broker that refuses this client raises KafkaRefused, whose message
    is the one line to show."""
    warn_if_unverified(settings)
    admin = AdminClient(client_config(settings))  # type: ignore[arg-type]
    compacted = {"cleanup.policy": "compact"}
    wanted: dict[str, tuple[int, dict[str, str]]] = {
        settings.topic_events: (settings.events_partitions, {}),
        settings.topic_dlq: (1, {}),
        settings.topic_assets: (settings.events_partitions, compacted),
        # Faust would create it too; created here so gateways can follow it from the start.
        settings.topic_user_state: (settings.events_partitions, compacted),
        # the gateways' tallies for `sluice verify` (services.shared.tallies): the sink copies
        # them into ClickHouse within seconds, so the default retention; never compacted
        settings.topic_tallies: (1, {}),
    }
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            existing = admin.list_topics(timeout=5).topics
            break
        except KafkaException:
            admin.poll(0)  # serves the error callback: refusals are noted there
            # a certificate or a password the broker refuses does not heal by waiting
            if (refused := REFUSED.recent()) is not None:
                raise KafkaRefused(f"{settings.bootstrap}: {refused}") from None
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


def ensure_compacted_topic(settings: Settings, topic: str, timeout_s: float = 10.0) -> None:
    """A one-partition compacted topic, created if missing: markers whose newest record per
    key is all that counts (replayed dead letters, erased users). Raises KafkaException."""
    admin = AdminClient(client_config(settings))  # type: ignore[arg-type]
    if topic in admin.list_topics(timeout=timeout_s).topics:
        return
    new = NewTopic(topic, num_partitions=1, replication_factor=settings.replication_factor,
                   config={"cleanup.policy": "compact"})
    for future in admin.create_topics([new], operation_timeout=timeout_s).values():
        try:
            future.result()
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    deadline = time.monotonic() + timeout_s
    while topic not in admin.list_topics(timeout=timeout_s).topics:  # metadata catches up
        if time.monotonic() > deadline:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT,
                                            f"{topic} not visible after its creation"))
        time.sleep(0.1)


def produce_waiting(producer: Producer, topic: str, value: bytes, key: bytes | None,
                    headers: list[tuple[str, str | bytes | None]] | None = None,
                    partition: int = -1, on_delivery: Callable[..., None] | None = None,
                    timestamp_ms: int = 0) -> None:
    """produce(), waiting while librdkafka's local queue is full (bulk writers: rebuilds,
    replays, benches), instead of failing with BufferError. ``timestamp_ms`` 0: now."""
    extra: dict[str, Any] = {} if on_delivery is None else {"on_delivery": on_delivery}
    if timestamp_ms:
        extra["timestamp"] = timestamp_ms
    while True:
        try:
            producer.produce(topic, value, key, partition=partition, headers=headers, **extra)
            return
        except BufferError:
            producer.poll(0.005)
