"""What /ui shows: the newest events and dead letters, read from their topics, and lag.

A reader without a consumer group follows the ends of the events and DLQ topics on a
thread of its own, only while someone looks: it starts at the first request for a snapshot
(a little before each partition's end, so the page is not empty: that first request waits
for this read-back, briefly) and stops after ``IDLE_S`` without one. Events are kept and
shown newest first by the gateway's received_at, whatever the partition they were read
from: a reader takes partitions in turns, so a burst on one can be read after a newer
single event on another. It never touches the POST path. Lag is the groups' committed
offsets vs the partitions' ends (services.shared.lag), read at most every ``LAG_TTL_S``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaException, TopicPartition

from services.gateway.views import partition_ends
from services.shared.erasures import forget_user, is_erasure
from services.shared.kafka import client_config
from services.shared.lag import group_lag, offsets_reader
from services.shared.settings import Settings

log = logging.getLogger(__name__)

KEEP_EVENTS = 300
KEEP_DEAD = 100
BACKFILL = 50  # messages per partition read back when the reader starts
BACKFILL_WAIT_S = 2.0
IDLE_S = 60.0
LAG_TTL_S = 2.0
EVENT_FIELDS = ("program_id", "user_id", "event_type", "asset_id", "source", "event_timestamp",
                "received_at")


class Live:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.events: list[dict[str, Any]] = []  # newest KEEP_EVENTS by received_at, unsorted
        self.dead: deque[dict[str, Any]] = deque(maxlen=KEEP_DEAD)
        self._backfilled = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._seen = 0.0
        self._running = True
        self._lag: list[dict[str, Any]] = []
        self._lag_at = float("-inf")
        self._readers: dict[str, Consumer] = {}

    def snapshot(self) -> dict[str, Any]:
        """The newest events and dead letters, newest first (starts following if idle, and
        then waits up to BACKFILL_WAIT_S for the read-back: blocking, call it off the loop)."""
        with self._lock:
            self._seen = time.monotonic()
            if self._running and (self._thread is None or not self._thread.is_alive()):
                self._backfilled.clear()
                self._thread = threading.Thread(target=self._follow, name="ui-live", daemon=True)
                self._thread.start()
        self._backfilled.wait(BACKFILL_WAIT_S)
        with self._lock:
            events = _newest(self.events, KEEP_EVENTS)
            return {"events": events, "dlq": list(reversed(self.dead))}

    def lag(self) -> list[dict[str, Any]]:
        """Lag per partition of the sink's and the agents' groups (blocking: off the loop)."""
        if time.monotonic() - self._lag_at < LAG_TTL_S:
            return self._lag
        s = self.settings
        rows: list[dict[str, Any]] = []
        for group, topics in ((s.sink_group, [s.topic_events]), (s.agents_app_id, [s.topic_events])):
            reader = self._readers.get(group)
            if reader is None:
                reader = self._readers[group] = offsets_reader(s, group)
            try:
                rows += [{"group": r.group, "topic": r.topic, "partition": r.partition,
                          "lag": r.lag} for r in group_lag(reader, group, topics)]
            except KafkaException as exc:
                log.debug("ui: lag of %s unknown: %s", group, exc)
        self._lag, self._lag_at = rows, time.monotonic()
        return rows

    def stop(self) -> None:
        self._running = False
        if self._thread is not None:
            self._thread.join(5)
        for reader in self._readers.values():
            reader.close()

    def _follow(self) -> None:
        s = self.settings
        consumer = Consumer(client_config(s) | {
            "enable.auto.commit": False,
            "group.id": f"sluice-ui-{uuid.uuid4().hex[:8]}",  # never joins
        })
        try:
            starts = self._starts(consumer, [s.topic_events, s.topic_dlq])
            consumer.assign(starts)
            # where the read-back ends: the partitions' ends as the reader started
            start_of = {(tp.topic, tp.partition): tp.offset for tp in starts}
            ends = {at: end for at, end in partition_ends(consumer, starts).items()
                    if end > start_of[at]}
            while self._running and time.monotonic() - self._seen < IDLE_S:
                for message in consumer.consume(500, 0.2):
                    if message.error() is None:
                        with self._lock:
                            self._add(message.topic(), message)
                        at = (message.topic() or "", message.partition() or 0)
                        if (message.offset() or 0) + 1 >= ends.get(at, 0):
                            ends.pop(at, None)
                if not ends or time.monotonic() - self._seen > BACKFILL_WAIT_S:
                    self._backfilled.set()  # read back (or as far as it got meanwhile)
        except KafkaException as exc:
            log.warning("ui: cannot follow the topics: %s", exc)
        finally:
            self._backfilled.set()  # no first request waits on a reader that stopped
            consumer.close()

    @staticmethod
    def _starts(consumer: Consumer, topics: list[str]) -> list[TopicPartition]:
        starts = []
        for topic in topics:
            meta = consumer.list_topics(topic, timeout=5).topics.get(topic)
            for p in sorted(meta.partitions) if meta is not None and meta.error is None else []:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5)
                starts.append(TopicPartition(topic, p, max(low, high - BACKFILL)))
        return starts

    def _add(self, topic: str | None, message: Any) -> None:
        value: bytes = message.value() or b""
        if topic == self.settings.topic_events:
            if is_erasure(value):  # not an event: the user's events leave the page
                self.events, self.dead = forget_user(self.events, self.dead, value)
                return
            for line in value.split(b"\n")[-KEEP_EVENTS:]:
                try:
                    event = orjson.loads(line)
                    self.events.append({k: event.get(k) for k in EVENT_FIELDS})
                except (orjson.JSONDecodeError, AttributeError):
                    continue  # the sink dead-letters it; it shows up there
            if len(self.events) > 2 * KEEP_EVENTS:  # trimmed now and then, not per message
                self.events = _newest(self.events, KEEP_EVENTS)[::-1]
            return
        headers = {k: v.decode(errors="replace") for k, v in message.headers() or ()}
        program = None
        try:
            program = orjson.loads(value).get("program_id")
        except (orjson.JSONDecodeError, AttributeError):
            pass
        self.dead.append({"reason": headers.get("reason", ""), "program_id": program,
                          "source": f"{headers.get('source_topic', '')}/"
                                    f"{headers.get('source_partition', '')}@"
                                    f"{headers.get('source_offset', '')}",
                          "value": value[:300].decode(errors="replace")})


def _newest(events: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The ``n`` newest by received_at (ISO 8601 in UTC, so text order is time order),
    newest first; the events of one request keep their order, last first."""
    ranked = sorted(enumerate(events), key=lambda pair: (str(pair[1].get("received_at") or ""),
                                                         pair[0]), reverse=True)
    return [event for _, event in ranked[:n]]
