"""Segment messages -> canonical events (no network): the write key, the limits, the field
mapping, e-commerce products -> assets and labels, and what is refused with a 400."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime

import orjson
import pytest

from services.gateway.dialects.segment import SegmentError, canonical, parse, write_key

NOW = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
TRACK = {"type": "track", "userId": "u1", "anonymousId": "a1", "event": "Product Viewed",
         "messageId": "m1", "timestamp": "2025-11-18T07:21:16.527+00:00",
         "properties": {"product_id": "sku-1", "category": "Games", "price": 9.5},
         "context": {"library": {"name": "analytics-python"}}, "integrations": {}}
ORDER = {"type": "track", "userId": "u2", "event": "Order Completed", "messageId": "m2",
         "properties": {"order_id": "o1", "labels": ["gift"], "products": [
             {"product_id": "sku-1", "category": "Games"},
             {"product_id": 7, "category": "Books", "labels": ["paper"]}]}}


def basic(user: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:".encode()).decode()


def test_the_write_key_comes_from_basic_else_the_body() -> None:
    assert write_key(basic("wk"), {"writeKey": "other"}) == "wk"
    assert write_key("Bearer wk2", {}) == "wk2"
    assert write_key(None, {"writeKey": "wk3"}) == "wk3"
    assert write_key(None, {"writeKey": None}) is None
    assert write_key(basic(""), {"writeKey": "wk4"}) == "wk4"  # Basic with no user
    with pytest.raises(SegmentError) as refused:
        write_key("Basic !!!", {})
    assert refused.value.status == 401


def test_limits_32_kb_a_message_500_kb_a_request() -> None:
    big = TRACK | {"properties": {"blob": "x" * 33_000}}
    with pytest.raises(SegmentError) as refused:
        parse(orjson.dumps({"batch": [TRACK, big]}), None)
    assert (refused.value.code, refused.value.message[:8]) == ("message_too_large", "batch.1.")
    with pytest.raises(SegmentError) as refused:
        parse(orjson.dumps(big), "track")
    assert refused.value.code == "message_too_large"
    many = {"batch": [TRACK | {"properties": {"blob": "x" * 30_000}}] * 18}
    with pytest.raises(SegmentError) as refused:
        parse(orjson.dumps(many), None)
    assert refused.value.code == "batch_too_large"
    assert len(parse(orjson.dumps({"batch": many["batch"][:16]}), None)[1]) == 16


@pytest.mark.parametrize("body", [b"{nope", b"[]", b'{"batch": []}', b'{"batch": {}}', b"{}"])
def test_malformed_batches_are_400(body: bytes) -> None:
    with pytest.raises(SegmentError) as refused:
        parse(body, None)
    assert refused.value.status == 400


def test_track_mapping() -> None:
    [row] = canonical(TRACK, None, "", {"ip": "1.2.3.4", "library": {}}, NOW)
    assert (row["user_id"], row["anonymous_id"], row["event_type"]) == ("u1", "a1", "Product Viewed")
    assert row["client_event_id"] == "m1"
    assert row["event_timestamp"] == datetime(2025, 11, 18, 7, 21, 16, 527000, tzinfo=UTC)
    assert (row["asset_id"], row["labels"]) == ("sku-1", ["Games"])
    assert orjson.loads(row["properties"]) == TRACK["properties"] | {
        "$context": {"ip": "1.2.3.4", "library": {"name": "analytics-python"}}}


def test_every_product_is_an_event_of_its_own() -> None:
    rows = canonical(ORDER, None, "", None, NOW)
    assert [(r["asset_id"], r["labels"], r["client_event_id"]) for r in rows] == [
        ("sku-1", ["Games", "gift"], "m2#0"), ("7", ["Books", "paper", "gift"], "m2#1")]
    assert all(r["event_type"] == "Order Completed" and r["user_id"] == "u2" for r in rows)
    first = orjson.loads(rows[0]["properties"])
    assert first["products"] == [ORDER["properties"]["products"][0]] and first["order_id"] == "o1"


def test_other_types_and_nulls() -> None:
    identify = {"userId": None, "anonymousId": 12, "traits": {"plan": "pro"}, "timestamp": None,
                "messageId": None, "context": None, "properties": None}
    [row] = canonical(identify, "identify", "", None, NOW)
    assert (row["user_id"], row["anonymous_id"], row["event_type"]) == ("12", "12", "identify")
    assert row["event_timestamp"] == NOW and uuid.UUID(row["client_event_id"]).version == 7
    assert orjson.loads(row["properties"]) == {"$traits": {"plan": "pro"}}
    [page] = canonical({"type": "page", "userId": "u", "name": "Home",
                        "originalTimestamp": "2025-01-02T03:04:05Z"}, None, "", None, NOW)
    assert page["event_type"] == "page" and orjson.loads(page["properties"]) == {"$name": "Home"}
    assert page["event_timestamp"] == datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    [alias] = canonical({"userId": "new", "previousId": "old"}, "alias", "", None, NOW)
    assert orjson.loads(alias["properties"]) == {"$previousId": "old"}
    [group] = canonical({"userId": "u", "groupId": "g1", "asset_id": "x"}, "group", "", None, NOW)
    assert orjson.loads(group["properties"]) == {"$groupId": "g1"} and group["asset_id"] == ""


@pytest.mark.parametrize(("message", "kind", "field"), [
    ({"type": "track", "event": "e"}, None, "batch.4.userId"),
    ({"type": "nope", "userId": "u"}, None, "batch.4.type"),
    ({"userId": "u"}, None, "batch.4.type"),
    ({"type": "track", "userId": "u"}, None, "batch.4.event"),
    ({"userId": "u", "event": ""}, "track", "batch.4.event"),
    ({"userId": {"id": 1}, "event": "e"}, "track", "batch.4.userId"),
    ({"userId": "u"}, "alias", "batch.4.previousId"),
    ({"userId": "u"}, "group", "batch.4.groupId"),
    ({"userId": "u", "event": "e", "properties": [1]}, "track", "batch.4.properties"),
    ({"userId": "u", "event": "e", "context": "x"}, "track", "batch.4.context"),
    ({"userId": "u", "event": "e", "messageId": 5}, "track", "batch.4.messageId"),
    ({"userId": "u", "event": "e", "timestamp": "soon"}, "track", "batch.4.timestamp"),
    ([1, 2], "track", "batch.4"),
])
def test_invalid_messages_name_their_field(message: object, kind: str | None, field: str) -> None:
    with pytest.raises(SegmentError) as refused:
        canonical(message, kind, "batch.4.", None, NOW)
    assert refused.value.status == 400 and refused.value.message.startswith(field)
