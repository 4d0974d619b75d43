"""Backpressure from lag: the gateway refuses events while its consumers are too far behind.

Without it the gateway acks whatever comes while the sink or the agents fall minutes
behind: ``queue_updates=false`` callers then wait into 504s, and on the embedded broker,
which keeps every event in memory, the backlog is memory until the box dies. So a thread
reads, every SLUICE_BACKPRESSURE_CHECK_S, each consumer group's lag (services.shared.lag)
and the embedded broker's resident memory, and sets ``reason``; while it is set every
request that would publish events is refused before anything is published
(:class:`Backpressured`, a :class:`BrokerUnavailable`: 503 + Retry-After in each dialect's
shape, 429 where the vendor says "slow down" that way), and /readyz says why.

- Lag is counted in events: a group's lag in messages times the events per message this
  gateway has been publishing (its own group commit's mean; a gateway that has published
  nothing yet counts one event a message, so it never refuses on a guess). A group that
  never committed (no sink or agents deployed for it) is not waited for.
- It lets go at 80% of the bound (hysteresis: no flapping at the edge), by itself as the
  lag drains. The broker's memory never shrinks by itself (Tansu frees only deleted
  topics): `sluice up` rolls it over to a new one before this (services.broker_roll), so
  at 90% of SLUICE_EMBEDDED_BROKER_MAX_MB the refusal lasts until a roll or a restart of
  `sluice up` frees it (rolls off, or a carried state that large).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException

from services.shared.lag import group_lag
from services.shared.metrics import BACKPRESSURE, BROKER_BYTES, LAG_EVENTS
from services.shared.publish import BrokerUnavailable
from services.shared.settings import Settings

log = logging.getLogger(__name__)

RELEASE_AT = 0.8  # of a bound: refusing stops once the lag is back under it
BROKER_SHARE = 0.9  # of SLUICE_EMBEDDED_BROKER_MAX_MB: refusing starts there


class Backpressured(BrokerUnavailable):
    """Events refused before publishing: consumers are too far behind; retry later."""


@dataclass(frozen=True, slots=True)
class Reading:
    lag_events: dict[str, int]  # group -> its lag in events (estimated)
    broker_bytes: int | None  # None: not embedded, or not known


def judge(reading: Reading, settings: Settings, refusing: bool) -> str | None:
    """Why events must be refused now (None: they may come), given whether they were
    refused at the last reading (the lag bound lets go only at RELEASE_AT of it)."""
    mb = settings.embedded_broker_max_mb
    if mb and reading.broker_bytes is not None and reading.broker_bytes >= mb * BROKER_SHARE * 2**20:
        return (f"the embedded broker holds {reading.broker_bytes / 2**20:,.0f} MiB in memory, "
                f"{BROKER_SHARE:.0%} of SLUICE_EMBEDDED_BROKER_MAX_MB={mb}; a roll of the broker "
                "(SLUICE_EMBEDDED_BROKER_ROLL_SHARE) or a restart of `sluice up` releases it "
                "(nothing acked is lost)")
    bound = settings.max_lag_events
    if not bound or not reading.lag_events:
        return None
    group, lag = max(reading.lag_events.items(), key=lambda item: item[1])
    if lag > bound or (refusing and lag > bound * RELEASE_AT):
        return (f"consumer group {group!r} is ~{lag:,} events behind (SLUICE_MAX_LAG_EVENTS="
                f"{bound:,}); events are taken again once it is under {int(bound * RELEASE_AT):,}")
    return None


class Backpressure:
    """The gateway's refusal state, kept current by a thread. ``reason`` is read on the hot
    path (one attribute); ``published(events, messages)`` is told by the group commit."""

    def __init__(self, settings: Settings, readers: Mapping[str, Callable[[], Consumer]],
                 broker_bytes: Callable[[], int | None] | None = None) -> None:
        """``readers``: group -> its offsets reader (the gateway's GroupProgress makes them
        for wait=stored and wait=user: the same groups, read by the same clients)."""
        self.settings = settings
        self.readers = readers
        self.broker_bytes = broker_bytes
        self.reason: str | None = None
        self._events, self._messages = 0, 0  # published by this gateway (group commit)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def published(self, events: int) -> None:
        """One message of ``events`` events produced (the events-per-message mean)."""
        self._events += events
        self._messages += 1

    @property
    def events_per_message(self) -> float:
        return self._events / self._messages if self._messages else 1.0

    def start(self) -> Backpressure:
        s = self.settings
        if s.max_lag_events or (s.embedded_broker_max_mb and self.broker_bytes is not None):
            self._thread = threading.Thread(target=self._run, name="backpressure", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.settings.backpressure_check_s):
            self.check()

    def check(self) -> None:
        """One reading; sets ``reason`` and the metrics (an unreadable lag changes nothing:
        a broker that is away refuses events by itself)."""
        try:
            reading = self.read()
        except KafkaException as exc:
            log.debug("backpressure: lag unknown: %s", exc)
            return
        reason = judge(reading, self.settings, self.reason is not None)
        if reason != self.reason and (reason is None or self.reason is None):
            if reason:
                log.warning("refusing events (503, retry later): %s", reason)
            else:
                log.warning("taking events again: the consumers have caught up")
        self.reason = reason
        BACKPRESSURE.set(1 if reason else 0)
        LAG_EVENTS.set(max(reading.lag_events.values(), default=0))
        if reading.broker_bytes is not None:
            BROKER_BYTES.set(reading.broker_bytes)

    def read(self) -> Reading:
        s = self.settings
        lags: dict[str, int] = {}
        if s.max_lag_events:
            per_message = self.events_per_message
            for group, reader in self.readers.items():
                rows = group_lag(reader(), group, [s.topic_events])
                if any(r.committed >= 0 for r in rows):  # a group that runs
                    lags[group] = int(sum(r.lag for r in rows) * per_message)
        broker = self.broker_bytes() if self.broker_bytes is not None else None
        return Reading(lags, broker)
