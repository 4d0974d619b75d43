"""Canonical events of any dialect -> the events topic -> (optionally) user state.

Every dialect adapter turns its request into canonical event dicts (user_id,
event_timestamp, event_type, asset_id, labels, and any of the optional fields, but none
of the fields the server owns: program_id, event_id, received_at, the flags, source,
asset_labels) and calls
:func:`ingest`; it fills in what the server owns, groups the events by user into one
message each, publishes with acks=all and, for ``queue_updates=false``, waits for the
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
from services.shared.events import ENCODE_OPTIONS, WIRE_HEADER, message_key

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
    messages = [(message_key(program_id, user), b"\n".join(lines)) for user, lines in by_user.items()]
    positions = await gateway.publisher.publish(messages, headers=[WIRE_HEADER])
    wait = not queue_updates and process_user_actions
    if wait and not await gateway.views.wait_applied(positions, gateway.settings.update_timeout_s):
        raise UpdateTimeout(len(events), gateway.settings.update_timeout_s)
    return len(events)
