"""The Faust app: the events topic in, the ``user-state`` table out.

Run with ``sluice agents``; several workers share the partitions (one consumer group,
the app id). State lives in memory and in the table's changelog topic, from which a
worker that takes over partitions recovers it.

Messages are consumed as raw bytes and processed in batches (``take_events``): one read
and one write of the table per user per batch. The table uses the partitioner, so its
changelog partition is the murmur2 partition of the key, the same partition the gateway
produced the user's events to: whoever owns a source partition recovers exactly the
states of its users.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import faust

from services.shared.events import KEY_SEPARATOR
from services.shared.settings import Settings
from streams.config import ModelConfigs
from streams.records import UserRecord
from streams.update import apply_messages


def create_app(settings: Settings) -> faust.App:
    app = faust.App(
        settings.agents_app_id,
        broker=f"kafka://{settings.bootstrap}",
        store="memory://",
        topic_partitions=settings.events_partitions,
        topic_replication_factor=settings.replication_factor,
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=settings.agents_web_port != 0,
        web_port=settings.agents_web_port,
        web_bind=settings.http_host,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=6.0,
        broker_heartbeat_interval=0.5,
        broker_max_poll_records=settings.agents_batch_max,
        consumer_max_fetch_size=16 * 1024 * 1024,
        stream_buffer_maxsize=4 * settings.agents_batch_max,
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
    config_for = ModelConfigs(settings)
    stats = {"messages": 0, "users_written": 0}

    @app.agent(events, name="update-users")
    async def update_users(stream: faust.StreamT[Any]) -> None:
        """Batches of source messages -> one table write per changed user."""
        async for batch in stream.take_events(settings.agents_batch_max,
                                              within=settings.agents_batch_seconds):
            by_user: defaultdict[bytes, list[Any]] = defaultdict(list)
            for event in batch:
                by_user[event.message.key].append(event.message)
            for key, messages in by_user.items():
                current = user_state.get(key)
                if current is not None:
                    record = UserRecord.decode(current)
                else:
                    program_id, _, user_id = key.decode().partition(KEY_SEPARATOR)
                    record = UserRecord(program_id, user_id)
                messages.sort(key=lambda m: m.offset)
                if apply_messages(record, messages, config_for):
                    user_state[key] = record.encode()
                    stats["users_written"] += 1
            stats["messages"] += len(batch)

    @app.page("/stats")
    async def get_stats(web: Any, request: Any) -> Any:
        return web.json(stats)

    return app
