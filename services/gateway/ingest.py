"""Canonical events of any dialect -> the events topic -> (optionally) user state.

Every dialect adapter turns its request into canonical event dicts (user_id,
event_timestamp, event_type, asset_id, labels, and any of the optional fields) and calls
:func:`ingest`; it fills in what the server owns, groups the events by user into one
message each, publishes with acks=all and, for ``queue_updates=false``, waits for the
agents. Failures are raised (BrokerUnavailable, UpdateTimeout) for each dialect to
answer in its vendor's own shape.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from services.gateway.deps import Gateway
from services.gateway.errors import UpdateTimeout
from services.gateway.validate import new_event_ids
from services.shared.events import WIRE_HEADER, encode, message_key

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
    received_at = datetime.now(UTC)
    asset_labels = gateway.views.catalog(program_id).get
    by_user: dict[str, list[bytes]] = {}
    for event, event_id in zip(events, new_event_ids(len(events))):
        client_id = event.get("client_event_id")
        if client_id:
            event_id = str(uuid.uuid5(CLIENT_ID_NAMESPACE, f"{program_id}\x1f{source}\x1f{client_id}"))
        event["program_id"] = program_id
        event["event_id"] = event_id
        event["received_at"] = received_at
        event["queue_updates"] = queue_updates
        event["process_user_actions"] = process_user_actions
        event["source"] = source
        event["asset_labels"] = asset_labels(event["asset_id"], ()) if event["asset_id"] else ()
        by_user.setdefault(event["user_id"], []).append(encode(event))
    messages = [(message_key(program_id, user), b"\n".join(lines)) for user, lines in by_user.items()]
    positions = await gateway.publisher.publish(messages, headers=[WIRE_HEADER])
    if not queue_updates and process_user_actions:
        if not await gateway.views.wait_applied(positions, gateway.settings.update_timeout_s):
            raise UpdateTimeout(len(events), gateway.settings.update_timeout_s)
    return len(events)
