"""User reads at the worker that owns the user: the agents' side of the read path.

Gateways keep no per-user state. A read of a user (label weights, recommendations, a
profile) or a ``queue_updates=false`` wait goes to the worker whose store holds the
user's partition, on the worker's web port:

- ``GET /internal/owners``: which worker URL owns which source partition, as Faust's
  assignor gave it to every member at the last rebalance (``changelog_distribution``).
- ``GET /internal/users?partition=P&key=K``: the user's record as the changelog has it
  (the stored bytes, decoded by the gateway, which ranks with its own catalog), or 404.
  With ``&copy=1`` (the gateway's fallback while the owner cannot answer): from this
  worker's copy of the partition, if it has one that holds every record the changelog
  partition holds (see :meth:`OwnedReads.copy`).
- ``POST /internal/applied`` ``{"timeout_s": t, "targets": [[P, O, K], ...]}``: answers
  once every user K holds source message (P, O) in its durable state, or after t seconds
  with ``{"applied": false}``.

A worker answers only for partitions it owns *and* has recovered: from a rebalance's
start until its table recovery ends it answers ``503`` (``moved``: the gateway asks for
the owner map again), so a read never sees a store that is behind or no longer its own.
Waiters of a revoked partition are answered ``moved`` too and move to the new owner.

While a partition moves, nobody applies its events: from the rebalance's start until the
new owner's recovery ends (Faust announces the end before it resumes the streams). Its
state is then exactly the changelog's, and any copy that holds the changelog's last record
may answer reads: the old owner's store (kept when Faust drops it), a standby's, or, when
the owner was SIGKILLed, a standby until the group notices. A copy checks it at each read
against the changelog's end offset (ListOffsets): a copy behind it, e.g. the old owner's
once the new owner wrote, answers ``moved``. On Tansu, whose ListOffsets names the last
record *batch*, a standby part-way through that batch may still answer, behind by part of
one batch.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections import defaultdict
from typing import Any

import faust
import orjson
from confluent_kafka import Consumer, KafkaException, TopicPartition
from faust.types import TP
from faust.web import View

from services.shared.kafka import client_config
from services.shared.metrics import COPY_READS
from services.shared.settings import Settings
from services.shared.users import UserRecord
from streams.store import LocalStates

MOVED = 503  # not (or not yet) this worker's partition: ask for the owners again


def owned_partitions(app: faust.App, topic: str) -> set[int]:
    """The partitions of the source ``topic`` (the events) this worker owns in the current
    generation (the changelog's partitions it owns carry the same numbers: a user's state
    lives in its partition). Only that topic's: the assignor's actives also hold partition 0
    of Faust's own ``__assignor-__leader`` topic, which made the leader claim partition 0."""
    return {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic}


class OwnedReads:
    """What this worker serves now, and the waiters for source offsets to be applied."""

    def __init__(self, app: faust.App, states: LocalStates, settings: Settings) -> None:
        self.app, self.states, self.changelog_topic = app, states, settings.topic_user_state
        self.source_topic = settings.topic_events
        self.ends = ChangelogEnds(settings)
        self.copy_reads = 0  # answered from a copy (on /stats)
        self.serving: frozenset[int] = frozenset()  # recovered partitions of this generation
        # what it served when the last rebalance began: its copies of them were complete then
        self.was_serving: frozenset[int] = frozenset()
        self.applied: dict[int, int] = {}  # partition -> newest source offset in the store
        self._waiters: dict[int, list[tuple[int, asyncio.Future[None]]]] = defaultdict(list)
        app.on_partitions_revoked.connect(self._on_revoked)
        app.on_rebalance_complete.connect(self._on_recovered)

    def _on_revoked(self, sender: Any, /, *_: Any, signal: Any, **__: Any) -> None:
        """A rebalance starts: serve nothing until recovery ends; move every waiter on."""
        if self.serving:  # (a rebalance that starts again before recovery ended: kept)
            self.was_serving = self.serving
        self.serving = frozenset()
        self.applied.clear()
        waiters, self._waiters = self._waiters, defaultdict(list)
        for pending in waiters.values():
            for _offset, future in pending:
                if not future.done():
                    future.set_exception(Moved())

    def stop_serving(self) -> frozenset[int]:
        """The worker stops (Faust sends no revoke then): what it served is answered as
        copies from now on, checked against the changelog like any other (the new owner may
        write past it), and its waiters move on. Returns those partitions."""
        self._on_revoked(self.app, signal=None)
        return self.was_serving

    def _on_recovered(self, sender: Any, /, *_: Any, signal: Any, **__: Any) -> None:
        self.serving = frozenset(owned_partitions(self.app, self.source_topic))

    def on_committed(self, newest: dict[int, int]) -> None:
        """partition -> newest source offset of a batch whose state is in the store now."""
        for partition, offset in newest.items():
            if offset > self.applied.get(partition, -1):
                self.applied[partition] = offset
            pending = self._waiters.get(partition)
            if not pending:
                continue
            offset = self.applied[partition]
            still = []
            for wanted, future in pending:
                if future.done():
                    continue
                if wanted <= offset:
                    future.set_result(None)
                else:
                    still.append((wanted, future))
            self._waiters[partition] = still

    def owners(self) -> dict[str, Any]:
        """partition -> owner URL, as every member of the group was told."""
        by_partition = {
            partition: url
            for url, topics in self.app.assignor.tables_metadata().items()
            for topic, partitions in topics.items() if topic == self.changelog_topic
            for partition in partitions
        }
        return {"generation": self.app.consumer_generation_id,
                "rebalancing": bool(self.app.rebalancing),
                "owners": {str(p): url for p, url in sorted(by_partition.items())}}

    def record(self, partition: int, key: bytes) -> bytes | None:
        if partition not in self.serving:
            raise Moved()
        return self.states.get(partition, key)

    async def copy(self, partition: int, key: bytes) -> bytes | None:
        """The record from this worker's copy of a partition it does not serve (now), if
        that copy holds the changelog partition's last record (see the module's docstring);
        else Moved."""
        if partition in self.serving:
            return self.states.get(partition, key)
        held = self.states.copy_offset(partition)
        if held is None or not self._was_complete(partition, held):
            raise Moved()
        end = await self.ends.end(self.changelog_topic, partition)
        if end is None or end > held + 1:
            raise Moved()
        self.copy_reads += 1
        COPY_READS.inc()
        return self.states.copy_get(partition, key)

    def _was_complete(self, partition: int, held: int) -> bool:
        """Whether this copy held the whole changelog partition at some point: it served the
        partition until the rebalance began, or as a standby it reached the end offset its
        recovery started from. Never a copy part-way through a recovery: on Tansu one
        record batch may hold a partition's whole changelog, so the end offset alone would
        not tell it (the check in :meth:`copy` then finds any batch written since)."""
        if partition in self.was_serving:
            return True
        recovery = self.app.tables.recovery  # type: ignore[attr-defined]
        standby_end = recovery.standby_highwaters.get(TP(self.changelog_topic, partition))
        return standby_end is not None and held >= standby_end

    async def wait(self, targets: list[tuple[int, int, bytes]], timeout_s: float) -> bool:
        """Whether every (partition, offset, key) is applied within ``timeout_s``."""
        loop = asyncio.get_running_loop()
        futures = []
        for partition, offset, key in targets:
            if partition not in self.serving:
                raise Moved()
            if offset <= self.applied.get(partition, -1):
                continue
            # applied before this worker took the partition over: the record says so
            current = self.states.get(partition, key)
            if current is not None and UserRecord.decode(current).applied(partition, offset):
                continue
            future: asyncio.Future[None] = loop.create_future()
            self._waiters[partition].append((offset, future))
            futures.append(future)
        if not futures:
            return True
        done, pending = await asyncio.wait(futures, timeout=timeout_s)
        for future in pending:
            future.cancel()
        for future in done:
            if (error := future.exception()) is not None:
                raise error
        return not pending


class Moved(Exception):
    """The partition is not served here (now): rebalancing, recovering or someone else's."""


class ChangelogEnds:
    """Changelog partitions' end offsets, asked of the broker (ListOffsets) on a client of
    its own: Faust's consumer is busy rebalancing exactly when copies are read."""

    TIMEOUT_S = 1.0

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._consumer: Consumer | None = None
        self._lock = threading.Lock()  # the first reads may come at once

    async def end(self, topic: str, partition: int) -> int | None:
        """The partition's end offset; None when the broker did not answer in time."""
        return await asyncio.to_thread(self._end, topic, partition)

    def _end(self, topic: str, partition: int) -> int | None:
        with self._lock:
            if self._consumer is None:
                self._consumer = Consumer(client_config(self.settings) | {
                    "group.id": f"sluice-reads-{uuid.uuid4().hex}",
                    "enable.auto.commit": False})
        try:
            _, high = self._consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=self.TIMEOUT_S, cached=False)
        except KafkaException:  # the broker is away: no copy can be vouched for
            return None
        return int(high)


def _moved(web: Any) -> Any:
    return web.json({"detail": "moved"}, status=MOVED, headers={"Retry-After": "1"})


STANDBY_APPLY_S = 0.2  # the most a standby copy's store trails what it has read


def install(app: faust.App, reads: OwnedReads, standbys: bool) -> None:
    """The internal read pages on the worker's web server; with ``standbys``, what this
    worker reads as a standby lands in its store within STANDBY_APPLY_S: Faust applies a
    standby's records only per 1,000 (its standby_buffer_size) or at a rebalance, and a
    copy behind the changelog cannot answer for an owner that died (``copy``)."""

    if standbys:
        @app.timer(interval=STANDBY_APPLY_S)
        async def apply_standby_records() -> None:
            app.tables.recovery.flush_buffers()  # type: ignore[attr-defined]

    @app.page("/internal/owners")
    async def owners(web: Any, request: Any) -> Any:
        return web.json(reads.owners())

    @app.page("/internal/users")
    async def user(web: Any, request: Any) -> Any:
        try:
            partition = int(request.query["partition"])
            key = request.query["key"].encode()
        except (KeyError, ValueError):
            return web.json({"detail": "partition and key are required"}, status=400)
        try:
            if request.query.get("copy") == "1":
                raw = await reads.copy(partition, key)
            else:
                raw = reads.record(partition, key)
        except Moved:
            return _moved(web)
        if raw is None:
            return web.json({"detail": "no such user"}, status=404)
        return web.bytes(raw, content_type="application/json")

    @app.page("/internal/applied")
    class Applied(View):
        async def post(self, request: Any) -> Any:
            try:
                body = orjson.loads(await self.web.read_request_content(request))
                timeout_s = min(float(body["timeout_s"]), 60.0)
                targets = [(int(p), int(o), str(k).encode()) for p, o, k in body["targets"]]
            except (KeyError, ValueError, TypeError, orjson.JSONDecodeError):
                return self.json({"detail": "timeout_s and targets [[partition, offset, key]] "
                                  "are required"}, status=400)
            try:
                applied = await reads.wait(targets, timeout_s)
            except Moved:
                return _moved(self)
            return self.json({"applied": applied})

    @app.page("/internal/commit")
    class Commit(View):
        async def post(self, request: Any) -> Any:
            """Commit what this worker applied now, not at its next commit tick (the same
            commit, so the same guarantees): a roll of the embedded broker waits for the
            old agents' commits (services.broker_roll), ~0.5 s on average otherwise."""
            return self.json({"committed": await app.consumer.commit()})
