"""The canonical event and its wire form on the ``events`` topic.

Every producer (the gateway's dialects) emits this shape; every consumer (the sink, the
stream agents) reads it. The wire form is one orjson-encoded JSON object per Kafka
message whose keys are exactly the ClickHouse ``events`` columns, so the sink can hand
the raw bytes to ``INSERT ... FORMAT JSONEachRow`` without re-encoding them.

The message key is ``program_id + "\\x1f" + user_id``: one user's events share a
partition and stay in order.
"""

from __future__ import annotations

from typing import Any

import orjson

# Column name -> Python type the wire value must have. Order = ClickHouse column order.
WIRE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "program_id": str,
    "event_id": str,
    "user_id": str,
    "event_timestamp": str,
    "event_type": str,
    "asset_id": str,
    "labels": list,
    "received_at": str,
    "queue_updates": bool,
    "process_user_actions": bool,
}

KEY_SEPARATOR = "\x1f"  # ASCII unit separator: cannot appear in a sane id, never ambiguous
ENCODE_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC


class InvalidEvent(ValueError):
    """A message on the events topic that is not a canonical event (goes to the DLQ)."""


def message_key(program_id: str, user_id: str) -> bytes:
    return f"{program_id}{KEY_SEPARATOR}{user_id}".encode()


def encode(event: dict[str, Any]) -> bytes:
    """Wire bytes of one canonical event; datetimes become ISO 8601 UTC with ``Z``."""
    return orjson.dumps(event, option=ENCODE_OPTIONS)


def decode(raw: bytes | None) -> dict[str, Any]:
    """Parse and check one wire message; raise :class:`InvalidEvent` saying what is wrong."""
    if raw is None:
        raise InvalidEvent("empty message (tombstone) on the events topic")
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"not JSON: {exc}") from None
    if not isinstance(event, dict):
        raise InvalidEvent(f"not a JSON object but {type(event).__name__}")
    for name, kind in WIRE_FIELDS.items():
        value = event.get(name)
        if not isinstance(value, kind):
            if value is None:
                raise InvalidEvent(f"field {name!r} is missing")
            raise InvalidEvent(f"field {name!r} is {type(value).__name__}, not {kind}")
    if not all(isinstance(label, str) for label in event["labels"]):
        raise InvalidEvent("field 'labels' holds a non-string")
    return event
