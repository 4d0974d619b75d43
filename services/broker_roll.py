"""Rolling the embedded broker: what lets ``sluice up`` run for days on Tansu.

Tansu keeps every message in memory and frees it only when its topic is deleted (retention
is not enforced, DeleteRecords is not implemented). So once the broker holds
SLUICE_EMBEDDED_BROKER_ROLL_SHARE of SLUICE_EMBEDDED_BROKER_MAX_MB, the supervisor
(services.embedded) rolls it over: a planned generation that carries over only what still
counts.

1. The next broker starts beside the old one, on a port of its own (the configured port is a
   front that forwards to the current one: services.shared.broker.BrokerFront), and gets
   the asset catalog and the dead letters with their markers (:func:`copy_assets`,
   :func:`copy_letters`), before anything else is written to it.
2. The next generation's gateway app takes every new request from then on, publishing to
   the next broker; the old app answers what it took, then ends (services.embedded_gateway).
   Requests never wait for a roll. Waits for user state (``queue_updates=false``,
   ``wait=user``) hold until the next agents own their partitions; reads are answered by
   the old agents meanwhile (services.gateway.user_states: held, not failed). The catalog
   records the old app wrote meanwhile follow (an asset's newest ``updated_at`` wins, in
   whatever order its records come).
3. The next sink starts at once, and so does the next agents worker, gated: it does its
   imports and then waits (services.embedded_processes.open_gate).
4. On the old broker, which nobody writes to any more, the agents apply what is left: the
   roll waits until their group's committed offsets reach every events partition's end
   (read with a Fetch: Tansu's ListOffsets trails its last batch, streams.recovery). The
   agents commit an offset only once its events' state is in the changelog.
5. Each user's newest record is read from the old changelog, the old agents stop, and the
   records go into the next changelog with their source position reset to "nothing applied
   yet" (everything of the old events topic is in them, and the next one holds only later
   events). Reads are answered from those records until the next agents own every
   partition. The next worker's gate opens: with fresh local stores, it recovers the
   carried records and applies the events taken since step 2 from offset 0.
6. Meanwhile the old sink drains into ClickHouse and stops; the dead letters it wrote
   meanwhile follow the first copy (every record of the dead-letter topic and its two
   marker topics, verbatim, in order, so letters keep their partition:offset names). Then
   the old broker stops, and its memory is free.

Nothing acked is lost or counted twice: every event acked before the switch is in
ClickHouse (step 6) and in the carried state (steps 4, 5), and the events topic the next
agents read holds only later ones. Agents that do not catch up within the wait (or die meanwhile) make
the roll rebuild user state from ClickHouse instead, once the old sink drained (the next
one paused meanwhile), as a start does: slower, equally right.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from faust.types import TP

from services.shared.kafka import (
    client_config,
    ensure_compacted_topic,
    produce_waiting,
    producer_config,
)
from services.shared.lag import group_lag, offsets_reader
from services.shared.settings import Settings
from services.shared.topic_read import read_to_end
from services.shared.users import UserRecord
from services.sink.erased_letters import erased_topic
from services.sink.letters import DeadLetter, read_all
from services.sink.replay import marker_topic
from streams.rebuild import Rebuilt
from streams.recovery import fetched_ends

log = logging.getLogger(__name__)

MIB = 2**20
# after a roll, the next waits until the broker holds this share of the bound more than
# right after it: a carried state near the roll share must not roll the broker again at once
REGROW_SHARE = 0.2


def roll_at(settings: Settings, held_after_roll: int = 0) -> int | None:
    """The broker memory (bytes) at which ``sluice up`` rolls it; None: it never does."""
    share, mb = settings.embedded_broker_roll_share, settings.embedded_broker_max_mb
    if not share or not mb:
        return None
    return max(int(share * mb * MIB), held_after_roll + int(REGROW_SHARE * mb * MIB))


def agents_caught_up(settings: Settings, timeout_s: float,
                     gone: Callable[[], bool] = lambda: False) -> bool:
    """Whether the agents' group committed every events partition to its end within
    ``timeout_s`` (nothing must be publishing meanwhile); False at once when ``gone()``
    says the worker that would get there died."""
    topic, group = settings.topic_events, settings.agents_app_id
    consumer = Consumer(client_config(settings) | {"group.id": group, "enable.auto.commit": False})
    try:
        partitions = [TopicPartition(topic, p) for p in range(settings.events_partitions)]
        listed = {TP(topic, tp.partition): consumer.get_watermark_offsets(tp, timeout=10)[1]
                  for tp in partitions}
        ends = listed | fetched_ends(settings, listed)
        deadline = time.monotonic() + timeout_s
        while True:
            # a partition the group never committed: -1001 (OFFSET_INVALID)
            committed = {tp.partition: max(tp.offset, 0)
                         for tp in consumer.committed(partitions, 10)}
            behind = {tp.partition: end - committed.get(tp.partition, 0)
                      for tp, end in ends.items() if committed.get(tp.partition, 0) < end}
            if not behind:
                return True
            if time.monotonic() > deadline or gone():
                log.warning("roll: the agents are still behind by %s messages (per partition) "
                            "after %.1f s%s", behind, timeout_s - (deadline - time.monotonic()),
                            "; the worker died or sluice up is stopping" if gone() else "")
                return False
            time.sleep(0.1)
    finally:
        consumer.close()


def sink_caught_up(settings: Settings, timeout_s: float) -> bool:
    """Whether the sink's group consumed what the broker holds (lag zero) within
    ``timeout_s``; True at once when the broker does not answer (nothing more can be
    fetched)."""
    topics = [settings.topic_events, settings.topic_assets]
    reader = offsets_reader(settings, settings.sink_group)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            try:
                behind = sum(p.lag for p in group_lag(reader, settings.sink_group, topics))
            except KafkaException:
                return True
            if behind == 0:
                # Tansu's end offsets may trail a batch: one more batch window
                time.sleep(settings.sink_batch_seconds + 0.1)
                return True
            time.sleep(0.1)
        return False
    finally:
        reader.close()


def carried_topics(settings: Settings) -> dict[str, str]:
    """The topics copied verbatim: dead letters and the markers of what became of them."""
    return {"dead letters": settings.topic_dlq, "replayed": marker_topic(settings),
            "erased": erased_topic(settings)}


def newest_records(settings: Settings, topic: str, after: dict[int, int] | None = None,
                   timeout_s: float = 60.0) -> tuple[dict[bytes, tuple[int, bytes]], dict[int, int]]:
    """key -> (partition, value) of each key's newest record in ``topic`` (a tombstone drops
    its key), from ``after``'s positions on if given; and the position after the last
    record read, per partition (``after``'s where none was)."""
    newest: dict[bytes, tuple[int, bytes]] = {}
    ends = dict(after or {})
    for message in read_to_end(settings, topic, timeout_s, batch=10_000):
        partition, offset, key = message.partition() or 0, message.offset() or 0, message.key()
        if offset < (after or {}).get(partition, 0) or key is None:
            continue
        if (value := message.value()) is None:
            newest.pop(key, None)
        else:
            newest[key] = (partition, value)
        ends[partition] = max(ends.get(partition, 0), offset + 1)
    return newest, ends


def read_users(settings: Settings, timeout_s: float = 60.0) -> dict[bytes, tuple[int, bytes]]:
    """Each user's newest record in the changelog; an erased user's tombstone drops it."""
    return newest_records(settings, settings.topic_user_state, timeout_s=timeout_s)[0]


def write_users(settings: Settings, users: dict[bytes, tuple[int, bytes]]) -> Rebuilt:
    """Into the next broker's changelog, before its agents start: the users' records with
    nothing of its events topic applied yet."""
    producer = Producer(producer_config(settings))
    result = Rebuilt()
    for key, (partition, raw) in users.items():
        record = UserRecord.decode(raw)
        record.partition, record.offset = partition, -1
        produce_waiting(producer, settings.topic_user_state, record.encode(), key,
                        partition=partition)
        result.users += 1
        result.events += record.events
    if producer.flush(60) > 0:
        raise RuntimeError("the next broker did not take the carried user state")
    return result


def copy_letters(old: Settings, new: Settings, after: dict[str, dict[int, int]] | None = None,
                 timeout_s: float = 30.0) -> dict[str, dict[int, int]]:
    """The dead letters and their markers, verbatim and in order, from the old broker to
    the next, or with ``after`` (what a first copy returned) those written since. Returns
    each topic's end per partition. The first copy comes before the next sink writes any
    letter, so letters keep their names (partition:offset), which markers and replays use;
    one the old sink wrote while it drained can only follow the next sink's own, and a
    WARNING names it when its name changed."""
    ends: dict[str, dict[int, int]] = {}
    producer = Producer(producer_config(new))
    for topic, to in zip(carried_topics(old).values(), carried_topics(new).values(), strict=True):
        since = (after or {}).get(topic, {})
        ends[topic] = dict(since)
        letters = [letter for letter in read_all(old, topic, timeout_s)
                   if letter.offset >= since.get(letter.partition, 0)]
        if not letters:
            continue
        if topic != old.topic_dlq:  # the markers' topics exist once something was marked
            ensure_compacted_topic(new, to)
        for letter in letters:
            produce_waiting(producer, to, letter.value, letter.key,
                            headers=list(letter.headers.items()), partition=letter.partition,
                            timestamp_ms=letter.timestamp_ms)
            ends[topic][letter.partition] = letter.offset + 1
        if producer.flush(timeout_s) > 0:
            raise RuntimeError(f"the next broker did not take the records of {to}")
        if after is not None:
            _name_moves(new, to, letters)
    return ends


def _name_moves(new: Settings, topic: str, copied: list[DeadLetter]) -> None:
    """WARNING for each letter copied late whose name changed in the next broker."""
    wanted = {(letter.partition, letter.value, letter.key): letter.ref for letter in copied}
    for letter in read_all(new, topic):
        was = wanted.pop((letter.partition, letter.value, letter.key), None)
        if was is not None and was != letter.ref:
            log.warning("roll: the dead letter %s of %s is %s from now on (the old sink wrote it "
                        "while it drained)", was, topic, letter.ref)


def copy_assets(old: Settings, new: Settings, after: dict[int, int] | None = None,
                ) -> dict[int, int]:
    """The asset catalog from the old broker to the next: each asset's newest record, or
    with ``after`` (what a first copy returned) the records written since. Returns the
    position after the last record copied, per partition."""
    newest, ends = newest_records(old, old.topic_assets, after, timeout_s=30)
    producer = Producer(producer_config(new))
    for key, (partition, value) in newest.items():
        produce_waiting(producer, new.topic_assets, value, key, partition=partition)
    if producer.flush(30) > 0:
        raise RuntimeError("the next broker did not take the asset catalog")
    return ends
