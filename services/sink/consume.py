"""The sink: ``events`` and ``assets`` topics -> decode -> batch -> ClickHouse -> commit.

Promises:
1. Offsets are committed only after the rows are in ClickHouse (or in the DLQ), so a
   crash at any point replays at most the uncommitted batches; the ``events`` table is a
   ReplacingMergeTree keyed by event_id, so replayed rows collapse (exactly once for
   readers, who query with FINAL).
2. A message that is not a canonical event, or that ClickHouse refuses, goes to the DLQ
   with the reason; the partition moves on.
3. ClickHouse down: the batch is retried with backoff; nothing is committed meanwhile.
4. ``stop()`` drains: it keeps consuming until the topic is idle, writes, commits, exits.

Two threads, so that consuming batch k+1 overlaps inserting batch k (chDB and the HTTP
client release the GIL while ClickHouse works): the consumer thread collects batches and
hands them over one at a time; the writer thread checks, inserts and dead-letters them
in order, and the consumer thread commits what the writer reports written. Lines produced by the gateway carry the header ``sluice-wire``:
it validated every event, so they skip the per-row check; lines from any other producer
are checked one by one.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from services.shared.assets import decode_asset
from services.shared.clickhouse import Store
from services.shared.events import WIRE_HEADER, InvalidEvent, decode, lines
from services.shared.kafka import consumer_config
from services.shared.lag import LAG
from services.shared.metrics import DLQ_MESSAGES, SINK_BATCH_ROWS, SINK_INSERT_SECONDS, SINK_ROWS
from services.shared.settings import Settings
from services.shared.tallies import TABLE as TALLIES_TABLE
from services.shared.tallies import BatchTallies
from services.sink.dlq import DeadLetters
from services.sink.erase import Erasures, segments
from services.sink.write import RowWriter

log = logging.getLogger(__name__)

MAX_DRAIN_S = 30.0
IDLE_POLL_S = 0.05


class Sink:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.consumer = Consumer(
            consumer_config(settings, settings.sink_group)
            | {"max.poll.interval.ms": 600_000, "on_commit": self._committed}
        )
        self.dead_letters = DeadLetters(settings)
        self.erasures = Erasures(settings, store)  # user erasures (services.sink.erase)
        self.writers = {
            settings.topic_events: RowWriter(store, "events", settings.sink_retry_max_backoff_s),
            settings.topic_assets: RowWriter(store, "assets", settings.sink_retry_max_backoff_s),
            # the gateways' tallies, and the sink's own of each batch (services.shared.tallies)
            settings.topic_tallies: RowWriter(store, TALLIES_TABLE, settings.sink_retry_max_backoff_s),
        }
        self._tallies: BatchTallies | None = None  # the events of the batch being written
        self.pending: list[Message] = []
        self.pending_rows = 0  # a message holds one or more rows (a request's bundle)
        self.rows_per_message = 1.0  # as in the last batch: how many messages make a batch
        self.first_pending_at = 0.0
        self.rows_written = 0
        self._stop = threading.Event()
        self._pause, self._paused, self._resume = threading.Event(), threading.Event(), threading.Event()
        self._batches: queue.Queue[list[Message] | None] = queue.Queue(maxsize=1)
        self._written: queue.SimpleQueue[list[TopicPartition]] = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write_batches, name="sink-writer")
        self._writer_error: BaseException | None = None
        self.abandoned = False

    # -- lifecycle ----------------------------------------------------------------------
    def run(self) -> None:
        """Consume until ``stop()``; then drain, flush and close."""
        self._writer.start()
        self.consumer.subscribe(list(self.writers), on_revoke=self._on_revoke)
        lag = LAG.watch(self.settings, self.settings.sink_group, list(self.writers))
        try:
            while not self._stop.is_set():
                if self._pause.is_set():
                    self._hold()
                self._check_writer()
                self._poll(self._wait_s())
                self._commit_written()
            if self.abandoned:  # store what was fetched: those events are acked, and safe
                self.flush(wait=True)  # once in ClickHouse; there is nowhere to commit
            else:
                self._drain()
        finally:
            self._batches.put(None)
            self._writer.join()
            if self.abandoned:  # close() waits out the dead coordinator (~6 s): not here
                threading.Thread(target=self.consumer.close, name="sink-close", daemon=True).start()
            else:
                self.consumer.close()
            self.dead_letters.close(0.0 if self.abandoned else 10.0)
            LAG.unwatch(lag)
        self._check_writer()

    def stop(self) -> None:
        self._stop.set()
        self._resume.set()

    @contextmanager
    def paused(self, timeout_s: float = 60.0) -> Iterator[None]:
        """Within: everything fetched is in ClickHouse and committed, and nothing more is
        fetched, so ClickHouse holds exactly the group's committed offsets (a roll rebuilds
        user state from it). The consumer stays in its group: no rejoin after."""
        self._resume.clear()
        self._pause.set()
        try:
            if not self._paused.wait(timeout_s):
                raise RuntimeError(f"the sink did not pause in {timeout_s:.0f} s")
            yield
        finally:
            self._pause.clear()
            self._paused.clear()
            self._resume.set()

    def _hold(self) -> None:
        self.flush(wait=True)
        self._paused.set()
        self._resume.wait()

    def abandon(self) -> None:
        """The broker died with its offsets (the embedded one): write what was fetched,
        commit nothing, and do not wait on the dead broker to stop."""
        self.abandoned = True
        self._stop.set()

    # -- the consumer thread ------------------------------------------------------------
    def _wait_s(self) -> float:
        if self._batches.unfinished_tasks:  # the writer holds a batch: commit it soon after
            return 0.02  # (wait=stored answers when the commit is seen)
        # consume() returns early only once it has its whole count, so this is how late a
        # quiet stream's first message starts its batch window: keep it short
        if not self.pending:
            return IDLE_POLL_S
        due = self.first_pending_at + self.settings.sink_batch_seconds - time.monotonic()
        return max(0.0, min(IDLE_POLL_S, due))

    def _poll(self, timeout_s: float) -> int:
        room = max(1, int((self.settings.sink_batch_rows - self.pending_rows) / self.rows_per_message))
        messages = self.consumer.consume(num_messages=min(room, 10_000), timeout=timeout_s)
        for message in messages:
            if message.error() is not None:
                log.warning("consumer error: %s", message.error())
                continue
            if not self.pending:
                self.first_pending_at = time.monotonic()
            self.pending.append(message)
            self.pending_rows += (message.value() or b"").count(b"\n") + 1
            if self.pending_rows >= self.settings.sink_batch_rows:
                self.flush()  # a batch of the configured size, whatever one consume() returned
        if self.pending and time.monotonic() - self.first_pending_at >= self.settings.sink_batch_seconds:
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
        self.flush(wait=True)

    def _on_revoke(self, _consumer: Consumer, _partitions: list[TopicPartition]) -> None:
        # Write and commit what we hold before the partitions move to another sink.
        self.flush(wait=True)

    @staticmethod
    def _committed(err: KafkaError | None, _partitions: list[TopicPartition]) -> None:
        if err is not None:  # the next commit covers it; a replay would collapse anyway
            log.warning("commit failed; the next one covers it: %s", err)

    def flush(self, wait: bool = False) -> None:
        """Hand the pending batch to the writer (waits while it still writes the last one);
        ``wait``: also wait until it is written and committed."""
        if self.pending:
            self.rows_per_message = self.pending_rows / len(self.pending)
            batch, self.pending, self.pending_rows = self.pending, [], 0
            self._batches.put(batch)
        if wait:
            self._batches.join()
            self._check_writer()
            self._commit_written(wait=True)

    def _check_writer(self) -> None:
        if self._writer_error is not None:
            raise RuntimeError("the sink's writer failed") from self._writer_error

    # -- the writer thread --------------------------------------------------------------
    def _write_batches(self) -> None:
        while True:
            batch = self._batches.get()
            try:
                if batch is None:
                    return
                if self._writer_error is None:
                    self.write(batch)
            except BaseException as exc:
                log.exception("sink writer failed")
                self._writer_error = exc
                self._stop.set()
            finally:
                self._batches.task_done()

    def write(self, batch: list[Message]) -> None:
        """Write one batch, dead-letter what cannot be stored, then commit its offsets."""
        rows = 0
        for topic, writer in self.writers.items():
            messages = [m for m in batch if m.topic() == topic]
            # an erasure: the events before it are stored first, later ones after it
            for part, erasures in (segments(messages) if topic == self.settings.topic_events
                                   else [(messages, [])]):
                if part:
                    rows += self._write(topic, writer, part)
                if erasures:
                    self.erasures.apply(erasures, self._dead_letter)
        SINK_BATCH_ROWS.observe(rows)
        self.dead_letters.confirm()
        self._written.put(_next_offsets(batch))

    def _write(self, topic: str, writer: RowWriter, messages: list[Message]) -> int:
        """Check rows (unless the gateway did), dead-letter bad ones, insert the rest;
        returns the rows inserted."""
        chunks: list[bytes] = []  # a whole message's rows, or one checked row
        origin: list[Message] = []
        is_events = topic == self.settings.topic_events
        self._tallies = BatchTallies() if is_events else None
        for message in messages:
            value = message.value()
            if self._tallies is not None:
                self._tallies.message(message.partition() or 0, message.offset() or 0,
                                      message.timestamp()[1], value or b"")
            try:
                if topic == self.settings.topic_assets:
                    decode_asset(value)
                elif not value:
                    raise InvalidEvent("empty message (tombstone) on the events topic")
            except InvalidEvent as exc:
                self._dead_letter(message, str(exc),
                                  "invalid_asset" if not is_events else "empty")
                continue
            assert value is not None
            if is_events and not _from_gateway(message):
                for row in lines(value):
                    try:
                        decode(row)
                    except InvalidEvent as exc:
                        self._dead_letter(message, str(exc), "invalid_event", row)
                        continue
                    chunks.append(row)
                    origin.append(message)
            else:
                chunks.append(value)
                origin.append(message)

        def reject(i: int, row: bytes, reason: str) -> None:
            self._dead_letter(origin[i], reason, "clickhouse_refused", row)

        began = time.perf_counter()
        written = writer.write(chunks, reject)
        if chunks:
            SINK_INSERT_SECONDS.labels(writer.table).observe(time.perf_counter() - began)
            SINK_ROWS.labels(writer.table).inc(written)
        if is_events:
            self.rows_written += written
        if self._tallies is not None and self._tallies.tallies:  # before the commit: verify
            self.writers[self.settings.topic_tallies].write([self._tallies.rows()], _unstored)
        self._tallies = None
        return written

    def _dead_letter(self, message: Message, reason: str, category: str,
                     value: bytes | None = None) -> None:
        """To the DLQ with the free-text reason; the metric gets the bounded category."""
        self.dead_letters.send(message, reason, category, value=value)
        DLQ_MESSAGES.labels(category).inc()
        if self._tallies is not None and message.topic() == self.settings.topic_events:
            rows = (message.value() or b"") if value is None else value
            self._tallies.refused(message.partition() or 0, message.offset() or 0,
                                  rows.split(b"\n"))

    def _commit_written(self, wait: bool = False) -> None:
        """Commit what the writer has stored (on this thread: librdkafka's commit waits on
        the consumer's own queue, which a commit from another thread would block on).
        Asynchronous while consuming, so a broker that dies mid-commit cannot hang the sink
        (a synchronous commit to a dead coordinator never returned); ``wait`` (drain,
        revoke) waits for it."""
        latest: dict[tuple[str, int], TopicPartition] = {}
        while not self._written.empty():
            for tp in self._written.get():
                latest[(tp.topic, tp.partition)] = tp
        if not latest or self.abandoned:
            return
        try:
            if wait:
                self.consumer.commit(offsets=list(latest.values()), asynchronous=False)
            else:
                self.consumer.commit(offsets=list(latest.values()), asynchronous=True)
        except KafkaException as exc:
            # Lost the partitions meanwhile: their new owner replays; the table dedupes.
            log.warning("commit failed, batch will be replayed by the partitions' owner: %s", exc)


def _unstored(_index: int, row: bytes, reason: str) -> None:
    log.error("a tally row was refused (verify will under-count it): %s: %r", reason, row[:200])


def _next_offsets(batch: list[Message]) -> list[TopicPartition]:
    last: dict[tuple[str, int], int] = {}
    for message in batch:  # offsets grow within a partition: the last one wins
        last[(message.topic() or "", message.partition() or 0)] = message.offset() or 0
    return [TopicPartition(t, p, o + 1) for (t, p), o in last.items()]


def _from_gateway(message: Message) -> bool:
    headers: list[tuple[str, bytes]] | None = message.headers()  # type: ignore[assignment]
    return bool(headers) and any(k == WIRE_HEADER[0] for k, _ in headers or ())
