"""ClickHouse -> user state and asset catalog, published where agents and gateways read them.

Used by ``sluice rebuild-state`` (after a back-fill with process_user_actions=false) and by
``sluice up`` at start: the embedded broker keeps nothing across restarts, so the catalog
is re-published to the ``assets`` topic and every user's record, recomputed with the same
model as live processing, is written to the ``user-state`` changelog. Agents started
afterwards recover it from there as Faust does; gateways follow it. Run it with the agents
stopped: a running agent would not re-read its changelog and would overwrite it.

Each record's source position is set to the agents' committed offset of its partition, so
live processing resumes after what the rebuild already counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from confluent_kafka import Consumer, Producer, TopicPartition
from rich.progress import Progress

from services.shared.assets import asset_key, encode_asset, iso_utc
from services.shared.clickhouse import Store
from services.shared.events import message_key, partition_for
from services.shared.kafka import client_config, produce_waiting, producer_config
from services.shared.ranking import ModelConfigs
from services.shared.settings import Settings
from services.shared.users import UserRecord
from streams.model import apply_event
from streams.update import SESSION_GAP_S, Dedup, event_key

# Every stored action; Personalize PutUsers rows carry user metadata, not actions.
ACTIONS = (
    "FROM events FINAL WHERE NOT (source = 'personalize' AND event_type = 'user_properties')"
)
EVENTS_BY_USER = (
    "SELECT program_id, user_id, toUnixTimestamp64Micro(event_timestamp) AS ts, event_type, "
    "labels, asset_labels, asset_id, update_session, client_event_id != '' AS has_client_id, "
    f"toString(event_id) AS event_id, toUnixTimestamp(received_at) AS received {ACTIONS} "
    "ORDER BY program_id, user_id, event_timestamp, received_at"
)
LIVE_ASSETS = (
    "SELECT program_id, asset_id, labels, attributes, updated_at FROM assets FINAL "
    "WHERE deleted = 0"
)


@dataclass
class Rebuilt:
    assets: int = 0
    users: int = 0
    events: int = 0


def rebuild_state(settings: Settings, store: Store, show_progress: bool = True,
                  resume_group: str | None = None) -> Rebuilt:
    """``resume_group``: the group whose committed offsets say what ClickHouse holds of the
    events topic (the sink's, in a roll whose next sink already stored some); default the
    agents' (nothing of the topic is in ClickHouse yet, or the agents applied it)."""
    producer = Producer(producer_config(settings))
    result = Rebuilt()
    with Progress(disable=not show_progress, transient=False) as progress:
        result.assets = republish_assets(settings, store, producer)
        total = int(store.query(f"SELECT count() AS n {ACTIONS}")[0]["n"])
        task = progress.add_task("rebuilding user state from ClickHouse", total=total,
                                 visible=total > 0)
        resume_at = _positions(settings, resume_group or settings.agents_app_id)
        config_for = ModelConfigs(settings)
        dedup = Dedup(settings.dedup_window_s, settings.dedup_max_ids)
        for record in _users(store, config_for, lambda n: progress.advance(task, n), dedup):
            key = message_key(record.program_id, record.user_id)
            partition = partition_for(key, settings.events_partitions)
            record.partition, record.offset = partition, resume_at.get(partition, 0) - 1
            produce_waiting(producer, settings.topic_user_state, record.encode(), key)
            result.users += 1
            result.events += record.events
    if producer.flush(60) > 0:
        raise RuntimeError("the broker did not take the rebuilt state")
    return result


def republish_assets(settings: Settings, store: Store, producer: Producer) -> int:
    """The live catalog from ClickHouse to the ``assets`` topic (not flushed); how many."""
    assets = 0
    for asset in store.query(LIVE_ASSETS):
        live = asset | {"updated_at": iso_utc(asset["updated_at"]), "deleted": False}
        produce_waiting(producer, settings.topic_assets, encode_asset(live),
                        asset_key(asset["program_id"], asset["asset_id"]))
        assets += 1
    return assets


def _users(store: Store, config_for: ModelConfigs, advance: Callable[[int], None],
           dedup: Dedup) -> Iterator[UserRecord]:
    """One UserRecord per (program, user), from rows sorted by user. Events with a client
    id count once, as live (a copy ClickHouse kept apart, e.g. sent with another timestamp,
    is left out), and the ids received within the window are remembered, so a client's
    retry after the rebuild is still recognised."""
    current: UserRecord | None = None
    with store.stream_rows(EVENTS_BY_USER) as blocks:
        for block in blocks:
            for row in block:
                (program_id, user_id, ts_us, event_type, labels, asset_labels, asset_id, session,
                 has_client_id, event_id, received) = row
                if current is None or (current.program_id, current.user_id) != (program_id, user_id):
                    if current is not None:
                        _forget_old(current, dedup)
                        yield current
                    current = UserRecord(program_id, user_id)
                if has_client_id and not current.first_time(
                        event_key(event_id), received, dedup.window_s, dedup.max_ids):
                    continue
                if session:
                    current.touch_session(ts_us / 1e6, SESSION_GAP_S)
                apply_event(current.state, config_for(program_id), ts_us / 1e6, event_type,
                            labels, asset_labels, asset_id)
                current.events += 1
            advance(len(block))
    if current is not None:
        _forget_old(current, dedup)
        yield current


def _forget_old(record: UserRecord, dedup: Dedup) -> None:
    """Keep only the ids a live worker would still hold now."""
    if record.seen:
        record.forget(int(time.time()) - dedup.window_s, dedup.max_ids)


def running_agents(settings: Settings) -> int:
    """Members of the agents' consumer group (0 if unknown). Kafka reports them; Tansu
    reports none even while workers run, so there the operator's word has to do."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(client_config(settings))  # type: ignore[arg-type]
    try:
        group = settings.agents_app_id
        described = admin.describe_consumer_groups([group])[group].result(10)
        return len(described.members)
    except Exception:  # noqa: BLE001 - a broker that cannot describe groups: unknown
        return 0


def _positions(settings: Settings, group: str) -> dict[int, int]:
    """The group's committed offset per events partition (none: an empty dict)."""
    consumer = Consumer(client_config(settings) | {"group.id": group})
    try:
        wanted = [TopicPartition(settings.topic_events, p) for p in range(settings.events_partitions)]
        committed = consumer.committed(wanted, timeout=10)
        return {tp.partition: tp.offset for tp in committed if tp.offset >= 0}
    finally:
        consumer.close()

