"""Dead letters of erased users: never replayed (``sluice replay`` leaves them out).

An erasure deletes a user's rows from ClickHouse and state from the agents, but the user's
dead letters stay on the DLQ topic until its retention (docs/operating.md). Replayed after
the erasure, such a letter would be stored again as the new user's first event: the
erased data back. So the sink, once it has carried out an erasure (services.sink.erase),
writes a marker to the compacted topic ``<dlq>.erased``: keyed by program and the user's
digest (no user id), its value the erasure's position on the events topic. A replay reads
it whole (one record per erased user) and leaves out every letter whose line names an
erased user and that came from before the erasure: from the same partition at a lower
offset (exact: the order the sink met them in), or, from another partition (the topic's
partitions were changed since), dead-lettered before the sink erased. A letter of the
new user (after the erasure) is replayed as any other.

Why a topic and not the ``erasures`` table: a replay runs against the brokers only, also
while ``sluice up`` owns the embedded ClickHouse.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import orjson
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from services.shared.erasures import Erasure, user_digest
from services.shared.events import KEY_SEPARATOR
from services.shared.kafka import ensure_compacted_topic, producer_config
from services.shared.settings import Settings
from services.sink.letters import DeadLetter

SUFFIX = ".erased"

Erased = dict[str, tuple[int, int, int]]  # key -> (partition, offset, erased at, epoch ms)


def erased_topic(settings: Settings) -> str:
    return settings.topic_dlq + SUFFIX


def marker_key(program_id: str, user_id: str) -> str:
    return f"{program_id}{KEY_SEPARATOR}{user_digest(program_id, user_id)}"


def marker(erasure: Erasure, partition: int, offset: int) -> tuple[bytes, bytes]:
    """(key, value) of an erasure carried out at (partition, offset) of the events topic."""
    return (marker_key(erasure.program_id, erasure.user_id).encode(),
            orjson.dumps({"partition": partition, "offset": offset,
                          "erased_at_ms": int(time.time() * 1000)}))


def erased_users(records: Iterable[DeadLetter]) -> Erased:
    """Marker records in offset order -> key -> the user's latest erasure."""
    out: Erased = {}
    for record in records:
        try:
            d = orjson.loads(record.value)
            out[(record.key or b"").decode()] = (int(d["partition"]), int(d["offset"]),
                                                 int(d["erased_at_ms"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
    return out


def is_erased(letter: DeadLetter, erased: Erased) -> bool:
    """Whether a line of ``letter`` is an erased user's from before the erasure."""
    if not erased:
        return False
    try:
        source = (int(letter.header("source_partition")), int(letter.header("source_offset")))
    except ValueError:
        source = None
    for line in letter.value.split(b"\n"):
        try:
            event: Any = orjson.loads(line)
            key = marker_key(str(event["program_id"]), str(event["user_id"]))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            continue
        if (found := erased.get(key)) is None:
            continue
        partition, offset, erased_at_ms = found
        if source is not None and source[0] == partition:
            if source[1] < offset:
                return True
        elif letter.timestamp_ms < erased_at_ms:
            return True
    return False


class Markers:
    """The sink's producer of markers; the topic is created at the first erasure."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topic = erased_topic(settings)
        self._producer: Producer | None = None

    def publish(self, marks: list[tuple[bytes, bytes]], timeout_s: float = 10.0) -> None:
        """Produce and wait for every ack; KafkaException when the broker did not take them
        (the sink then tries the erasure again, as it does when ClickHouse refuses)."""
        if self._producer is None:
            self._ensure_topic(timeout_s)
            self._producer = Producer(producer_config(self.settings))
        failed: list[str] = []

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                failed.append(err.str())

        for key, value in marks:
            self._producer.produce(self.topic, value, key, on_delivery=delivered)
        left = self._producer.flush(timeout_s)
        if left or failed:
            self._producer = None  # a new one next time (it may be fenced)
            raise KafkaException(KafkaError(KafkaError._MSG_TIMED_OUT,
                                            failed[0] if failed else f"{left} not acked"))

    def _ensure_topic(self, timeout_s: float) -> None:
        ensure_compacted_topic(self.settings, self.topic, timeout_s)
