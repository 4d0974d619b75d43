"""UserFlux's Events API (``/compat/userflux/event/ingest[/batch]``) on Tansu + chDB.

Every field of ``IngestEventRequest`` lands in ClickHouse with its canonical value; 204
with no body on success; the 50-event batch limit and every failure answer in the
``{statusCode, error, message}`` shape.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient

from services.shared.clickhouse import Store
from services.shared.settings import Settings
from tests.integration.conftest import DIALECT_COLUMNS as COLUMNS
from tests.integration.conftest import count, create_keys, read_topic, wait_for

ONE = "/compat/userflux/event/ingest"
BATCH = "/compat/userflux/event/ingest/batch"
H = {"program-id": "app"}
T_MS = 1_763_450_476_527  # 2025-11-18T07:21:16.527Z
EVENT = {"userId": "user-1", "anonymousId": "anon-1", "name": "checkout_started",
         "timestamp": T_MS, "properties": {"plan": "pro", "seats": 3, "tags": ["a", "b"]}}


def rows(store: Store) -> list[dict]:
    return store.query(f"SELECT {COLUMNS} FROM events FINAL ORDER BY event_timestamp, user_id")



def assert_accepted(response) -> None:
    assert response.status_code == 204, response.text
    assert response.content == b""


def assert_error(response, status: int, reason: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["statusCode"] == status and body["error"] == reason
    assert isinstance(body["message"], str) and body["message"]
    return body


def test_every_documented_field_lands_with_its_canonical_value(
    client: TestClient, store: Store
) -> None:
    assert_accepted(client.post(ONE, params={"locationEnrichment": "true"}, json=EVENT, headers=H))
    wait_for(lambda: count(store) == 1)
    [row] = rows(store)
    assert row["source"] == "userflux" and row["program_id"] == "app"
    assert row["user_id"] == "user-1" and row["anonymous_id"] == "anon-1"
    assert row["event_type"] == "checkout_started"
    assert row["event_timestamp"] == datetime(2025, 11, 18, 7, 21, 16, 527000)
    assert orjson.loads(row["properties"]) == {
        "plan": "pro", "seats": 3, "tags": ["a", "b"], "$locationEnrichment": True}
    assert row["asset_id"] == "" and row["labels"] == [] and row["value"] is None
    assert (row["client_event_id"], row["session_id"], row["email"]) == ("", "", "")


def test_anonymous_event_and_defaults(client: TestClient, store: Store) -> None:
    before = datetime.now(UTC).replace(tzinfo=None)
    anonymous = {"userId": None, "anonymousId": "anon-7", "name": "page_view"}
    assert_accepted(client.post(ONE, json=anonymous, headers=H))
    known = {"userId": "user-8", "name": "login", "timestamp": float(T_MS)}
    assert_accepted(client.post(ONE, params={"locationEnrichment": "false"}, json=known, headers=H))
    wait_for(lambda: count(store) == 2)
    login, page = rows(store)  # T_MS (2025) sorts before the time of receipt
    # no userId: the anonymousId is the user; no timestamp: the time of receipt
    assert (page["user_id"], page["anonymous_id"]) == ("anon-7", "anon-7")
    assert before <= page["event_timestamp"] <= page["received_at"]
    assert page["properties"] == "{}"  # no locationEnrichment given: nothing stored for it
    assert (login["user_id"], login["anonymous_id"]) == ("user-8", "")
    assert login["event_timestamp"] == datetime(2025, 11, 18, 7, 21, 16, 527000)
    assert orjson.loads(login["properties"]) == {"$locationEnrichment": False}


def test_batch_of_at_most_50(client: TestClient, store: Store, settings: Settings) -> None:
    events = [EVENT | {"userId": f"u{i % 7}", "name": f"step{i}"} for i in range(51)]
    too_many = assert_error(client.post(BATCH, json={"events": events}, headers=H), 400,
                            "Bad Request")
    assert "1 to 50" in too_many["message"] and too_many["details"][0]["path"] == "events"
    assert "not 0" in assert_error(client.post(BATCH, json={"events": []}, headers=H), 400,
                                   "Bad Request")["message"]
    assert_error(client.post(BATCH, json=events[:2], headers=H), 400, "Bad Request")  # no wrapper

    assert_accepted(client.post(BATCH, params={"locationEnrichment": "true"},
                                json={"events": events[:50]}, headers=H))
    wait_for(lambda: count(store) == 50)
    stored = rows(store)
    assert sorted(r["event_type"] for r in stored) == sorted(f"step{i}" for i in range(50))
    assert {r["user_id"] for r in stored} == {f"u{i}" for i in range(7)}
    assert all(orjson.loads(r["properties"])["$locationEnrichment"] is True for r in stored)
    assert all(r["source"] == "userflux" for r in stored)
    # the refused requests published nothing: the topic holds the good batch's 50 events only
    published = read_topic(settings.bootstrap, settings.topic_events, at_least=9, timeout_s=2)
    assert sum(m.value().count(b"\n") + 1 for m in published) == 50


@pytest.mark.parametrize(("body", "path"), [
    ({"name": "x"}, "userId"),
    ({"userId": None, "anonymousId": None, "name": "x"}, "userId"),
    ({"userId": "u"}, "name"),
    ({"userId": "u", "name": ""}, "name"),
    ({"userId": "u", "name": "x", "timestamp": "1763450476527"}, "timestamp"),
    ({"userId": "u", "name": "x", "timestamp": 1e20}, "timestamp"),
    ({"userId": "u", "name": "x", "properties": ["not", "an", "object"]}, "properties"),
    ({"userId": 42, "name": "x"}, "userId"),
])
def test_invalid_event_is_400(gateway: TestClient, body: dict, path: str) -> None:
    single = assert_error(gateway.post(ONE, json=body, headers=H), 400, "Bad Request")
    assert [d["path"] for d in single["details"]] == [path]
    batch = assert_error(gateway.post(BATCH, json={"events": [EVENT, body]}, headers=H), 400,
                         "Bad Request")
    assert [d["path"] for d in batch["details"]] == [f"events.1.{path}"]
    assert f"events.1.{path}" in batch["message"]


def test_request_level_errors_in_the_userflux_shape(gateway: TestClient, settings: Settings) -> None:
    no_program = assert_error(gateway.post(ONE, json=EVENT), 400, "Bad Request")
    assert no_program["details"][0]["path"] == "header.program-id"
    flag = assert_error(gateway.post(ONE, params={"locationEnrichment": "maybe"}, json=EVENT,
                                     headers=H), 400, "Bad Request")
    assert flag["details"][0]["path"] == "query.locationEnrichment"
    form = gateway.post(ONE, data={"name": "x"}, headers=H)
    assert "content type" in assert_error(form, 400, "Bad Request")["message"]
    broken = gateway.post(ONE, content=b'{"name": ', headers=H | {"content-type": "application/json"})
    assert "JSON" in assert_error(broken, 400, "Bad Request")["message"]
    settings.max_body_bytes = 1000
    big = gateway.post(BATCH, json={"events": [EVENT] * 20}, headers=H)
    assert "1000 bytes" in assert_error(big, 413, "Request Entity Too Large")["message"]


def test_broker_unavailable_is_503_with_retry_after(broker_down: TestClient,
                                                    settings: Settings) -> None:
    response = broker_down.post(BATCH, json={"events": [EVENT]}, headers=H)
    assert "retry later" in assert_error(response, 503, "Service Unavailable")["message"]
    assert response.headers["retry-after"] == str(settings.retry_after_s)


def test_user_state_late_is_504_events_durable(gateway: TestClient, state_late: Settings) -> None:
    response = gateway.post(ONE, json=EVENT, headers=H)
    assert "do not resend" in assert_error(response, 504, "Gateway Timeout")["message"]
    assert len(read_topic(state_late.bootstrap, state_late.topic_events, at_least=1)) == 1


# -- API keys: UserFlux's write-only key as Authorization: Bearer -----------------------
@pytest.fixture
def tokens(settings: Settings, tmp_path: Path) -> dict[str, str]:
    return create_keys(settings, tmp_path, "app")


@pytest.mark.parametrize("url", [ONE, BATCH])
def test_api_keys_are_required_and_refused_in_the_userflux_shape(
    keyed: TestClient, tokens: dict[str, str], url: str
) -> None:
    body = {"events": [EVENT]} if url == BATCH else EVENT

    def post(token: str | None, json: object = body) -> object:
        auth = {"authorization": f"Bearer {token}"} if token else {}
        return keyed.post(url, json=json, headers=H | auth)

    assert "credentials" in assert_error(post(None), 401, "Unauthorized")["message"]
    assert_error(post("not-a-key"), 401, "Unauthorized")
    assert "another program" in assert_error(post(tokens["other"]), 403, "Forbidden")["message"]
    assert "'read' key" in assert_error(post(tokens["read"]), 403, "Forbidden")["message"]
    assert_error(post(None, {"bad": True}), 401, "Unauthorized")  # keys before validation
    assert_accepted(post(tokens["write"]))


def test_a_vendor_client_needs_only_the_key_the_program_comes_from_it(
    tokens: dict[str, str], settings: Settings, store: Store, pipeline: TestClient
) -> None:
    """An unchanged UserFlux client sends no program-id header: its key names the program."""
    settings.queue_updates_default = True
    response = pipeline.post(ONE, json=EVENT, headers={"authorization": f"Bearer {tokens['write']}"})
    assert_accepted(response)
    wait_for(lambda: count(store) == 1)
    assert store.query("SELECT program_id FROM events")[0]["program_id"] == "app"
    # a key of another program still cannot write into this one by naming it
    other = pipeline.post(ONE, json=EVENT, headers=H | {"authorization": f"Bearer {tokens['other']}"})
    assert_error(other, 403, "Forbidden")


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_a_number_json_has_not_in_properties_is_400(gateway: TestClient, number: str) -> None:
    # the parser takes them, but the stored properties would be no JSON text
    body = '{"userId": "u", "name": "x", "properties": {"score": [@]}}'.replace("@", number)
    error = assert_error(gateway.post(ONE, content=body, headers=H | {
        "content-type": "application/json"}), 400, "Bad Request")
    assert [d["path"] for d in error["details"]] == ["properties"]
    assert "NaN and Infinity" in error["message"]
