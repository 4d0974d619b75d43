"""Canonical events of any dialect -> the events topic -> (optionally) user state.

Every dialect adapter turns its request into canonical event dicts (user_id,
event_timestamp, event_type, asset_id, labels, and any of the optional fields, but none
of the fields the server owns: program_id, event_id, received_at, the flags, source,
asset_labels) and calls
:func:`ingest`; it fills in what the server owns, bundles the events per partition (see
:mod:`services.shared.events`), publishes with acks=all and, for ``queue_updates=false``, waits for the
agents. Failures are raised (BrokerUnavailable, UpdateTimeout) for each dialect to
answer in its vendor's own shape.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import orjson

from services.gateway.deps import Gateway
from services.gateway.errors import UpdateTimeout
from services.gateway.validate import new_event_ids
from services.shared.events import ENCODE_OPTIONS, WIRE_HEADER, message_key, partition_for

# event_id of an event with a client-side id: the same (program, source, client id) always
# gives the same event_id, so a retried request collapses in ClickHouse instead of doubling.
CLIENT_ID_NAMESPACE = uuid.UUID("6f1d8a52-3c0e-4f5b-9a37-5b0f3f2d8e11")


async def ingest(
    gateway: Gateway,
    program_id: str,
    events: list[dict[str, Any]],
    *,
    queue_updates: bool,
    process_user_actions: bool,
    source: str,
) -> int:
    """Publish canonical events; returns how many were accepted (all, or it raises)."""
    # Fields the server owns are the same for the whole request: encoded once, appended
    # to each event's own JSON (which must not carry them).
    tail = orjson.dumps({
        "program_id": program_id,
        "received_at": datetime.now(UTC),
        "queue_updates": queue_updates,
        "process_user_actions": process_user_actions,
        "source": source,
    }, option=ENCODE_OPTIONS)[1:]
    asset_labels = gateway.views.catalog(program_id).get
    dumps = orjson.dumps
    by_user: dict[str, list[bytes]] = {}
    for event, event_id in zip(events, new_event_ids(len(events))):
        client_id = event.get("client_event_id")
        if client_id:
            event_id = str(uuid.uuid5(CLIENT_ID_NAMESPACE, f"{program_id}\x1f{source}\x1f{client_id}"))
        labels = asset_labels(event["asset_id"], ()) if event["asset_id"] else ()
        line = b"".join((
            dumps(event, option=ENCODE_OPTIONS)[:-1], b',"event_id":"', event_id.encode(),
            b'","asset_labels":', dumps(labels), b",", tail,
        ))
        by_user.setdefault(event["user_id"], []).append(line)
    bundles = Bundles(gateway.publisher.partition_count(), gateway.settings.message_max_bytes)
    for user, lines in by_user.items():
        bundles.add(message_key(program_id, user), lines)
    positions = await gateway.publisher.publish(
        [(None, value) for value in bundles.values()], headers=[WIRE_HEADER],
        partitions=bundles.partitions,
    )
    wait = not queue_updates and process_user_actions
    if wait:
        targets = {key: positions[index] for key, index in bundles.message_of.items()}
        if not await gateway.views.wait_applied(targets, gateway.settings.update_timeout_s):
            raise UpdateTimeout(len(events), gateway.settings.update_timeout_s)
    return len(events)


class Bundles:
    """One request's event lines -> messages of at most ``max_bytes`` per partition.

    Each user's lines go, in order, to its key's partition; ``message_of`` says which
    message holds the user's last line (the one a ``queue_updates=false`` POST waits for)."""

    def __init__(self, partitions: int, max_bytes: int) -> None:
        self.partition_count = partitions
        self.max_bytes = max_bytes
        self.partitions: list[int] = []  # per message: its partition
        self.chunks: list[list[bytes]] = []  # per message: its lines
        self.message_of: dict[bytes, int] = {}
        self._sizes: list[int] = []
        self._filling: dict[int, int] = {}  # partition -> the message being filled

    def add(self, key: bytes, lines: list[bytes]) -> None:
        partition = partition_for(key, self.partition_count)
        index = self._filling.get(partition)
        for line in lines:
            if index is None or self._sizes[index] and self._sizes[index] + len(line) > self.max_bytes:
                index = self._filling[partition] = len(self.chunks)
                self.partitions.append(partition)
                self.chunks.append([])
                self._sizes.append(0)
            self.chunks[index].append(line)
            self._sizes[index] += len(line) + 1
        if index is not None:
            self.message_of[key] = index

    def values(self) -> list[bytes]:
        return [b"\n".join(chunk) for chunk in self.chunks]
