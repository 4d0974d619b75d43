"""In-memory views the gateway keeps from two compacted topics.

- ``assets``: the catalog (program -> asset -> labels, with a label index), for asset
  reads, for stamping each event with its asset's labels, and for ranking.
- the agents' ``user-state`` changelog: each user's latest record, for the read APIs and
  for ``queue_updates=false``, which waits here until the agents published a record that
  includes the request's own messages.

Every gateway replica follows both topics from the start (no consumer group), so reads
are local and scale with replicas; the agents remain the only writers of user state.
A thread runs the consumer; waiters are woken through their event loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from services.gateway.futures import fail_unavailable, resolve
from services.shared.assets import decode_asset
from services.shared.events import InvalidEvent
from services.shared.kafka import LIBRDKAFKA_LOG
from services.shared.publish import BrokerUnavailable
from services.shared.ranking import Catalog
from services.shared.settings import Settings
from services.shared.users import UserRecord

log = logging.getLogger(__name__)

Waiter = tuple[int, int, asyncio.Future[None], asyncio.AbstractEventLoop]


class Views:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.catalogs: dict[str, Catalog] = {}
        self.assets: dict[tuple[str, str], dict[str, Any]] = {}
        self.users: dict[bytes, UserRecord] = {}
        self._waiters: dict[bytes, list[Waiter]] = {}
        self._lock = threading.Lock()
        self._running = True
        self.abandoned: str | None = None
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
        return self.catalogs.get(program_id) or Catalog()

    # -- user state ---------------------------------------------------------------------
    def user(self, key: bytes) -> UserRecord | None:
        return self.users.get(key)

    async def wait_applied(self, targets: dict[bytes, tuple[int, int]], timeout_s: float) -> bool:
        """Wait until each user key's record includes its (partition, offset); False on timeout."""
        loop = asyncio.get_running_loop()
        futures = []
        with self._lock:
            if self.abandoned is not None:
                raise BrokerUnavailable(self.abandoned)
            for key, (partition, offset) in targets.items():
                record = self.users.get(key)
                if record is not None and record.applied(partition, offset):
                    continue
                future: asyncio.Future[None] = loop.create_future()
                self._waiters.setdefault(key, []).append((partition, offset, future, loop))
                futures.append(future)
        if not futures:
            return True
        done, pending = await asyncio.wait(futures, timeout=timeout_s)
        for future in done:
            if not future.cancelled() and (error := future.exception()) is not None:
                for other in pending:
                    other.cancel()
                raise error
        if pending:
            for future in pending:
                future.cancel()
            with self._lock:  # drop the expired waiters (no record may ever come for them)
                for key in targets:
                    left = [w for w in self._waiters.get(key, []) if not w[2].cancelled()]
                    if left:
                        self._waiters[key] = left
                    else:
                        self._waiters.pop(key, None)
        return not pending

    def abandon(self, reason: str) -> None:
        """The broker died with what it held (the embedded one): the records waited for may
        never come, so every waiter gets BrokerUnavailable (503: retry), never a 200."""
        with self._lock:
            self.abandoned = reason
            waiters = [w for ws in self._waiters.values() for w in ws]
        for _partition, _offset, future, loop in waiters:
            loop.call_soon_threadsafe(fail_unavailable, future, reason)

    def _apply_user(self, key: bytes, record: UserRecord) -> None:
        with self._lock:
            self.users[key] = record
            waiters = self._waiters.get(key)
            if not waiters:
                return
            still = []
            for waiter in waiters:
                partition, offset, future, loop = waiter
                if record.applied(partition, offset):
                    loop.call_soon_threadsafe(resolve, future)
                elif not future.cancelled():
                    still.append(waiter)
            if still:
                self._waiters[key] = still
            else:
                del self._waiters[key]

    # -- the follower thread ------------------------------------------------------------
    def _follow(self) -> None:
        topics = (self.settings.topic_assets, self.settings.topic_user_state)
        consumer = Consumer({
            "bootstrap.servers": self.settings.bootstrap,
            "group.id": f"sluice-view-{uuid.uuid4().hex}",  # never joins or commits
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 20,  # waiters are woken by what arrives: keep it snappy
            "logger": LIBRDKAFKA_LOG,
        })
        try:
            assigned = list(self._partitions(consumer, topics))
            consumer.assign(assigned)
            # caught up: every partition read up to its end as of the start (a busy topic is
            # never idle), or nothing arrived for a moment
            behind = self._ends(consumer, assigned)
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

    @staticmethod
    def _ends(consumer: Consumer, assigned: list[TopicPartition]) -> dict[tuple[str, int], int]:
        """(topic, partition) -> its end offset now, for the partitions that hold anything."""
        ends = {}
        for tp in assigned:
            try:
                _, high = consumer.get_watermark_offsets(tp, timeout=5)
            except KafkaException:
                continue  # unknown: the idle rule decides
            if high > 0:
                ends[(tp.topic, tp.partition)] = high
        return ends

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
            if topic == self.settings.topic_assets:
                self.apply_asset(decode_asset(value))
            elif key is not None and value:
                self._apply_user(key, UserRecord.decode(value))
        except (InvalidEvent, KeyError, ValueError, TypeError) as exc:
            log.warning("views: skipping a bad record on %s: %s", topic, exc)
