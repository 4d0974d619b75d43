"""Faust's table recovery reads a changelog partition up to its "highwater", which it takes
from the broker's ListOffsets (the log end offset). Tansu answers ListOffsets with the base
offset of the partition's last record batch + 1, not the offset after its last record
(measured: batches of 5 records at offsets 0-4 and 5-9 -> 6, not 10), while its Fetch
responses carry the right high watermark. Faust then stops recovering a partition at the
first record of its last batch: with a store that keeps its changelog offset (RocksDB), it
either raises ConsistencyError (the store holds a later offset than that "highwater") or
leaves the store without the last records, and the agent would then count from stale
user records.

So each recovery's highwaters are checked against a Fetch of the last record batch: the
larger of the two is used. Against Kafka both agree and this costs one fetch per recovery.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any, TextIO

import faust
from confluent_kafka import Consumer, TopicPartition
from faust.tables.recovery import Recovery
from faust.types import TP

from services.shared.kafka import client_config
from services.shared.settings import Settings
from services.shared.topic_read import TopicUnread, read_to_end
from streams.store import LocalStates

log = logging.getLogger(__name__)


def fetched_ends(settings: Settings, ends: Mapping[TP, int], timeout_s: float = 5.0) -> dict[TP, int]:
    """The log end offset of each partition as a Fetch of its last batch reports it (the
    high watermark), given ``ends`` as ListOffsets reported them. Partitions reported empty
    are left out; so is one whose fetch did not answer within ``timeout_s`` (logged)."""
    want = {TopicPartition(tp.topic, tp.partition): tp for tp, end in ends.items() if end > 0}
    if not want:
        return {}
    consumer = Consumer(client_config(settings) | {
        "group.id": f"sluice-recovery-{uuid.uuid4().hex}",
        "enable.auto.commit": False, "fetch.wait.max.ms": 10,
    })
    out: dict[TP, int] = {}
    try:
        consumer.assign([TopicPartition(c.topic, c.partition, ends[tp] - 1)
                         for c, tp in want.items()])
        deadline = time.monotonic() + timeout_s
        while len(out) < len(want) and time.monotonic() < deadline:
            consumer.consume(1000, 0.05)
            for c, tp in want.items():
                # known once a fetch answered (even one that held only control records)
                _, high = consumer.get_watermark_offsets(c, cached=True)
                if high >= 0:
                    out[tp] = high
    finally:
        consumer.close()
    for tp in want.values():
        if tp not in out:
            log.warning("recovery: no fetch of %s within %.0fs; its end offset is the "
                        "broker's ListOffsets (%d)", tp, timeout_s, ends[tp])
    return out


_PATCHED: list[Settings] = []


def check_highwaters(settings: Settings) -> None:
    """Make Faust's recovery (in this process) use the fetched end offsets where they are
    larger. Idempotent; the settings of the last call win (one app per process)."""
    if _PATCHED:
        _PATCHED[0] = settings
        return
    _PATCHED.append(settings)
    build = Recovery._build_highwaters

    async def _build_highwaters(self: Recovery, consumer: Any, tps: Any, destination: Any,
                                title: str) -> None:
        await build(self, consumer, tps, destination, title)
        # Faust keeps end - 1 (the offset of the last record) in ``destination``
        listed = {tp: destination[tp] + 1 for tp in tps}
        for tp, end in (await asyncio.to_thread(fetched_ends, _PATCHED[0], listed)).items():
            if end > listed[tp]:
                log.info("recovery: %s ends at %d (ListOffsets said %d)", tp, end, listed[tp])
                destination[tp] = end - 1

    Recovery._build_highwaters = _build_highwaters  # type: ignore[method-assign]


HELD_S = 10 * 365 * 86400.0  # Faust's recovery delay of a held worker: until told


LOAD_BATCH = 10_000  # changelog records per write batch of a bulk load


def load_changelog(settings: Settings, states: LocalStates, partitions: set[int]) -> int:
    """The user-state changelog's ``partitions``, from what the store holds on to their
    end, into the local store in large batches; returns the records read. Faust's recovery
    then finds nothing left to read: it takes one asyncio round per record, ~10k records/s
    here (a million carried users: 2-3 minutes), where this reads ~10x that. For a held
    worker (below), which applies nothing meanwhile."""
    start = {p: held + 1 for p in partitions if (held := states.copy_offset(p)) is not None}
    records: list[tuple[int, int, bytes, bytes | None]] = []
    read = 0
    for message in read_to_end(settings, settings.topic_user_state, batch=LOAD_BATCH,
                               start=start, partitions=partitions):
        key = message.key()
        if key is None:
            continue
        records.append((message.partition() or 0, message.offset() or 0, key, message.value()))
        if len(records) >= LOAD_BATCH:
            states.apply_changelog(records)
            read, records = read + len(records), []
    if records:
        states.apply_changelog(records)
    return read + len(records)


def recover_when_told(app: faust.App, told: TextIO, settings: Settings,
                      states: LocalStates) -> None:
    """Hold a worker created ``held`` (streams.app.create_app) before its table recovery
    until a line comes on ``told``; end of input stops it. Its web page starts then too
    (the worker it follows holds the port until then), and its store loads the changelog
    in bulk (:func:`load_changelog`) before Faust's recovery reads the rest.

    For the next worker of a broker roll (services.broker_roll): it starts, joins its group
    (Tansu holds a first JoinGroup for half the session timeout) and gets its partitions
    while the old agents still catch up, and recovers the carried user records, then
    applies what waited, once they are written. Faust starts each recovery round with a
    sleep of ``stream_recovery_delay`` and resumes no stream before the round ends; the line
    sets it to nothing and, if a round already sleeps it, starts the round again (as a
    rebalance would)."""

    told_yet, assigned_yet = threading.Event(), threading.Event()

    def assigned(sender: Any, /, *args: Any, signal: Any, **__: Any) -> None:
        assigned_yet.set()
        if not told_yet.is_set():  # args: the assigned partitions (sources, changelogs and Faust's)
            log.info("agents: held with %d partitions assigned; recovering once told",
                     len(args[0]) if args else 0)

    async def opened() -> None:
        told_yet.set()
        try:
            if settings.agents_web_port:
                await app.add_runtime_dependency(app.web)
            recovery: Recovery = app.tables.recovery  # type: ignore[attr-defined]
            if states.on_disk and (partitions := {tp.partition for tp in recovery.active_tps}):
                await load(recovery, partitions)
            recovery.recovery_delay = 0.0
            if recovery.active_tps or recovery.standby_tps:  # assigned: a round sleeps
                recovery.signal_recovery_start.set()
            log.info("agents: told to recover")
        except Exception as exc:  # e.g. its port still held: `sluice up` starts a new worker
            log.exception("agents: a held worker could not begin")
            await app.crash(exc)

    async def load(recovery: Recovery, partitions: set[int]) -> None:
        began = time.monotonic()
        try:
            loaded = await asyncio.to_thread(load_changelog, settings, states, partitions)
            log.info("agents: loaded %d changelog records in %.1f s", loaded,
                     time.monotonic() - began)
        except TopicUnread as exc:  # what it wrote stands: Faust's recovery reads the rest
            log.warning("agents: the changelog's bulk load stopped (%s)", exc)
        for tp in recovery.active_tps:  # Faust took them at the assignment, before
            if (offset := states.copy_offset(tp.partition)) is not None and offset >= 0:
                recovery.active_offsets[tp] = offset

    def wait() -> None:
        if told.readline():
            # told before its first assignment (a roll's carry can be done before the worker
            # has even started): begin once it has its partitions. Begun before the app ran,
            # its start stalled (measured: held at creating Faust's assignor topic for good)
            assigned_yet.wait()
            asyncio.run_coroutine_threadsafe(opened(), app.loop)
        else:  # the roll gave this worker up: a clean stop leaves the group at once
            log.info("agents: told nothing (end of input); stopping")
            os.kill(os.getpid(), signal.SIGTERM)

    app.on_partitions_assigned.connect(assigned)
    threading.Thread(target=wait, name="recover-when-told", daemon=True).start()
