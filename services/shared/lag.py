"""Consumer lag of a group: its committed offsets vs each partition's end, read from Kafka.

``group_lag()`` answers for any group (``sluice status`` uses it); ``LAG`` is the one
collector behind ``sluice_consumer_lag{group,topic,partition}``: a role ``watch``es its own
group while it runs, and every scrape asks the broker then (nothing is polled between
scrapes). A partition the group never committed lags by everything it retains. Every
replica of a role reports its whole group (the offsets are the group's): dashboards take
``max`` over replicas, never ``sum``.

Tansu's high watermark lags the log end: it reports the end of the last produced batch's
first message (measured: 10 messages in one batch -> high watermark 1; one message per
batch is exact). Against Tansu the lag is therefore a lower bound, never negative; against
Kafka it is exact.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException, TopicPartition
from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.shared.kafka import client_config
from services.shared.settings import Settings

log = logging.getLogger(__name__)

LAG_NAME = "sluice_consumer_lag"
LAG_HELP = ("Messages of a partition the consumer group has not committed yet: the "
            "partition's end minus the group's committed offset (its start when none).")


@dataclass(frozen=True, slots=True)
class PartitionLag:
    group: str
    topic: str
    partition: int
    committed: int  # -1: nothing committed yet
    end: int
    lag: int


def offsets_reader(settings: Settings, group: str) -> Consumer:
    """A consumer that never subscribes: it only reads ``group``'s offsets (no join)."""
    return Consumer(client_config(settings) | {
        "group.id": group, "enable.auto.commit": False,
        "client.id": f"sluice-lag-{uuid.uuid4().hex[:8]}"})


def group_lag(reader: Consumer, group: str, topics: Iterable[str],
              timeout_s: float = 2.0) -> list[PartitionLag]:
    """Lag per partition of ``topics`` for the group ``reader`` was made for. Raises
    KafkaException when the broker does not answer."""
    partitions: list[TopicPartition] = []
    for topic in topics:
        meta = reader.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if meta is None or meta.error is not None:
            continue
        partitions += [TopicPartition(topic, p) for p in sorted(meta.partitions)]
    if not partitions:
        return []
    committed = reader.committed(partitions, timeout=timeout_s)
    out = []
    for tp in committed:
        low, high = reader.get_watermark_offsets(
            TopicPartition(tp.topic, tp.partition), timeout=timeout_s)
        done = tp.offset if tp.error is None and tp.offset >= 0 else -1
        lag = max(0, high - (done if done >= 0 else low))
        out.append(PartitionLag(group, tp.topic, tp.partition, done, high, lag))
    return out


class _Watch:
    def __init__(self, settings: Settings, group: str, topics: list[str]) -> None:
        self.settings, self.group, self.topics = settings, group, topics
        self._reader: Consumer | None = None  # made at the first scrape: no client until then

    def lag(self) -> list[PartitionLag]:
        if self._reader is None:
            self._reader = offsets_reader(self.settings, self.group)
        return group_lag(self._reader, self.group, self.topics)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()


class LagCollector(Collector):
    """``sluice_consumer_lag`` for every group this process watches, read at scrape time."""

    def __init__(self) -> None:
        self._watches: list[_Watch] = []
        self._lock = threading.Lock()  # a scrape at a time: the readers are not shared

    def watch(self, settings: Settings, group: str, topics: list[str]) -> object:
        """Report ``group``'s lag on ``topics`` until ``unwatch(handle)``."""
        handle = _Watch(settings, group, topics)
        with self._lock:
            self._watches.append(handle)
        return handle

    def unwatch(self, handle: object) -> None:
        with self._lock:
            if handle in self._watches:
                self._watches.remove(handle)  # type: ignore[arg-type]
                handle.close()  # type: ignore[attr-defined]

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(LAG_NAME, LAG_HELP, labels=("group", "topic", "partition"))

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(LAG_NAME, LAG_HELP, labels=("group", "topic", "partition"))
        with self._lock:
            for w in self._watches:
                try:
                    rows = w.lag()
                except KafkaException as exc:
                    log.debug("lag of %s unknown: %s", w.group, exc)
                    continue
                for r in rows:
                    family.add_metric((r.group, r.topic, str(r.partition)), r.lag)
        yield family


LAG = LagCollector()
REGISTRY.register(LAG)
