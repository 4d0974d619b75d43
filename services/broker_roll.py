"""Rolling the embedded broker: what lets ``sluice up`` run for days on Tansu.

Tansu keeps every message in memory and frees it only when its topic is deleted (retention
is not enforced, DeleteRecords is not implemented). So once the broker holds
SLUICE_EMBEDDED_BROKER_ROLL_SHARE of SLUICE_EMBEDDED_BROKER_MAX_MB, the supervisor
(services.embedded) rolls it over: a planned generation that carries over only what still
counts.

1. The gateway's app stops taking requests; the HTTP server stays up, so requests that come
   meanwhile wait on their connections and the next gateway answers them
   (services.embedded_gateway): none is refused, they wait for the roll.
2. The sink drains into ClickHouse, and the agents apply what is left: the roll waits until
   their group's committed offsets reach every events partition's end (read with a Fetch:
   Tansu's ListOffsets trails its last batch, streams.recovery). The agents commit an offset
   only once its events' state is in the changelog.
3. What outlives the broker is read from it: each user's newest record in the changelog, and
   every record of the dead-letter topic and its two marker topics (verbatim, in order, so
   letters keep their partition:offset names).
4. The broker restarts empty and gets that back: user records with their source position
   reset to "nothing applied yet" (the new events topic starts at offset 0 and everything of
   the old one is in them), the catalog from ClickHouse as at any start.
5. The agents (with fresh local stores: they recover the carried records) and the sink
   start again, and the next gateway takes the requests at once, before the agents have
   joined their group (3-4 s of Faust's start): writes wait only for steps 1-4, reads and
   waits of user state also for the join (services.gateway.user_states: held, not failed).
   The agents then apply the events taken meanwhile from offset 0 of the new topic.

Nothing acked is lost or counted twice: every event acked before the roll is in ClickHouse
and in the carried state (step 2), and the events topic the agents resume on holds only
later ones. Agents that do not catch up within the wait (or die meanwhile) make the roll
rebuild user state from ClickHouse instead, as a start does: slower, equally right.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import Consumer, Producer, TopicPartition
from faust.types import TP

from services.shared.clickhouse import Store
from services.shared.kafka import (
    client_config,
    ensure_compacted_topic,
    produce_waiting,
    producer_config,
)
from services.shared.settings import Settings
from services.shared.topic_read import read_to_end
from services.shared.users import UserRecord
from services.sink.erased_letters import erased_topic
from services.sink.letters import DeadLetter, read_all
from services.sink.replay import marker_topic
from streams.rebuild import Rebuilt, republish_assets
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


@dataclass
class Carried:
    """What a roll takes from the old broker to the new one."""

    users: dict[bytes, tuple[int, bytes]] = field(default_factory=dict)  # key -> (partition, record)
    letters: dict[str, list[DeadLetter]] = field(default_factory=dict)  # what -> its records


def carried_topics(settings: Settings) -> dict[str, str]:
    """The topics copied verbatim: dead letters and the markers of what became of them."""
    return {"dead letters": settings.topic_dlq, "replayed": marker_topic(settings),
            "erased": erased_topic(settings)}


def read_carried(settings: Settings, timeout_s: float = 60.0) -> Carried:
    """The newest record of every user in the changelog (erased users' tombstones drop
    them) and every record of the carried topics."""
    carried = Carried(users=_newest_records(settings, settings.topic_user_state, timeout_s))
    for what, topic in carried_topics(settings).items():
        carried.letters[what] = list(read_all(settings, topic, timeout_s))
    return carried


def _newest_records(settings: Settings, topic: str, timeout_s: float) -> dict[bytes, tuple[int, bytes]]:
    """key -> (partition, value) of each key's newest record; a tombstone drops its key."""
    newest: dict[bytes, tuple[int, bytes]] = {}
    for message in read_to_end(settings, topic, timeout_s, batch=10_000):
        key, value = message.key(), message.value()
        if key is None:
            continue
        if value is None:
            newest.pop(key, None)
        else:
            newest[key] = (message.partition() or 0, value)
    return newest


def write_carried(settings: Settings, store: Store, carried: Carried) -> Rebuilt:
    """Into the new, empty broker: the catalog (from ClickHouse), the users' records with
    nothing of the new events topic applied yet, the carried topics' records as they were."""
    producer = Producer(producer_config(settings))
    result = Rebuilt(assets=republish_assets(settings, store, producer))
    for key, (partition, raw) in carried.users.items():
        record = UserRecord.decode(raw)
        record.partition, record.offset = partition, -1
        produce_waiting(producer, settings.topic_user_state, record.encode(), key,
                        partition=partition)
        result.users += 1
        result.events += record.events
    for what, topic in carried_topics(settings).items():
        letters = carried.letters.get(what, [])
        if not letters:
            continue
        if topic != settings.topic_dlq:  # the markers' topics exist once something was marked
            ensure_compacted_topic(settings, topic)
        for letter in letters:
            produce_waiting(producer, topic, letter.value, letter.key,
                            headers=list(letter.headers.items()), partition=letter.partition,
                            timestamp_ms=letter.timestamp_ms)
    if producer.flush(60) > 0:
        raise RuntimeError("the new broker did not take the carried state")
    return result
