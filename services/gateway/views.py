"""The asset catalog, in memory in every gateway, from the compacted ``assets`` topic.

The catalog (program -> asset -> labels, with a label index) serves asset reads, stamps
each event with its asset's labels, and ranks recommendations. It is small next to the
users (whose state the agents keep and serve, see user_states.py), so every gateway
replica follows the whole topic from the start (no consumer group), in a thread.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from services.shared.assets import decode_asset
from services.shared.events import InvalidEvent
from services.shared.kafka import client_config
from services.shared.ranking import Catalog
from services.shared.settings import Settings

log = logging.getLogger(__name__)
_NO_ASSETS = Catalog()  # never upserted: the follower makes each program a catalog of its own


class Views:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.catalogs: dict[str, Catalog] = {}
        self.assets: dict[tuple[str, str], dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._running = True
        self.caught_up = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="views", daemon=True)

    def start(self) -> Views:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._running = False
        self._thread.join(5)

    # -- assets -------------------------------------------------------------------------
    def apply_asset(self, record: dict[str, Any]) -> None:
        """Apply an asset record unless a newer one is already here (the gateway applies
        its own writes at once, and sees them again later from the topic)."""
        key = (record["program_id"], record["asset_id"])
        with self._lock:
            current = self.assets.get(key)
            if current is not None and current["updated_at"] > record["updated_at"]:
                return
            # a deleted asset stays as a marker, so an older record replayed from the
            # topic cannot bring it back
            self.assets[key] = record
            catalog = self.catalogs.setdefault(record["program_id"], Catalog())
            if record["deleted"]:
                catalog.delete(record["asset_id"])
            else:
                catalog.upsert(record["asset_id"], record["labels"])

    def asset(self, program_id: str, asset_id: str) -> dict[str, Any] | None:
        record = self.assets.get((program_id, asset_id))
        return None if record is None or record["deleted"] else record

    def catalog(self, program_id: str) -> Catalog:
        """The program's catalog; one shared empty one for a program without assets (most
        SDK traffic: a Catalog built per request was ~2% of a single-event request)."""
        catalog = self.catalogs.get(program_id)
        return _NO_ASSETS if catalog is None else catalog

    # -- the follower thread ------------------------------------------------------------
    def _follow(self) -> None:
        topics = (self.settings.topic_assets,)
        consumer = Consumer(client_config(self.settings) | {
            "group.id": f"sluice-view-{uuid.uuid4().hex}",  # never joins or commits
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 20,  # an asset written by another replica: soon here
        })
        try:
            assigned = list(self._partitions(consumer, topics))
            consumer.assign(assigned)
            # caught up: every partition read up to its end as of the start (a busy topic is
            # never idle), or nothing arrived for a moment
            behind = partition_ends(consumer, assigned)
            idle_since = time.monotonic()
            while self._running:
                if not behind:
                    self.caught_up.set()
                messages = consumer.consume(5000, 0.05)
                if not messages and time.monotonic() - idle_since > 0.3:
                    self.caught_up.set()
                for message in messages:
                    idle_since = time.monotonic()
                    if message.error() is None:
                        self._apply(message.topic(), message.key(), message.value())
                        where = (message.topic() or "", message.partition() or 0)
                        if behind.get(where, -1) <= (message.offset() or 0) + 1:
                            behind.pop(where, None)
        finally:
            consumer.close()

    def _partitions(self, consumer: Consumer, topics: Iterable[str]) -> Iterable[TopicPartition]:
        for topic in topics:
            waited = 0
            while self._running:
                try:
                    meta = consumer.list_topics(topic, timeout=5).topics[topic]
                    if meta.error is None and meta.partitions:
                        break
                except KafkaException:
                    pass
                if waited == 25:  # 5 s
                    log.warning("views: topic %s does not exist yet; waiting for it", topic)
                waited += 1
                time.sleep(0.2)
            else:
                return
            for p in meta.partitions:
                yield TopicPartition(topic, p, OFFSET_BEGINNING)

    def _apply(self, topic: str | None, key: bytes | None, value: bytes | None) -> None:
        try:
            self.apply_asset(decode_asset(value))
        except (InvalidEvent, KeyError, ValueError, TypeError) as exc:
            log.warning("views: skipping a bad record on %s: %s", topic, exc)


def partition_ends(consumer: Consumer, assigned: list[TopicPartition]) -> dict[tuple[str, int], int]:
    """(topic, partition) -> its end offset now, for the partitions that hold anything
    (views and the live page: where a read-back is done)."""
    ends = {}
    for tp in assigned:
        try:
            _, high = consumer.get_watermark_offsets(tp, timeout=5)
        except KafkaException:
            continue  # unknown: the caller's idle or time bound decides
        if high > 0:
            ends[(tp.topic, tp.partition)] = high
    return ends
