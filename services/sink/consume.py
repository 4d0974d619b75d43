"""The sink: ``events`` and ``assets`` topics -> decode -> batch -> ClickHouse -> commit.

Promises:
1. Offsets are committed only after the rows are in ClickHouse (or in the DLQ), so a
   crash at any point replays at most the uncommitted batch; the ``events`` table is a
   ReplacingMergeTree keyed by event_id, so replayed rows collapse (exactly once for
   readers, who query with FINAL).
2. A message that is not a canonical event, or that ClickHouse refuses, goes to the DLQ
   with the reason; the partition moves on.
3. ClickHouse down: the batch is retried with backoff; nothing is committed meanwhile.
4. ``stop()`` drains: it keeps consuming until the topic is idle, writes, commits, exits.
"""

from __future__ import annotations

import logging
import threading
import time

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from services.shared.clickhouse import Store
from services.shared.assets import decode_asset
from services.shared.events import InvalidEvent, decode, lines
from services.shared.kafka import consumer_config
from services.shared.settings import Settings
from services.sink.dlq import DeadLetters
from services.sink.write import RowWriter

log = logging.getLogger(__name__)

MAX_DRAIN_S = 30.0


class Sink:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.consumer = Consumer(
            consumer_config(settings, settings.sink_group) | {"max.poll.interval.ms": 600_000}
        )
        self.dead_letters = DeadLetters(settings)
        self.writers = {
            settings.topic_events: RowWriter(store, "events", settings.sink_retry_max_backoff_s),
            settings.topic_assets: RowWriter(store, "assets", settings.sink_retry_max_backoff_s),
        }
        self.pending: list[Message] = []
        self.first_pending_at = 0.0
        self.rows_written = 0
        self._stop = threading.Event()
        self._flushing = False

    # -- lifecycle ----------------------------------------------------------------------
    def run(self) -> None:
        """Consume until ``stop()``; then drain, flush and close."""
        self.consumer.subscribe(list(self.writers), on_revoke=self._on_revoke)
        try:
            while not self._stop.is_set():
                self._poll(self._wait_s())
            self._drain()
        finally:
            self.consumer.close()
            self.dead_letters.close()

    def stop(self) -> None:
        self._stop.set()

    # -- the loop -----------------------------------------------------------------------
    def _wait_s(self) -> float:
        if not self.pending:
            return 0.5
        due = self.first_pending_at + self.settings.sink_batch_seconds - time.monotonic()
        return max(0.0, min(0.5, due))

    def _poll(self, timeout_s: float) -> int:
        room = max(1, self.settings.sink_batch_rows - len(self.pending))
        messages = self.consumer.consume(num_messages=min(room, 10_000), timeout=timeout_s)
        for message in messages:
            if message.error() is not None:
                log.warning("consumer error: %s", message.error())
                continue
            if not self.pending:
                self.first_pending_at = time.monotonic()
            self.pending.append(message)
        if self.pending and (
            len(self.pending) >= self.settings.sink_batch_rows
            or time.monotonic() - self.first_pending_at >= self.settings.sink_batch_seconds
        ):
            self.flush()
        return len(messages)

    def _drain(self) -> None:
        """Consume until nothing arrives for ``sink_drain_idle_s``, then write the rest."""
        deadline = time.monotonic() + MAX_DRAIN_S
        idle_since = time.monotonic()
        while time.monotonic() < deadline:
            if self._poll(0.1):
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since >= self.settings.sink_drain_idle_s:
                break
        self.flush()

    def _on_revoke(self, _consumer: Consumer, _partitions: list[TopicPartition]) -> None:
        # Write and commit what we hold before the partitions move to another sink.
        if not self._flushing:
            self.flush()

    # -- one batch ----------------------------------------------------------------------
    def flush(self) -> None:
        """Write the pending batch, dead-letter what cannot be stored, then commit."""
        if not self.pending:
            return
        self._flushing = True
        try:
            batch = self.pending
            for topic, writer in self.writers.items():
                messages = [m for m in batch if m.topic() == topic]
                if messages:
                    self._write(topic, writer, messages)
            self.dead_letters.confirm()
            self._commit(batch)
            self.pending = []
        finally:
            self._flushing = False

    def _write(self, topic: str, writer: RowWriter, messages: list[Message]) -> None:
        """Check every row, dead-letter the bad ones, insert the rest in one go."""
        rows: list[bytes] = []
        origin: list[Message] = []
        for message in messages:
            try:
                if topic == self.settings.topic_assets:
                    decode_asset(message.value())
                    message_rows = [message.value() or b""]
                else:
                    message_rows = lines(message.value())
            except InvalidEvent as exc:
                self.dead_letters.send(message, str(exc))
                continue
            for row in message_rows:
                if topic == self.settings.topic_events:
                    try:
                        decode(row)
                    except InvalidEvent as exc:
                        self.dead_letters.send(message, str(exc), value=row)
                        continue
                rows.append(row)
                origin.append(message)

        def reject(i: int, reason: str) -> None:
            self.dead_letters.send(origin[i], reason, value=rows[i])

        written = writer.write(rows, reject)
        if topic == self.settings.topic_events:
            self.rows_written += written

    def _commit(self, batch: list[Message]) -> None:
        next_offsets: dict[tuple[str, int], int] = {}
        for message in batch:
            key = (message.topic() or "", message.partition() or 0)
            next_offsets[key] = max(next_offsets.get(key, 0), (message.offset() or 0) + 1)
        offsets = [TopicPartition(t, p, o) for (t, p), o in next_offsets.items()]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # Lost the partitions meanwhile: their new owner replays; the table dedupes.
            log.warning("commit failed, batch will be replayed by the partitions' owner: %s", exc)
