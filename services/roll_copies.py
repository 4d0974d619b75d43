"""What a roll of the embedded broker copies from the old broker to the next one
(services.broker_roll says when and in which order): each user's newest changelog record,
the asset catalog's newest record per asset, and the dead letters with the topics that mark
what became of them, verbatim.

Each copy reads a topic of the old broker to its end (services.shared.topic_read) and
produces into the next broker, waiting for every delivery (one the next broker did not take
raises). A roll passes one producer made when the next broker started: a new idempotent
producer waits ~0.5 s for its producer id before its first delivery (librdkafka, measured on
Tansu), which a copy made while waits for user state are held would add to them.
"""

from __future__ import annotations

import logging

from confluent_kafka import Producer

from services.shared.kafka import ensure_compacted_topic, produce_waiting, producer_config
from services.shared.settings import Settings
from services.shared.topic_read import read_to_end
from services.shared.users import UserRecord
from services.sink.erased_letters import erased_topic
from services.sink.letters import DeadLetter, read_all
from services.sink.replay import marker_topic
from streams.rebuild import Rebuilt

log = logging.getLogger(__name__)


def carried_topics(settings: Settings) -> dict[str, str]:
    """The topics copied verbatim: dead letters and the markers of what became of them."""
    return {"dead letters": settings.topic_dlq, "replayed": marker_topic(settings),
            "erased": erased_topic(settings)}


Records = dict[bytes, tuple[int, bytes]]  # key -> (partition, value)


def newest_records(settings: Settings, topic: str, after: dict[int, int] | None = None,
                   timeout_s: float = 60.0) -> tuple[Records, dict[int, int]]:
    """Each key's newest record in ``topic`` (a tombstone drops its key), from ``after``'s
    positions on if given; and the position after the last record read, per partition
    (``after``'s where none was)."""
    newest: Records = {}
    ends = dict(after or {})
    for message in read_to_end(settings, topic, timeout_s, batch=10_000, start=after):
        partition, offset, key = message.partition() or 0, message.offset() or 0, message.key()
        if key is None:
            continue
        if (value := message.value()) is None:
            newest.pop(key, None)
        else:
            newest[key] = (partition, value)
        ends[partition] = max(ends.get(partition, 0), offset + 1)
    return newest, ends


def read_users(settings: Settings, timeout_s: float = 60.0) -> Records:
    """Each user's newest record in the changelog; an erased user's tombstone drops it."""
    return newest_records(settings, settings.topic_user_state, timeout_s=timeout_s)[0]


def write_users(settings: Settings, users: Records, producer: Producer | None = None,
                ) -> Rebuilt:
    """Into the next broker's changelog, before its agents start: the users' records with
    nothing of its events topic applied yet."""
    producer = Producer(producer_config(settings)) if producer is None else producer
    result = Rebuilt()
    for key, (partition, raw) in users.items():
        value, events = UserRecord.with_position(raw, partition, -1)
        produce_waiting(producer, settings.topic_user_state, value, key, partition=partition)
        result.users += 1
        result.events += events
    if producer.flush(60) > 0:
        raise RuntimeError("the next broker did not take the carried user state")
    return result


def copy_letters(old: Settings, new: Settings, after: dict[str, dict[int, int]] | None = None,
                 timeout_s: float = 30.0, producer: Producer | None = None,
                 ) -> dict[str, dict[int, int]]:
    """The dead letters and their markers, verbatim and in order, from the old broker to
    the next, or with ``after`` (what a first copy returned) those written since. Returns
    each topic's end per partition. The first copy comes before the next sink writes any
    letter, so letters keep their names (partition:offset), which markers and replays use;
    one the old sink wrote while it drained can only follow the next sink's own, and a
    WARNING names it when its name changed."""
    ends: dict[str, dict[int, int]] = {}
    producer = Producer(producer_config(new)) if producer is None else producer
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
                producer: Producer | None = None) -> dict[int, int]:
    """The asset catalog from the old broker to the next: each asset's newest record, or
    with ``after`` (what a first copy returned) the records written since. Returns the
    position after the last record copied, per partition."""
    newest, ends = newest_records(old, old.topic_assets, after, timeout_s=30)
    producer = Producer(producer_config(new)) if producer is None else producer
    for key, (partition, value) in newest.items():
        produce_waiting(producer, new.topic_assets, value, key, partition=partition)
    if producer.flush(30) > 0:
        raise RuntimeError("the next broker did not take the asset catalog")
    return ends
