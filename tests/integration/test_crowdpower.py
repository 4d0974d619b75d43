"""CrowdPower's customer events (``/compat/crowdpower/events[/bulk]``) and the user's
session (``GET /compat/crowdpower/users/{id}``, ``GET /users/{id}``) on Tansu + chDB.

Every documented field lands in ClickHouse with its canonical value; success and failure
keep CrowdPower's ``{success, code, data}`` envelope; the bulk limit (100) is enforced.
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
from tests.integration.conftest import Agents, count, create_keys, read_topic, wait_for

ONE = "/compat/crowdpower/events"
BULK = "/compat/crowdpower/events/bulk"
H = {"program-id": "crowd"}
OK = {"success": True, "code": 200, "data": None}
T = 1_763_450_476  # 2025-11-18T07:21:16Z
EVENT = {"user_id": "cust-1", "email": "ana@example.com", "action": "upgraded_plan",
         "properties": {"plan_name": "pro", "seats": 3}, "created_at": T,
         "update_session": False}


def rows(store: Store) -> list[dict]:
    return store.query(f"SELECT {COLUMNS} FROM events FINAL ORDER BY event_timestamp, event_type")



def assert_ok(response) -> None:
    assert response.status_code == 200, response.text
    assert response.json() == OK


def assert_error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False and body["code"] == status
    assert isinstance(body["message"], str) and body["message"]
    return body


def fields(body: dict) -> list[str]:
    return [e["field"] for e in body["data"]["errors"]]


def test_every_documented_field_lands_with_its_canonical_value(
    client: TestClient, store: Store
) -> None:
    assert_ok(client.post(ONE, json=EVENT, headers=H))
    wait_for(lambda: count(store) == 1)
    [row] = rows(store)
    assert row["source"] == "crowdpower" and row["program_id"] == "crowd"
    assert row["user_id"] == "cust-1" and row["email"] == "ana@example.com"
    assert row["event_type"] == "upgraded_plan"
    assert row["event_timestamp"] == datetime(2025, 11, 18, 7, 21, 16)
    assert orjson.loads(row["properties"]) == {"plan_name": "pro", "seats": 3}
    assert row["asset_id"] == "" and row["labels"] == [] and row["value"] is None
    assert (row["client_event_id"], row["session_id"], row["anonymous_id"]) == ("", "", "")


def test_email_only_and_defaults(client: TestClient, store: Store, settings: Settings) -> None:
    before = datetime.now(UTC).replace(tzinfo=None)
    assert_ok(client.post(ONE, json={"email": "bo@example.com", "action": "signed_in"}, headers=H))
    wait_for(lambda: count(store) == 1)
    [row] = rows(store)
    # no user_id: the email is the user; no created_at: the time of receipt
    assert (row["user_id"], row["email"]) == ("bo@example.com", "bo@example.com")
    assert before <= row["event_timestamp"] <= row["received_at"]
    assert row["properties"] == "{}"
    # update_session defaults to true, and travels to the agents on the wire
    [message] = read_topic(settings.bootstrap, settings.topic_events, at_least=1)
    assert orjson.loads(message.value())["update_session"] is True


def test_bulk_of_at_most_100(client: TestClient, store: Store, settings: Settings) -> None:
    events = [{"action": f"step{i}", "created_at": T + i, "properties": {"i": i}}
              for i in range(101)]
    too_many = assert_error(client.post(BULK, json={"user_id": "cust-2", "events": events},
                                        headers=H), 422)
    assert fields(too_many) == ["events"] and "1 to 100" in too_many["message"]
    assert_error(client.post(BULK, json={"user_id": "cust-2", "events": []}, headers=H), 422)

    bulk = {"user_id": "cust-2", "email": "cy@example.com",
            "events": events[:99] + [{"action": "last", "update_session": False}]}
    assert_ok(client.post(BULK, json=bulk, headers=H))
    wait_for(lambda: count(store) == 100)
    stored = rows(store)
    assert {(r["user_id"], r["email"], r["source"]) for r in stored} == {
        ("cust-2", "cy@example.com", "crowdpower")}
    first = stored[0]
    assert first["event_type"] == "step0" and first["event_timestamp"] == datetime(2025, 11, 18, 7, 21, 16)
    assert orjson.loads(first["properties"]) == {"i": 0}
    assert stored[-1]["event_type"] == "last"  # created_at defaults to the time of receipt
    # one user, one message; the refused requests published nothing
    [message] = read_topic(settings.bootstrap, settings.topic_events, at_least=2, timeout_s=2)
    wire = [orjson.loads(line) for line in message.value().split(b"\n")]
    assert [e["update_session"] for e in wire] == [True] * 99 + [False]


@pytest.mark.parametrize(("url", "body", "field"), [
    (ONE, {"action": "x"}, "user_id"),
    (ONE, {"user_id": None, "email": None, "action": "x"}, "user_id"),
    (ONE, {"user_id": "u"}, "action"),
    (ONE, {"user_id": "u", "action": ""}, "action"),
    (ONE, {"user_id": "u", "email": "not-an-email", "action": "x"}, "email"),
    (ONE, {"user_id": "u", "action": "x", "created_at": "1763450476"}, "created_at"),
    (ONE, {"user_id": "u", "action": "x", "created_at": 1e12}, "created_at"),
    (ONE, {"user_id": "u", "action": "x", "update_session": "yes"}, "update_session"),
    (ONE, {"user_id": "u", "action": "x", "properties": "plan=pro"}, "properties"),
    (BULK, {"events": [{"action": "x"}]}, "user_id"),
    (BULK, {"user_id": "u"}, "events"),
    (BULK, {"user_id": "u", "events": [{"action": "x"}, {"properties": {}}]}, "events.1.action"),
    (BULK, {"user_id": "u", "events": [{"action": "x", "created_at": True}]},
     "events.0.created_at"),
])
def test_invalid_request_is_422_in_the_envelope(gateway: TestClient, url: str, body: dict,
                                                field: str) -> None:
    response = assert_error(gateway.post(url, json=body, headers=H), 422)
    assert fields(response) == [field] and field in response["message"]


def test_request_level_errors_in_the_envelope(gateway: TestClient, settings: Settings) -> None:
    assert fields(assert_error(gateway.post(ONE, json=EVENT), 422)) == ["header.program-id"]
    text = gateway.post(ONE, content=orjson.dumps(EVENT), headers=H | {"content-type": "text/plain"})
    assert fields(assert_error(text, 422)) == ["header.content-type"]
    broken = gateway.post(ONE, content=b'{"action": ', headers=H | {"content-type": "application/json"})
    assert "JSON" in assert_error(broken, 422)["message"]
    settings.max_body_bytes = 1000
    big = gateway.post(BULK, json={"user_id": "u", "events": [EVENT] * 20}, headers=H)
    body = assert_error(big, 413)
    assert "1000 bytes" in body["message"] and body["data"] is None


def test_broker_unavailable_is_503_with_retry_after(broker_down: TestClient,
                                                    settings: Settings) -> None:
    response = broker_down.post(BULK, json={"user_id": "u", "events": [{"action": "x"}]}, headers=H)
    assert "retry later" in assert_error(response, 503)["message"]
    assert response.headers["retry-after"] == str(settings.retry_after_s)


def test_user_state_late_is_504_events_durable(gateway: TestClient, state_late: Settings) -> None:
    response = gateway.post(ONE, json=EVENT, headers=H)
    assert "do not resend" in assert_error(response, 504)["message"]
    assert len(read_topic(state_late.bootstrap, state_late.topic_events, at_least=1)) == 1


# -- the user's session ----------------------------------------------------------------
def test_unknown_user_has_no_session(gateway: TestClient, agents: Agents) -> None:
    agents.start()  # the owner of the user's partition says it has no state
    empty = {"user_id": "nobody", "events": 0, "sessions": 0, "session_started": None,
             "last_seen": None}
    crowd = gateway.get("/compat/crowdpower/users/nobody", headers=H)
    assert crowd.status_code == 200 and crowd.json() == {**OK, "data": empty}
    plain = gateway.get("/users/nobody", headers=H)
    assert plain.status_code == 200 and plain.json() == empty
    assert fields(assert_error(gateway.get("/compat/crowdpower/users/x"), 422)) == [
        "header.program-id"]


def test_update_session_drives_the_session_shown_for_the_user(
    pipeline: TestClient, agents: Agents
) -> None:
    agents.start()
    pipeline.app.state.gateway.settings.dialect_state_wait_programs = ["crowd"]
    # this program asks to wait: answered once user state includes the events
    bulk = {"user_id": "cust-9", "events": [
        {"action": "open", "created_at": T},
        {"action": "click", "created_at": T + 60},
        {"action": "open", "created_at": T + 4000},  # more than 30 min later: a new session
        {"action": "email_bounced", "created_at": T + 9000, "update_session": False},
    ]}
    assert_ok(pipeline.post(BULK, json=bulk, headers=H))
    expected = {"user_id": "cust-9", "events": 4, "sessions": 2,
                "session_started": float(T + 4000), "last_seen": float(T + 4000)}
    crowd = pipeline.get("/compat/crowdpower/users/cust-9", headers=H)
    assert crowd.status_code == 200 and crowd.json() == {**OK, "data": expected}
    assert pipeline.get("/users/cust-9", headers=H).json() == expected
    assert pipeline.get("/users/cust-9", headers={"program-id": "other"}).json()["events"] == 0

    assert_ok(pipeline.post(ONE, json={"user_id": "cust-9", "action": "open",
                                       "created_at": T + 4100}, headers=H))
    assert pipeline.get("/users/cust-9", headers=H).json() == expected | {
        "events": 5, "last_seen": float(T + 4100)}


# -- API keys --------------------------------------------------------------------------
@pytest.fixture
def tokens(settings: Settings, tmp_path: Path) -> dict[str, str]:
    return create_keys(settings, tmp_path, "crowd")


def auth(token: str | None) -> dict[str, str]:
    return H | ({"authorization": f"Bearer {token}"} if token else {})


@pytest.mark.parametrize(("url", "body"), [
    (ONE, EVENT), (BULK, {"user_id": "u", "events": [{"action": "x"}]})])
def test_api_keys_are_required_to_write_and_refused_in_the_envelope(
    keyed: TestClient, tokens: dict[str, str], url: str, body: dict
) -> None:
    assert "credentials" in assert_error(keyed.post(url, json=body, headers=auth(None)), 401)["message"]
    assert_error(keyed.post(url, json=body, headers=auth("sk_nope")), 401)
    other = assert_error(keyed.post(url, json=body, headers=auth(tokens["other"])), 403)
    assert "another program" in other["message"]
    read = assert_error(keyed.post(url, json=body, headers=auth(tokens["read"])), 403)
    assert "'read' key" in read["message"]
    assert_error(keyed.post(url, json={}, headers=auth(None)), 401)  # keys before validation
    assert_ok(keyed.post(url, json=body, headers=auth(tokens["write"])))


def test_api_keys_are_required_to_read_the_user(keyed: TestClient, tokens: dict[str, str],
                                                agents: Agents) -> None:
    agents.start()
    url = "/compat/crowdpower/users/cust-1"
    assert_error(keyed.get(url, headers=auth(None)), 401)
    assert "'write' key" in assert_error(keyed.get(url, headers=auth(tokens["write"])), 403)["message"]
    assert_error(keyed.get(url, headers=auth(tokens["other_read"])), 403)
    ok = keyed.get(url, headers=auth(tokens["read"]))
    assert ok.status_code == 200 and ok.json()["data"]["events"] == 0
    # GET /users/{id} follows the ActionHub routes' rules (FastAPI's detail shape)
    assert keyed.get("/users/cust-1", headers=auth(None)).status_code == 401
    assert keyed.get("/users/cust-1", headers=auth(tokens["read"])).status_code == 200


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_a_number_json_has_not_in_properties_is_422(gateway: TestClient, number: str) -> None:
    # the parser takes them, but the stored properties would be no JSON text
    body = '{"user_id": "u", "events": [{"action": "x", "properties": {"n": @}}]}'.replace(
        "@", number)
    response = assert_error(gateway.post(BULK, content=body, headers=H | {
        "content-type": "application/json"}), 422)
    assert fields(response) == ["events.0.properties"]
