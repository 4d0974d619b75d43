"""PostHog's capture bodies -> canonical events (no network): body shapes and packings,
the token, the field mapping, and what is refused with a 400."""

from __future__ import annotations

import base64
import gzip
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import orjson
import pytest

from services.gateway.dialects.posthog import (
    PostHogError,
    canonical,
    decode,
    events_of,
    item,
    token_of,
)

NOW = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
EVENT = {"event": "product viewed", "distinct_id": "u1", "uuid": "0190a1b2-0000-7000-8000-000000000001",
         "timestamp": "2025-11-18T07:21:16.527Z",
         "properties": {"asset_id": "sku-1", "labels": ["red", "shoe"], "$browser": "Firefox"}}
JSON = orjson.dumps(EVENT)


def unpack(body: bytes, compression: str | None = None, encoding: str = "",
           form: bool = False) -> object:
    return decode(body, compression=compression, encoding=encoding, form=form, limit=100_000)


@pytest.mark.parametrize(("body", "compression", "encoding", "form"), [
    (JSON, None, "", False),
    (gzip.compress(JSON), None, "gzip", False),  # Content-Encoding
    (gzip.compress(JSON), "gzip-js", "", False),  # posthog-js
    (gzip.compress(JSON), None, "", False),  # the magic bytes alone
    (b"data=" + quote(base64.b64encode(JSON)).encode(), "base64", "", True),
    (b"data=" + base64.b64encode(JSON).rstrip(b"="), None, "", False),  # no padding; '+' -> ' '
    (b"data=" + quote(JSON.decode()).encode(), None, "", True),  # form with plain JSON
])
def test_every_packing_gives_the_same_json(body: bytes, compression: str | None, encoding: str,
                                           form: bool) -> None:
    assert unpack(body, compression, encoding, form) == EVENT


@pytest.mark.parametrize(("body", "compression", "form"), [
    (b"{not json", None, False), (b"", None, False), (b"abc", "lz64", False),
    (b"\x1f\x8bbroken", None, False), (b"other=1", None, True), (b"data=%%%", None, True),
])
def test_bad_bodies_are_400(body: bytes, compression: str | None, form: bool) -> None:
    with pytest.raises(PostHogError) as refused:
        unpack(body, compression, form=form)
    assert refused.value.status == 400


def test_three_shapes_and_where_the_token_is() -> None:
    events, where, token = events_of({"api_key": "k", "batch": [EVENT, EVENT]})
    assert (len(events), where, token) == (2, "batch.", "k")
    assert events_of([EVENT]) == ([EVENT], "", None)
    assert events_of(EVENT) == ([EVENT], None, None)
    assert (item("batch.", 3), item("", 1), item(None, 0)) == ("batch.3.", "1.", "")
    js = EVENT | {"properties": {"token": "k2", "distinct_id": "u9"}}
    assert token_of([js, js], None, "") == "k2"  # posthog-js: properties.token
    assert token_of([EVENT | {"token": "k3"}], None, None) == "k3"
    assert token_of([EVENT], "k", "batch.") == "k"
    with pytest.raises(PostHogError):
        token_of([EVENT | {"api_key": "a"}, EVENT | {"api_key": "b"}], None, "")
    for body in ({"batch": []}, [], {"batch": {}}, "text", 3):
        with pytest.raises(PostHogError):
            events_of(body)


def test_mapping() -> None:
    row = canonical(EVENT | {"$set": {"plan": "pro"}}, "", NOW)
    assert row["user_id"] == "u1" and row["event_type"] == "product viewed"
    assert row["client_event_id"] == EVENT["uuid"]
    assert row["event_timestamp"] == datetime(2025, 11, 18, 7, 21, 16, 527000, tzinfo=UTC)
    assert (row["asset_id"], row["labels"]) == ("sku-1", ["red", "shoe"])
    assert orjson.loads(row["properties"]) == EVENT["properties"] | {"$set": {"plan": "pro"}}


def test_defaults_and_posthog_js_fields() -> None:
    js = {"event": "$pageview", "offset": 1500,
          "properties": {"distinct_id": 42, "token": "sk_secret", "$current_url": "/"}}
    row = canonical(js, "", NOW)
    assert row["user_id"] == "42"  # properties.distinct_id, a number as text
    assert uuid.UUID(row["client_event_id"]).version == 7
    assert row["event_timestamp"] == NOW - timedelta(milliseconds=1500)
    assert orjson.loads(row["properties"]) == {"distinct_id": 42, "$current_url": "/"}  # no token
    assert (row["asset_id"], row["labels"]) == ("", [])
    naive = canonical({"event": "e", "distinct_id": "u", "timestamp": "2025-01-02T03:04:05"}, "", NOW)
    assert naive["event_timestamp"] == datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert canonical({"event": "e", "distinct_id": "u"}, "", NOW)["event_timestamp"] == NOW


@pytest.mark.parametrize(("event", "field"), [
    ({"distinct_id": "u"}, "batch.2.event"),
    ({"event": "", "distinct_id": "u"}, "batch.2.event"),
    ({"event": "e"}, "batch.2.distinct_id"),
    ({"event": "e", "distinct_id": True}, "batch.2.distinct_id"),
    ({"event": "e", "distinct_id": "u" * 513}, "batch.2.distinct_id"),
    ({"event": "e", "distinct_id": "u", "properties": []}, "batch.2.properties"),
    ({"event": "e", "distinct_id": "u", "uuid": 7}, "batch.2.uuid"),
    ({"event": "e", "distinct_id": "u", "timestamp": "yesterday"}, "batch.2.timestamp"),
    ({"event": "e", "distinct_id": "u", "timestamp": "1800-01-01T00:00:00Z"}, "batch.2.timestamp"),
    ({"event": "e", "distinct_id": "u", "timestamp": 1763450476}, "batch.2.timestamp"),
    ("not an object", "batch.2"),
])
def test_invalid_events_name_their_field(event: object, field: str) -> None:
    with pytest.raises(PostHogError) as refused:
        canonical(event, "batch.2.", NOW)
    assert refused.value.status == 400 and refused.value.message.startswith(field)
