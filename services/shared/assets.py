"""The asset record on the compacted ``assets`` topic (and in ClickHouse ``assets``).

Keyed ``program_id + "\\x1f" + asset_id``; the latest record per key wins (compaction
keeps it). A delete is a record with ``deleted: true`` rather than a null tombstone, so
that the sink can store the deletion and a replay of the topic applies it in order.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from services.shared.events import KEY_SEPARATOR, InvalidEvent, parse_object

FIELDS: dict[str, type | tuple[type, ...]] = {
    "program_id": str,
    "asset_id": str,
    "labels": list,
    "attributes": str,  # JSON text: ClickHouse stores it as String
    "updated_at": str,
    "deleted": bool,
}


def iso_utc(ts: datetime | None = None) -> str:
    """Fixed-width ISO 8601 UTC (always 6 fractional digits): versions compare as strings."""
    ts = ts or datetime.now(UTC)
    if ts.tzinfo is not None:
        ts = ts.astimezone(UTC)
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def asset_key(program_id: str, asset_id: str) -> bytes:
    return f"{program_id}{KEY_SEPARATOR}{asset_id}".encode()


def encode_asset(record: dict[str, Any]) -> bytes:
    return orjson.dumps(record, option=orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC)


def decode_asset(raw: bytes | None) -> dict[str, Any]:
    record = parse_object(raw, "empty message on the assets topic")
    for name, kind in FIELDS.items():
        if not isinstance(record.get(name), kind):
            raise InvalidEvent(f"asset field {name!r} is missing or not {kind}")
    return record
