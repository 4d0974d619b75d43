from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from fastapi.exceptions import RequestValidationError

from services.gateway.validate import new_event_ids, parse_event_list


def body(*events: dict) -> bytes:
    return orjson.dumps({"events": list(events)})


GOOD = {"user_id": "u", "event_timestamp": "2026-01-02T03:04:05+02:00", "event_type": "view",
        "asset_id": "a", "labels": ["x"]}


def test_good_event_parses_to_a_dict_with_an_aware_datetime() -> None:
    [event] = parse_event_list(body(GOOD))
    assert event["event_timestamp"] == datetime(2026, 1, 2, 1, 4, 5, tzinfo=UTC)
    assert event["event_timestamp"].utcoffset() == timedelta(hours=2)
    assert event["labels"] == ["x"] and event["user_id"] == "u"


def test_unknown_fields_are_ignored() -> None:
    [event] = parse_event_list(body(GOOD | {"extra": 1}))
    assert "extra" not in event


def test_errors_name_every_bad_field_in_fastapi_shape() -> None:
    with pytest.raises(RequestValidationError) as info:
        parse_event_list(body(GOOD, GOOD | {"user_id": 5, "labels": [None]}))
    errors = info.value.errors()
    assert [e["loc"] for e in errors] == [
        ["body", "events", 1, "user_id"], ["body", "events", 1, "labels", 0]]
    assert all(set(e) == {"loc", "msg", "type"} for e in errors)


def test_timestamp_outside_clickhouse_range_is_refused() -> None:
    with pytest.raises(RequestValidationError) as info:
        parse_event_list(body(GOOD | {"event_timestamp": "2400-01-01T00:00:00Z"}))
    assert "1900" in info.value.errors()[0]["msg"]


def test_naive_timestamp_is_kept_naive_for_utc_encoding() -> None:
    [event] = parse_event_list(body(GOOD | {"event_timestamp": "2026-01-02T03:04:05"}))
    assert event["event_timestamp"].tzinfo is None


def test_event_ids_are_distinct_version_4_uuids() -> None:
    ids = new_event_ids(500)
    assert len(set(ids)) == 500
    for s in ids:
        parsed = uuid.UUID(s)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        assert str(parsed) == s
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", s)


def test_offsets_survive_to_the_wire() -> None:
    from services.shared.events import encode

    tz = timezone(timedelta(hours=-5))
    wire = orjson.loads(encode({"t": datetime(2026, 1, 1, 12, tzinfo=tz), "n": datetime(2026, 1, 1)}))
    assert wire == {"t": "2026-01-01T12:00:00-05:00", "n": "2026-01-01T00:00:00Z"}
