"""PostHog's capture API (``/compat/posthog``) on Tansu + chDB, driven by posthog-python
itself (plain and gzip) and by posthog-js's wire shapes sent by hand (gzip-js, base64
form, arrays, single events): every event read back with ``GET /events``; bad input gets
PostHog's error shape and stores nothing."""

from __future__ import annotations

import base64
import gzip
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient
from posthog import Posthog
from posthog.request import APIError

from services.shared.clickhouse import Store
from services.shared.settings import Settings
from tests.integration.conftest import Agents, count, create_keys, read_topic, wait_for
from tests.integration.served import serve

PROGRAM = "shop"  # with no keys file the token is the program
URL = "/compat/posthog"
T = "2025-11-18T07:21:16.527000+00:00"


@pytest.fixture(autouse=True)
def _v0_capture(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POSTHOG_CAPTURE_MODE", raising=False)  # v1 posts elsewhere


@pytest.fixture
def served(queued: Settings, store: Store) -> Iterator[str]:
    with serve(queued, store) as (base, _):
        yield base


def sdk(base: str, token: str = PROGRAM, **options: Any) -> Posthog:
    return Posthog(token, host=f"{base}{URL}", sync_mode=True, max_retries=0, debug=True,
                   **options)


def stored(http: Any, user: str, n: int, program: str = PROGRAM,
           headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The user's events as ``GET /events`` reads them back, once ``n`` are stored."""
    got: list[dict[str, Any]] = []

    def enough() -> bool:
        response = http.get("/events", params={"user_id": user},
                            headers={"program-id": program} | (headers or {}))
        got[:] = response.json()["events"] if response.status_code == 200 else []
        return len(got) >= n
    wait_for(enough)
    assert len(got) == n, got
    return sorted(got, key=lambda e: e["event_timestamp"])


def js_event(name: str, user: str, **extra: Any) -> dict[str, Any]:
    """An event as posthog-js sends it: token and distinct_id among the properties."""
    return {"event": name, "uuid": str(uuid.uuid4()), "timestamp": "2025-11-18T07:21:16.527Z",
            "properties": {"token": PROGRAM, "distinct_id": user, "$current_url": "/"} | extra}


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code and body["detail"] and "type" in body and body["attr"] is None
    return body


@pytest.mark.parametrize("gz", [False, True])
def test_posthog_python_events_land_with_every_field(served: str, store: Store, gz: bool) -> None:
    client = sdk(served, gzip=gz)
    ids = [str(uuid.uuid4()) for _ in range(2)]
    client.capture("product viewed", distinct_id="ana", uuid=ids[0], timestamp=T,
                   properties={"asset_id": "sku-1", "labels": ["red", "shoe"], "price": 9.5})
    client.capture("signed up", distinct_id="ana", uuid=ids[1], properties={"plan": "pro"})
    made = client.set(distinct_id="ana", properties={"email": "ana@example.com"})
    client.shutdown()
    with httpx.Client(base_url=served) as http:
        viewed, signed, set_ = stored(http, "ana", 3)
    assert count(store) == 3
    assert [e["event_type"] for e in (viewed, signed, set_)] == ["product viewed", "signed up",
                                                                  "$set"]
    assert [viewed["client_event_id"], signed["client_event_id"]] == ids
    assert set_["client_event_id"] == made
    assert viewed["event_timestamp"].startswith("2025-11-18T07:21:16.527")
    assert (viewed["asset_id"], viewed["labels"]) == ("sku-1", ["red", "shoe"])
    assert orjson.loads(viewed["properties"])["price"] == 9.5
    assert orjson.loads(set_["properties"])["$set"] == {"email": "ana@example.com"}
    assert {e["source"] for e in (viewed, signed, set_)} == {"posthog"}


def test_posthog_js_wire_shapes(client: TestClient, store: Store) -> None:
    one, two, three, four = (js_event(f"e{i}", "bo") for i in range(4))
    now_ms = int(time.time() * 1000)  # posthog-js's send time by its clock: right here
    gzip_js = client.post(f"{URL}/e/?compression=gzip-js&ver=1.200.0&_={now_ms}",
                          content=gzip.compress(orjson.dumps([one, two])),
                          headers={"content-type": "text/plain"})
    form = client.post(f"{URL}/i/v0/e/?compression=base64",
                       data={"data": base64.b64encode(orjson.dumps(three)).decode()})
    array = client.post(f"{URL}/capture", json=[four])
    single = client.post(f"{URL}/track/", json={"api_key": PROGRAM, "event": "e4",
                                                "distinct_id": "bo", "$set": {"plan": "pro"}})
    batch = client.post(f"{URL}/batch", json={"token": PROGRAM, "batch": [js_event("e5", "bo")]})
    for response in (gzip_js, form, array, single, batch):
        assert response.status_code == 200 and response.json() == {"status": 1}, response.text
    events = stored(client, "bo", 6)
    assert sorted(e["event_type"] for e in events) == ["e0", "e1", "e2", "e3", "e4", "e5"]
    by_type = {e["event_type"]: e for e in events}
    assert by_type["e0"]["client_event_id"] == one["uuid"]
    assert uuid.UUID(by_type["e4"]["client_event_id"]).version == 7  # none sent: UUIDv7
    assert "token" not in orjson.loads(by_type["e2"]["properties"])  # the key is not stored
    assert orjson.loads(by_type["e4"]["properties"])["$set"] == {"plan": "pro"}
    # a retried event (same uuid) is stored once
    assert client.post(f"{URL}/e/", json=[one]).status_code == 200
    time.sleep(1)
    assert count(store) == 6
    # retried by a client whose clock is a day off (its time corrected another way): every
    # read of Sluice still shows it once
    day_off = int(time.time() * 1000) - 86_400_000
    assert client.post(f"{URL}/e/?_={day_off}", json=[two]).status_code == 200
    wait_for(lambda: count(store) == 7)  # ClickHouse holds the copy, under another time
    assert sorted(e["event_type"] for e in stored(client, "bo", 6)) == [
        "e0", "e1", "e2", "e3", "e4", "e5"]


def test_bad_input_is_a_4xx_in_posthog_shape_and_stores_nothing(
        client: TestClient, store: Store, settings: Settings) -> None:
    settings.max_body_bytes = 100_000
    bomb = gzip.compress(b"[" + b" " * 50_000_000 + b"]")
    cases = [
        (b"{not json", {}, 400, "invalid_payload"),
        (b'{"api_key": "shop", "batch": []}', {}, 400, "invalid_payload"),
        (b'{"api_key": "shop", "batch": [{"event": "x"}]}', {}, 400, "invalid_payload"),
        (b'[{"event": "x", "distinct_id": "u"}]', {}, 401, "invalid_api_key"),  # no token
        (b"abc", {"x-q": "lz64"}, 400, "invalid_payload"),
        (bomb, {"content-encoding": "gzip"}, 413, "payload_too_large"),
        (b"[" + b" " * 200_000 + b"]", {}, 413, "payload_too_large"),
    ]
    for body, headers, status, code in cases:
        path = f"{URL}/e/?compression=lz64" if headers.pop("x-q", None) else f"{URL}/batch/"
        assert_error(client.post(path, content=body, headers=headers), status, code)
    ok = client.post(f"{URL}/batch/", json={"api_key": PROGRAM, "batch": [js_event("ok", "cy")]})
    assert ok.status_code == 200
    assert len(stored(client, "cy", 1)) == 1
    time.sleep(1)
    assert count(store) == 1


def test_broker_unavailable_is_503_with_retry_after(broker_down: TestClient,
                                                    settings: Settings) -> None:
    response = broker_down.post(f"{URL}/batch/", json={"api_key": PROGRAM,
                                                       "batch": [js_event("x", "u")]})
    assert_error(response, 503, "service_unavailable")
    assert response.headers["retry-after"] == str(settings.retry_after_s)
    assert read_topic(settings.bootstrap, settings.topic_events, at_least=1, timeout_s=2) == []


# -- keys: the token is a Sluice write key, which names the program -----------------------
@pytest.fixture
def tokens(settings: Settings, tmp_path: Path) -> dict[str, str]:
    return create_keys(settings, tmp_path, PROGRAM)


def test_the_token_is_a_write_key_of_the_program(tokens: dict[str, str], queued: Settings,
                                                 store: Store) -> None:
    with serve(queued, store) as (base, _):
        for bad in ("phc_not_a_sluice_key", tokens["read"]):
            with pytest.raises(APIError) as refused:
                sdk(base, bad).capture("x", distinct_id="dee")
            assert refused.value.status == (403 if bad == tokens["read"] else 401)
        sdk(base, tokens["write"], gzip=True).capture("paid", distinct_id="dee")
        sdk(base, tokens["other"]).capture("paid", distinct_id="dee")
        with httpx.Client(base_url=base) as http:
            read = {"authorization": f"Bearer {tokens['read']}"}
            [mine] = stored(http, "dee", 1, headers=read)
            other = {"authorization": f"Bearer {tokens['other_read']}"}
            [theirs] = stored(http, "dee", 1, program="other", headers=other)
    assert mine["program_id"] == PROGRAM and theirs["program_id"] == "other"
    assert count(store) == 2


# -- label weights --------------------------------------------------------------------------
def test_asset_and_labels_feed_label_weights(served: str, store: Store, agents: Agents) -> None:
    agents.start()
    client = sdk(served)
    client.capture("purchase", distinct_id="eve", timestamp=T,
                   properties={"asset_id": "sku-9", "labels": ["red", "shoe"]})
    with httpx.Client(base_url=served) as http:
        stored(http, "eve", 1)

        def weights() -> list[dict[str, Any]]:
            response = http.get("/users/eve/label-weights", headers={"program-id": PROGRAM})
            return response.json()["label_weights"] if response.status_code == 200 else []
        wait_for(lambda: len(weights()) == 2)
        assert {w["label"]: w["weight"] for w in weights()} == {"red": 5.0, "shoe": 5.0}


def test_a_clock_an_hour_fast_is_corrected_by_sent_at(client: TestClient, store: Store) -> None:
    """PostHog's rule: timestamp = received - (sent_at - timestamp); $ignore_sent_at keeps
    the client's time; more than 23 h ahead is clamped to receipt. The raw time is kept."""
    from datetime import UTC, datetime, timedelta

    def utc(text: str) -> datetime:  # GET /events answers UTC times without an offset
        ts = datetime.fromisoformat(text)
        return ts if ts.tzinfo else ts.replace(tzinfo=UTC)

    fast = datetime.now(UTC) + timedelta(hours=1)  # the phone's clock
    events = [
        {"event": "skewed", "distinct_id": "clock", "uuid": str(uuid.uuid4()),
         "timestamp": (fast - timedelta(seconds=30)).isoformat()},
        {"event": "ignored", "distinct_id": "clock", "uuid": str(uuid.uuid4()),
         "timestamp": fast.isoformat(), "properties": {"$ignore_sent_at": True}},
        {"event": "future", "distinct_id": "clock", "uuid": str(uuid.uuid4()),
         "timestamp": (fast + timedelta(days=2)).isoformat(), "properties": {"$ignore_sent_at": True}},
    ]
    before = datetime.now(UTC)
    response = client.post(f"{URL}/batch/", json={"api_key": PROGRAM, "sent_at": fast.isoformat(),
                                                  "batch": events})
    after = datetime.now(UTC)
    assert response.status_code == 200, response.text
    rows = {e["event_type"]: e for e in stored(client, "clock", 3)}
    at = {name: utc(row["event_timestamp"]) for name, row in rows.items()}
    assert before - timedelta(seconds=31) <= at["skewed"] <= after - timedelta(seconds=29)
    assert at["ignored"] == fast  # as sent: 1 h ahead
    assert before <= at["future"] <= after  # 2 days ahead: clamped to receipt
    assert utc(rows["skewed"]["client_timestamp"]) == fast - timedelta(seconds=30)
    assert utc(rows["future"]["client_timestamp"]) == fast + timedelta(days=2)
