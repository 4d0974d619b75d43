"""The Faust app: the events topic in, the ``user-state`` table out.

Run with ``sluice agents``; several workers share the partitions (one consumer group,
the app id). State lives in the table's changelog topic (the source of truth) and in each
worker's local store: RocksDB under ``SLUICE_DATA_DIR/agents/<app id>/<slot>`` by default
(``SLUICE_AGENTS_STORE``), so it may exceed memory and a restarted worker reads only the
changelog's tail (see streams.store). A worker that takes over partitions recovers them
from the changelog, from the offset its store holds for them (or from the start).

Messages are consumed as raw bytes and processed in batches (``take_events``), a batch in
runs of at most ``SLUICE_AGENTS_BATCH_EVENTS`` events: one read and one write of the table
per user per run. A user's state is written to the changelog
partition of the source partition its events came from (the murmur2 partition of its
key, see services.shared.events): whoever owns a source partition recovers exactly the
states of its users, and answers the gateways' reads of them (streams.reads).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import aiokafka
import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential

from services.shared.erasures import is_erasure
from services.shared.events import KEY_SEPARATOR
from services.shared.gc_tuning import release_free_heap
from services.shared.kafka_security import REFUSED, faust_credentials
from services.shared.lag import LAG
from services.shared.metrics import (
    AGENTS_EVENTS,
    CONTENT_TYPE_LATEST,
    DUPLICATES,
    STATE_FRESHNESS,
    STATE_USERS,
    render,
)
from services.shared.publish import BrokerUnavailable, Publisher
from services.shared.ranking import ModelConfigs
from services.shared.settings import Settings
from services.shared.users import UserRecord
from streams.handover import install as install_handover
from streams.reads import OwnedReads, owned_partitions
from streams.reads import install as install_reads
from streams.rebalance import SourceOrder, keep_source_offsets_contiguous, not_done
from streams.recovery import HELD_S, check_highwaters, recover_when_told
from streams.slots import app_dir
from streams.stalls import Stalls
from streams.store import LocalStates
from streams.update import Dedup, apply_messages, chunks, erased, events_in, split_by_user

log = logging.getLogger(__name__)


def _log_changelog_retry(state: RetryCallState) -> None:
    log.warning("agents: the changelog did not take a batch's records (attempt %d), "
                "retrying: %s", state.attempt_number,
                state.outcome.exception() if state.outcome else "")


def _limit_fetch_wait(max_wait_ms: int) -> None:
    """Faust hard-codes the consumer's fetch_max_wait_ms at 1500 ms. A broker that holds a
    waiting fetch until that wait ends even when data arrives (Tansu does; measured: 390-650 ms
    per update) then delays every user update by that much. Bound the wait instead."""

    class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
            consumer = super()._create_worker_consumer(transport)
            consumer._fetch_max_wait_ms = max_wait_ms  # read when its fetcher starts
            return consumer

    faust_aiokafka.AIOKafkaConsumerThread = ConsumerThread  # type: ignore[misc]


SEEK_AGAIN_S = 1.0  # a seek back whose offset has not come by then is made again

RECEIVED_AT = b'"received_at":"'


def received_at(value: bytes) -> float | None:
    """The gateway's received_at of a message (a request's bundle: every line has the same),
    as epoch seconds; None when it has none."""
    start = value.find(RECEIVED_AT)
    if start < 0:
        return None
    start += len(RECEIVED_AT)
    try:
        return datetime.fromisoformat(value[start:value.index(b'"', start)].decode()).timestamp()
    except ValueError:
        return None


def _observe(batch: list[Any], users: int) -> None:
    """Metrics of a batch whose state the changelog acked: events (lines) read, each
    message's freshness (received_at -> now), the users held. Per message, not per event."""
    now = time.time()
    events = 0
    for event in batch:
        value = event.message.value or b""
        if is_erasure(value):  # not an event
            continue
        events += events_in(value)
        if (at := received_at(value)) is not None:
            STATE_FRESHNESS.observe(max(0.0, now - at))
    AGENTS_EVENTS.inc(events)
    STATE_USERS.set(users)


class Changes:
    """A run of source events applied: each changed user's new record (key, value; one per
    user), its partition and whether it is new, in the same order."""

    __slots__ = ("duplicates", "new", "partitions", "records", "run")

    def __init__(self, run: list[Any]) -> None:
        self.run = run
        self.records: list[tuple[bytes, bytes | None]] = []  # None: a tombstone
        self.partitions: list[int] = []
        self.new: list[bool] = []
        self.duplicates: dict[str, int] = {}  # per dialect: retried events left out

    def add(self, partition: int, key: bytes, value: bytes | None, new: bool) -> None:
        self.records.append((key, value))
        self.partitions.append(partition)
        self.new.append(new)


def _count_changelog_reads(app: faust.App, table: Any, stats: dict[str, int]) -> None:
    """Count the changelog records Faust's recovery reads for the table, as it reads them:
    for active partitions (a restart's or a takeover's cost) or standby ones (on /stats)."""
    on_event = table.on_changelog_event
    standbys: dict[int, set[Any]] = {}  # the standby partitions of the current generation

    async def counted(event: Any) -> None:
        generation = app.consumer_generation_id
        if generation not in standbys:
            standbys.clear()
            standbys[generation] = app.assignor.assigned_standbys()
        standby = event.message.tp in standbys[generation]
        stats["changelog_standby" if standby else "changelog_recovered"] += 1
        await on_event(event)

    table.on_changelog_event = counted


def create_app(settings: Settings, datadir: Path | None = None,
               told: TextIO | None = None) -> faust.App:
    """``datadir``: this worker's own directory (a claimed streams.slots.Slot); default
    slot 0 of the app id's directory under the data dir. ``told``: held, with no table
    recovery and no web page, until a line on it (streams.recovery.recover_when_told)."""
    held = told is not None
    _limit_fetch_wait(settings.agents_fetch_max_wait_ms)
    keep_source_offsets_contiguous(settings.topic_events)
    check_highwaters(settings)
    # not ./<app id>-data in whatever the cwd is
    datadir = datadir or app_dir(settings) / "0"
    datadir.mkdir(parents=True, exist_ok=True)  # Faust makes only the last level
    app = faust.App(
        settings.agents_app_id,
        broker=f"kafka://{settings.bootstrap}",
        broker_credentials=faust_credentials(settings),  # TLS / SASL, as every other client
        store=f"{settings.agents_store}://",
        datadir=str(datadir),
        table_standby_replicas=settings.agents_standby_replicas,
        topic_partitions=settings.events_partitions,
        topic_replication_factor=settings.replication_factor,
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=settings.agents_web_port != 0 and not held,
        web_port=settings.agents_web_port,
        web_bind=settings.http_host,
        canonical_url=settings.agents_advertised_url,  # the owner map names workers by it
        consumer_auto_offset_reset="earliest",
        stream_recovery_delay=HELD_S if held else 0.0,
        broker_session_timeout=settings.agents_session_timeout_s,
        broker_heartbeat_interval=0.5,
        broker_commit_interval=settings.agents_commit_interval_s,
        # what a worker holds of a backlog besides the batch it applies: one poll's records
        # and the stream's buffer (messages of up to a request's events each), what the
        # consumer fetched per partition
        broker_max_poll_records=max(1, settings.agents_batch_max // 2),
        stream_buffer_maxsize=max(1, settings.agents_batch_max // 2),
        consumer_max_fetch_size=4 * 1024 * 1024,
        producer_linger=0.005,
        producer_acks=-1,
    )
    events = app.topic(
        settings.topic_events, key_type=bytes, value_type=bytes,
        partitions=settings.events_partitions,
    )
    user_state = app.Table(
        "user-state", key_type=bytes, value_type=bytes,
        partitions=settings.events_partitions, use_partitioner=True,
    )
    states = LocalStates(user_state, settings)
    if told is not None:
        recover_when_told(app, told, settings, states)
    reads = OwnedReads(app, states, settings)
    install_reads(app, reads, standbys=settings.agents_standby_replicas > 0)
    if settings.agents_web_port != 0:
        install_handover(app, reads, settings.agents_advertised_url, settings.agents_handover_s)
    config_for = ModelConfigs(settings)
    dedup = Dedup(settings.dedup_window_s, settings.dedup_max_ids)
    # runs: batches, or parts of a batch of more than agents_batch_events events, applied;
    # changelog_recovered / changelog_standby: changelog records this worker read since it
    # started, recovering active partitions / following standby ones
    stats = {"messages": 0, "runs": 0, "users_written": 0, "changelog_recovered": 0,
             "changelog_standby": 0}
    changelog = Publisher(settings)
    order = SourceOrder(app, patience=10 * settings.agents_batch_max)
    _count_changelog_reads(app, user_state, stats)

    @app.agent(events, name="update-users")
    async def update_users(stream: faust.StreamT[Any]) -> None:
        """Batches of source messages -> one state write per changed user.

        The new records go to the table's changelog through confluent-kafka, awaited
        before the batch's events are acked (so before Faust commits their offsets), and
        then into the table's local store with the changelog offsets they landed at
        (streams.store.LocalStates): Faust's own changelog path cost ~230 us per write here,
        more than all the model's work."""
        async for batch in stream.take_events(  # type: ignore[attr-defined]
            settings.agents_batch_max, within=settings.agents_batch_seconds
        ):
            # only what continues each partition without a hole (streams.rebalance)
            fetched = batch
            batch, seeks = order.admit(fetched)
            if seeks:
                await order.seek_back(seeks)
            # applied in runs of at most agents_batch_events events (a worker's memory grows
            # with them); the batch is acked (so committed by Faust) once every run's state
            # is in the changelog and the store
            runs = applied = 0
            try:
                for run in chunks(batch, settings.agents_batch_events,
                                  lambda event: event.message.value):
                    runs += 1
                    changes = apply_run(run)
                    store(changes, await publish(changes))
                    applied += len(run)
            except BaseException:
                # take_events acks the whole batch on its way out, cancelled (a SIGTERM
                # during a publish) or failed: what was not applied must not be committed
                unapplied = batch[applied:]
                order.rewind(unapplied)
                not_done(fetched, unapplied)
                raise
            if runs > 1:  # a backlog's batch: what it parsed and built is free memory now
                release_free_heap()

    def apply_run(run: list[Any]) -> Changes:
        """A run's events applied to their users' records (one read and one write each)."""
        changes = Changes(run)
        for key, entries in split_by_user(event.message for event in run).items():
            partition = entries[-1].partition
            current = states.get(partition, key)
            if current is not None:
                record = UserRecord.decode(current)
            else:
                program_id, _, user_id = key.decode().partition(KEY_SEPARATOR)
                record = UserRecord(program_id, user_id)
            entries.sort(key=lambda entry: entry.offset)
            if apply_messages(record, entries, config_for, dedup=dedup,
                              duplicates=changes.duplicates):
                # an erased user with nothing after the erasure: a tombstone (streams.update)
                value = None if erased(record, entries) else record.encode()
                changes.add(partition, key, value, new=current is None and value is not None)
        return changes

    async def publish(changes: Changes) -> list[tuple[int, int]]:
        # a user's state goes to the changelog partition of its events' partition; a
        # broker that is down or stalled pauses the agent here (nothing of the batch is
        # acked, so nothing is committed): it must not crash it, which would stop it
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(BrokerUnavailable),
            wait=wait_exponential(multiplier=0.1, max=settings.sink_retry_max_backoff_s),
            before_sleep=_log_changelog_retry,
        ):
            with attempt:
                return await changelog.publish(changes.records,
                                               topic=settings.topic_user_state,
                                               partitions=changes.partitions)
        raise AssertionError("unreachable: AsyncRetrying retries until it returns")

    def store(changes: Changes, positions: list[tuple[int, int]]) -> None:
        # only now: a store ahead of its changelog would skip the replayed events after
        # a crash as applied, and their state would never reach the changelog
        states.commit([(p, k, v, n) for p, (k, v), n in zip(
            changes.partitions, changes.records, changes.new, strict=True)], positions)
        newest: dict[int, int] = {}
        for event in changes.run:
            message = event.message
            newest[message.partition] = max(message.offset, newest.get(message.partition, -1))
        reads.on_committed(newest)  # queue_updates=false waiters, answered by the owner
        stats["users_written"] += len(changes.records)
        stats["runs"] += 1
        stats["messages"] += len(changes.run)
        _observe(changes.run, states.users(owned_partitions(app, settings.topic_events)))
        for source, n in changes.duplicates.items():
            DUPLICATES.labels(source).inc(n)

    stalls = Stalls(app, settings, lambda: reads.serving, healed=order.healed)

    @app.timer(settings.agents_stall_s / 4)
    async def watch_stalls() -> None:
        await stalls.check()

    @app.timer(SEEK_AGAIN_S / 2)
    async def seek_again() -> None:
        """A seek back whose offset never came, and no message since to notice it by."""
        if late := order.overdue(SEEK_AGAIN_S):
            for tp, offset in late.items():
                log.warning("agents: partition %d did not bring offset %d %.0f s after a seek "
                            "back; seeking again", tp.partition, offset, SEEK_AGAIN_S)
            await order.seek_back(late)

    @app.page("/stats")
    async def get_stats(web: Any, request: Any) -> Any:
        # partitions: the source partitions this worker owns now (0 until it joined);
        # serving: those it has recovered and answers reads for; stalled: see streams.stalls;
        # copy_reads: reads it answered for partitions it does not serve (streams.reads)
        return web.json(stats | {"partitions": len(owned_partitions(app, settings.topic_events)),
                                 "serving": len(reads.serving),
                                 "stalled": sorted(stalls.stalled), "stall_heals": stalls.heals,
                                 "holes": order.holes, "copy_reads": reads.copy_reads})

    @app.page("/readyz")
    async def get_readyz(web: Any, request: Any) -> Any:
        # ready: every partition this worker owns is recovered, served and moving
        owned = owned_partitions(app, settings.topic_events)
        refused = REFUSED.recent()  # the changelog producer's or lag reader's last refusal
        ready = (not app.rebalancing and owned <= reads.serving and not stalls.stalled
                 and refused is None)
        return web.json({"ready": ready, "rebalancing": bool(app.rebalancing),
                         "owned": sorted(owned), "serving": sorted(reads.serving),
                         "stalled": sorted(stalls.stalled), "kafka": refused or "ok"},
                        status=200 if ready else 503)

    LAG.watch(settings, settings.agents_app_id, [settings.topic_events])

    @app.page("/metrics")
    async def get_metrics(web: Any, request: Any) -> Any:
        # off the event loop: the group's lag is read from the broker at scrape time
        body = await asyncio.to_thread(render)
        # aiohttp adds the charset itself and refuses one in content_type
        return web.bytes(body, content_type=CONTENT_TYPE_LATEST.split("; charset")[0])

    return app
