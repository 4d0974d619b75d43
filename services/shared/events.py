"""The canonical event and its wire form on the ``events`` topic.

Every producer (the gateway's dialects) emits this shape; every consumer (the sink, the
stream agents) reads it. The wire form is JSON lines: each line one orjson-encoded
event whose keys are exactly the ClickHouse ``events`` columns, so the sink hands the
raw bytes to ``INSERT ... FORMAT JSONEachRow`` without re-encoding them.

Where an event goes: its user key ``program_id + "\\x1f" + user_id`` picks the partition
with Kafka's own partitioner (murmur2, as the Java client and librdkafka's
``murmur2_random`` do), so one user's events share a partition and stay in order, and
the agents' state of a user lives on that partition too.

What one message holds: the gateway's group commit (services.gateway.group_commit)
bundles the events of the requests of a short window per partition: one message per
(window, partition) with no key, each user's events in the order they came. Every
consumer pays its per-message cost (produce call, delivery report, Faust's stream
machinery) once per window and partition, rather than per request, user or event. Consumers read
the user of each line from the line itself, so a producer that sends per-user keyed
messages through the same partitioner is read the same way.
"""

from __future__ import annotations

from typing import Any

import murmurhash2
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
# Optional fields (older producers did not send them): name -> type.
OPTIONAL_FIELDS: dict[str, type | tuple[type, ...]] = {
    "asset_labels": list,
    "source": str,  # which dialect: actionhub, personalize, retail, userflux, crowdpower,
    # posthog, segment
    "client_event_id": str,  # the client's own id of the event, where the dialect has one
    "client_timestamp": str,  # the event's time as the client sent it, where it was corrected
    "session_id": str,
    "anonymous_id": str,
    "email": str,
    "properties": str,  # JSON text of the dialect's free-form properties
    "value": (int, float),
    # CrowdPower: the agents count the event as session activity.
    "update_session": bool,
}

# Set by the gateway on messages whose every line it validated: the sink trusts those.
WIRE_HEADER = ("sluice-wire", b"1")
KEY_SEPARATOR = "\x1f"  # ASCII unit separator: cannot appear in a sane id, never ambiguous
ENCODE_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC


class InvalidEvent(ValueError):
    """A message on the events topic that is not a canonical event (goes to the DLQ)."""


def message_key(program_id: str, user_id: str) -> bytes:
    return f"{program_id}{KEY_SEPARATOR}{user_id}".encode()


MURMUR2_SEED = 0x9747B28C  # Kafka's DefaultPartitioner / librdkafka's murmur2


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``key``: murmur2, made positive."""
    return (murmurhash2.murmurhash2(key, MURMUR2_SEED) & 0x7FFFFFFF) % partitions


def encode(event: dict[str, Any]) -> bytes:
    """Wire bytes of one canonical event; datetimes become ISO 8601 UTC with ``Z``."""
    return orjson.dumps(event, option=ENCODE_OPTIONS)


def lines(raw: bytes | None) -> list[bytes]:
    """The event lines of one message (a message holds one or more events)."""
    if not raw:
        raise InvalidEvent("empty message (tombstone) on the events topic")
    return raw.split(b"\n")


def decode_message(raw: bytes | None) -> list[dict[str, Any]]:
    """Every event of one message, checked; raises on the first bad line."""
    return [decode(line) for line in lines(raw)]


def parse_object(raw: bytes | None, empty: str) -> dict[str, Any]:
    """One JSON object from a message; :class:`InvalidEvent` (``empty`` if there is none)."""
    if not raw:
        raise InvalidEvent(empty)
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"not JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise InvalidEvent(f"not a JSON object but {type(parsed).__name__}")
    return parsed


def decode(raw: bytes | None) -> dict[str, Any]:
    """Parse and check one event line; raise :class:`InvalidEvent` saying what is wrong."""
    event = parse_object(raw, "empty event line")
    for name, kind in WIRE_FIELDS.items():
        value = event.get(name)
        if not isinstance(value, kind):
            if value is None:
                raise InvalidEvent(f"field {name!r} is missing")
            raise InvalidEvent(f"field {name!r} is {type(value).__name__}, not {kind}")
    for name, kind in OPTIONAL_FIELDS.items():
        if name in event and not isinstance(event[name], kind):
            raise InvalidEvent(f"field {name!r} is {type(event[name]).__name__}, not {kind}")
    if not all(isinstance(label, str) for label in event["labels"]):
        raise InvalidEvent("field 'labels' holds a non-string")
    return event
