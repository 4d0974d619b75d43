"""Segment's Tracking API (``/compat/segment``) on Tansu + chDB, driven by
segment-analytics-python and rudder-sdk-python (gzip by default) themselves and by hand
for each ``/v1/<type>`` route: every event read back with ``GET /events``; Segment's
limits and bad input get its ``{success: false, code, message}`` and store nothing."""

from __future__ import annotations

import base64
import gzip
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient
from rudderstack.analytics.client import Client as RudderClient
from segment.analytics.client import Client as SegmentClient
from segment.analytics.request import APIError

from services.shared.clickhouse import Store
from services.shared.settings import Settings
from tests.integration.conftest import Agents, count, create_keys, read_topic, wait_for
from tests.integration.served import serve
from tests.integration.test_posthog import stored

PROGRAM = "shop"  # with no keys file the write key is the program
URL = "/compat/segment"
T = "2025-11-18T07:21:16.527+00:00"
ORDER = {"order_id": "o1", "revenue": 30, "products": [
    {"product_id": "sku-1", "category": "Games", "price": 10},
    {"product_id": "sku-2", "category": "Books", "price": 20}]}


@pytest.fixture
def served(queued: Settings, store: Store) -> Iterator[str]:
    with serve(queued, store) as (base, _):
        yield base


def basic(key: str = PROGRAM) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False and body["code"] == code and body["message"]
    return body


def test_segment_python_every_call_lands(served: str, store: Store) -> None:
    client = SegmentClient(PROGRAM, host=f"{served}{URL}", sync_mode=True, max_retries=0)
    client.track("ana", "Product Viewed", {"product_id": "sku-1", "category": "Games"},
                 timestamp=None, message_id="m-1")
    client.track(None, "Order Completed", ORDER, anonymous_id="anon-1", message_id="m-2")
    client.identify("ana", {"plan": "pro"})
    client.page("ana", "Docs", "Install")
    client.screen("ana", "App", "Home")
    client.group("ana", "g-1", {"name": "Acme"})
    client.alias("ana-old", "ana")
    with httpx.Client(base_url=served) as http:
        ana = stored(http, "ana", 6)
        anon = stored(http, "anon-1", 2)
    assert count(store) == 8
    assert sorted(e["event_type"] for e in ana) == sorted(
        ["Product Viewed", "identify", "page", "screen", "group", "alias"])
    viewed = next(e for e in ana if e["event_type"] == "Product Viewed")
    assert (viewed["client_event_id"], viewed["asset_id"]) == ("m-1", "sku-1")
    assert viewed["labels"] == ["Games"] and viewed["source"] == "segment"
    assert orjson.loads(viewed["properties"])["$context"]["library"]["name"] == "analytics-python"
    identify = next(e for e in ana if e["event_type"] == "identify")
    assert orjson.loads(identify["properties"])["$traits"] == {"plan": "pro"}
    # Order Completed: one event per product, each its asset and category
    assert sorted((e["asset_id"], e["labels"][0], e["client_event_id"]) for e in anon) == [
        ("sku-1", "Games", "m-2#0"), ("sku-2", "Books", "m-2#1")]
    assert {e["anonymous_id"] for e in anon} == {"anon-1"}


def test_rudder_sdk_gzips_by_default(served: str, store: Store) -> None:
    client = RudderClient(PROGRAM, host=f"{served}{URL}", sync_mode=True, max_retries=0)
    assert client.gzip
    client.track("bo", "Signed Up", {"plan": "pro"}, timestamp=None, message_id="r-1")
    client.identify("bo", {"email": "bo@example.com"})
    with httpx.Client(base_url=served) as http:
        events = stored(http, "bo", 2)
    assert sorted(e["event_type"] for e in events) == ["Signed Up", "identify"]
    assert "r-1" in {e["client_event_id"] for e in events}
    assert count(store) == 2


def test_each_type_route_by_hand(client: TestClient, store: Store) -> None:
    bodies = {
        "track": {"userId": "cy", "event": "Clicked", "timestamp": T, "messageId": "h-1",
                  "properties": {"asset_id": "a-1", "labels": "blue"}},
        "identify": {"userId": "cy", "traits": {"plan": None}, "anonymousId": None},
        "page": {"userId": "cy", "name": "Home", "properties": None, "context": None},
        "screen": {"userId": "cy", "name": "Main"},
        "group": {"userId": "cy", "groupId": 7},
        "alias": {"userId": "cy", "previousId": "cy-old"},
    }
    for kind, body in bodies.items():
        response = client.post(f"{URL}/v1/{kind}", json=body | {"writeKey": PROGRAM})
        assert response.status_code == 200 and response.json() == {"success": True}, response.text
    imported = client.post(f"{URL}/v1/import", headers=basic(), json={"batch": [
        {"type": "track", "userId": "cy", "event": "Imported", "messageId": "h-2"}]})
    assert imported.status_code == 200
    events = stored(client, "cy", 7)
    clicked = next(e for e in events if e["event_type"] == "Clicked")
    assert (clicked["asset_id"], clicked["labels"], clicked["client_event_id"]) == (
        "a-1", ["blue"], "h-1")
    assert clicked["event_timestamp"].startswith("2025-11-18T07:21:16.527")
    assert count(store) == 7


def test_limits_and_bad_input_in_segment_shape_store_nothing(
        client: TestClient, store: Store, settings: Settings) -> None:
    settings.max_body_bytes = 1_000_000
    big = {"userId": "u", "event": "e", "properties": {"blob": "x" * 33_000}}
    small = {"type": "track", "userId": "u", "event": "e", "properties": {"blob": "x" * 30_000}}
    cases = [
        (f"{URL}/v1/track", orjson.dumps(big), {}, 400, "message_too_large"),
        (f"{URL}/v1/batch", orjson.dumps({"batch": [small] * 18}), {}, 400, "batch_too_large"),
        (f"{URL}/v1/batch", b"{not json", {}, 400, "invalid_json"),
        (f"{URL}/v1/batch", b'{"batch": [{"type": "track", "event": "e"}]}', {}, 400,
         "invalid_request"),
        (f"{URL}/v1/batch", gzip.compress(b'{"batch":[' + b" " * 5_000_000 + b"]}"),
         {"content-encoding": "gzip"}, 413, "payload_too_large"),
        (f"{URL}/v1/track", b'{"userId": "u", "event": "e"}', {}, 401, "unauthorized"),
    ]
    for path, body, headers, status, code in cases:
        auth = {} if status == 401 else basic()
        assert_error(client.post(path, content=body, headers=headers | auth), status, code)
    ok = client.post(f"{URL}/v1/batch", headers=basic(), json={"batch": [
        {"type": "track", "userId": "dee", "event": "ok", "messageId": None, "context": None}]})
    assert ok.status_code == 200
    assert len(stored(client, "dee", 1)) == 1
    time.sleep(1)
    assert count(store) == 1


def test_broker_unavailable_is_503_with_retry_after(broker_down: TestClient,
                                                    settings: Settings) -> None:
    response = broker_down.post(f"{URL}/v1/track", headers=basic(),
                                json={"userId": "u", "event": "e"})
    assert_error(response, 503, "service_unavailable")
    assert response.headers["retry-after"] == str(settings.retry_after_s)
    assert read_topic(settings.bootstrap, settings.topic_events, at_least=1, timeout_s=2) == []


# -- keys: the write key is a Sluice write key, which names the program -------------------
@pytest.fixture
def tokens(settings: Settings, tmp_path: Path) -> dict[str, str]:
    return create_keys(settings, tmp_path, PROGRAM)


def test_the_write_key_is_a_sluice_write_key(tokens: dict[str, str], queued: Settings,
                                             store: Store) -> None:
    with serve(queued, store) as (base, _):
        for bad, status in (("not-a-key", 401), (tokens["read"], 403)):
            client = SegmentClient(bad, host=f"{base}{URL}", sync_mode=True, max_retries=0)
            with pytest.raises(APIError) as refused:
                client.track("eve", "x")
            assert refused.value.status == status
        SegmentClient(tokens["write"], host=f"{base}{URL}", sync_mode=True,
                      max_retries=0).track("eve", "Paid")
        with httpx.Client(base_url=base) as http:
            [event] = stored(http, "eve", 1,
                             headers={"authorization": f"Bearer {tokens['read']}"})
    assert event["program_id"] == PROGRAM and event["event_type"] == "Paid"
    assert count(store) == 1


# -- label weights and recommendations ---------------------------------------------------
def test_products_feed_label_weights(served: str, store: Store, agents: Agents) -> None:
    agents.start()
    client = SegmentClient(PROGRAM, host=f"{served}{URL}", sync_mode=True, max_retries=0)
    client.track("fay", "Order Completed", ORDER, message_id="w-1")
    with httpx.Client(base_url=served) as http:
        assert len(stored(http, "fay", 2)) == 2

        def weights() -> dict[str, float]:
            response = http.get("/users/fay/label-weights", headers={"program-id": PROGRAM})
            body = response.json() if response.status_code == 200 else {"label_weights": []}
            return {w["label"]: w["weight"] for w in body["label_weights"]}
        wait_for(lambda: len(weights()) == 2)
        assert set(weights()) == {"Games", "Books"}


def test_a_clock_an_hour_fast_is_corrected_by_sent_at(client: TestClient, store: Store) -> None:
    """Segment's rule: timestamp = receivedAt - (sentAt - timestamp); the raw time is kept."""
    from datetime import UTC, datetime, timedelta

    def utc(text: str) -> datetime:  # GET /events answers UTC times without an offset
        ts = datetime.fromisoformat(text)
        return ts if ts.tzinfo else ts.replace(tzinfo=UTC)

    fast = datetime.now(UTC) + timedelta(hours=1)
    before = datetime.now(UTC)
    response = client.post("/compat/segment/v1/batch", json={
        "writeKey": "shop", "sentAt": fast.isoformat(), "batch": [
            {"type": "track", "event": "Skewed", "userId": "clock", "messageId": "m-1",
             "timestamp": (fast - timedelta(seconds=30)).isoformat()}]})
    after = datetime.now(UTC)
    assert response.status_code == 200, response.text
    wait_for(lambda: len(client.get("/events", params={"user_id": "clock"},
                                    headers={"program-id": "shop"}).json()["events"]) == 1)
    [row] = client.get("/events", params={"user_id": "clock"},
                       headers={"program-id": "shop"}).json()["events"]
    at = utc(row["event_timestamp"])
    assert before - timedelta(seconds=31) <= at <= after - timedelta(seconds=29)
    assert utc(row["client_timestamp"]) == fast - timedelta(seconds=30)
