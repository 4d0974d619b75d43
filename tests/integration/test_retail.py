"""Retail typed events (``POST /compat/retail/events``) on Tansu + chDB.

Every documented field lands in ClickHouse with its canonical value; the 100-event
limit, the per-kind required fields and every failure answer in the retail shape.
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
from tests.integration.conftest import Agents, count, create_keys, event, read_topic, wait_for

URL = "/compat/retail/events"
H = {"program-id": "shop"}
KINDS = ["EventSale", "EventProductViewed", "EventAddedToCart", "EventRemovedFromCart",
         "EventProductClicked", "EventAddedToWishlist"]
# The vendor's own examples (seed 001), verbatim.
SALE = {"type": "EventSale", "timestamp": "2025-11-18T07:21:16.527Z",
        "customerCode": "D314K1432", "productCode": "N30122", "quantity": 2}
VIEWED = {"type": "EventProductViewed", "timestamp": "2025-11-18T07:18:13.527Z",
          "customerCode": "D314K1432", "productCode": "N30122"}


def rows(store: Store, where: str = "1") -> list[dict]:
    return store.query(f"SELECT {COLUMNS} FROM events FINAL WHERE {where} "
                       "ORDER BY event_timestamp, asset_id")



def assert_error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == "error" and body["code"] == status
    assert isinstance(body["message"], str) and body["message"]
    return body


def test_documented_single_event_lands_with_canonical_values(
    client: TestClient, store: Store
) -> None:
    sale = SALE | {"price": 19.9, "currency": "EUR", "orderCode": "O-77"}
    response = client.post(URL, json=sale, headers=H)
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ok", "accepted": 1}
    wait_for(lambda: count(store) == 1)
    [row] = rows(store)
    assert row["source"] == "retail" and row["program_id"] == "shop"
    assert row["user_id"] == "D314K1432"
    assert row["event_type"] == "purchase"
    assert row["asset_id"] == "N30122"
    assert row["value"] == 2.0
    assert row["labels"] == []
    assert row["event_timestamp"] == datetime(2025, 11, 18, 7, 21, 16, 527000)
    # every field not mapped to a canonical one is kept, as JSON text
    assert orjson.loads(row["properties"]) == {"price": 19.9, "currency": "EUR", "orderCode": "O-77"}
    assert (row["client_event_id"], row["session_id"], row["anonymous_id"], row["email"]) == (
        "", "", "", "")


def test_documented_batch_and_every_kind(client: TestClient, store: Store) -> None:
    no_time = {"type": "EventProductClicked", "customerCode": "C2", "productCode": "P-click"}
    batch = [
        SALE,
        VIEWED,
        {"type": "EventAddedToCart", "timestamp": "2025-11-18T08:00:00Z",
         "customerCode": "C2", "productCode": "P-add", "quantity": 1.5},
        {"type": "EventRemovedFromCart", "timestamp": "2025-11-18T08:01:00+01:00",
         "customerCode": "C2", "productCode": "P-rm", "quantity": 3},
        {"type": "EventAddedToWishlist", "timestamp": "2025-11-18T08:02:00",
         "customerCode": "C2", "productCode": "P-wish", "note": {"gift": True}},
        no_time,
    ]
    before = datetime.now(UTC).replace(tzinfo=None)
    response = client.post(URL, json=batch, headers=H)
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ok", "accepted": 6}
    wait_for(lambda: count(store) == 6)
    by_asset = {(r["user_id"], r["asset_id"], r["event_type"]): r for r in rows(store)}
    assert set(by_asset) == {
        ("D314K1432", "N30122", "purchase"), ("D314K1432", "N30122", "view"),
        ("C2", "P-add", "add_to_cart"), ("C2", "P-rm", "remove_from_cart"),
        ("C2", "P-wish", "add_to_wishlist"), ("C2", "P-click", "click"),
    }
    view = by_asset[("D314K1432", "N30122", "view")]
    assert view["value"] is None and view["properties"] == "{}"
    assert view["event_timestamp"] == datetime(2025, 11, 18, 7, 18, 13, 527000)
    assert by_asset[("C2", "P-add", "add_to_cart")]["value"] == 1.5
    removed = by_asset[("C2", "P-rm", "remove_from_cart")]
    assert removed["value"] == 3.0
    assert removed["event_timestamp"] == datetime(2025, 11, 18, 7, 1)  # +01:00 -> UTC
    wish = by_asset[("C2", "P-wish", "add_to_wishlist")]
    assert wish["event_timestamp"] == datetime(2025, 11, 18, 8, 2)  # no offset: UTC
    assert orjson.loads(wish["properties"]) == {"note": {"gift": True}}
    clicked = by_asset[("C2", "P-click", "click")]
    # no timestamp: the time of receipt
    assert before <= clicked["event_timestamp"] <= clicked["received_at"]
    assert all(r["source"] == "retail" for r in by_asset.values())


def test_at_most_100_events_per_request(client: TestClient, store: Store, settings: Settings) -> None:
    def batch(n: int) -> list[dict]:
        return [VIEWED | {"productCode": f"P{i}"} for i in range(n)]

    too_many = client.post(URL, json=batch(101), headers=H)
    body = assert_error(too_many, 422)
    assert body["errors"][0]["index"] is None and "1 to 100" in body["errors"][0]["message"]
    assert body["availableTypes"] == KINDS
    empty = client.post(URL, json=[], headers=H)
    assert "not 0" in assert_error(empty, 422)["errors"][0]["message"]

    ok = client.post(URL, json=batch(100), headers=H)
    assert ok.status_code == 200 and ok.json() == {"status": "ok", "accepted": 100}
    wait_for(lambda: count(store) == 100)
    # nothing of the refused requests was published
    assert len(read_topic(settings.bootstrap, settings.topic_events, at_least=101, timeout_s=2)) == 1


def test_unknown_type_or_missing_field_names_index_field_and_kinds(
    client: TestClient, store: Store
) -> None:
    batch = [
        VIEWED,
        VIEWED | {"type": "EventTeleported"},
        {k: v for k, v in SALE.items() if k != "quantity"},
        {k: v for k, v in VIEWED.items() if k != "type"},
        {k: v for k, v in VIEWED.items() if k != "customerCode"},
    ]
    body = assert_error(client.post(URL, json=batch, headers=H), 422)
    assert body["availableTypes"] == KINDS
    errors = {e["index"]: e for e in body["errors"]}
    assert set(errors) == {1, 2, 3, 4}
    assert errors[1]["field"] == "type" and "EventTeleported" in errors[1]["message"]
    assert all(kind in errors[1]["message"] for kind in KINDS)
    assert errors[2] == {"index": 2, "type": "EventSale", "field": "quantity",
                         "message": "EventSale requires 'quantity'"}
    assert errors[3]["field"] == "type" and errors[3]["type"] is None
    assert errors[4]["type"] == "EventProductViewed" and errors[4]["field"] == "customerCode"

    single = client.post(URL, json={"type": "EventAddedToCart", "customerCode": "c",
                                    "productCode": "p"}, headers=H)
    [err] = assert_error(single, 422)["errors"]
    assert (err["index"], err["type"], err["field"]) == (0, "EventAddedToCart", "quantity")
    # the whole request was refused: only the next good one is stored
    assert client.post(URL, json=VIEWED, headers=H).status_code == 200
    wait_for(lambda: count(store) == 1)
    assert [r["event_type"] for r in rows(store)] == ["view"]


@pytest.mark.parametrize(("event_", "field"), [
    (SALE | {"quantity": "2"}, "quantity"),
    (SALE | {"quantity": 0}, "quantity"),
    (SALE | {"quantity": True}, "quantity"),
    (SALE | {"timestamp": "yesterday"}, "timestamp"),
    (SALE | {"timestamp": 1763450476}, "timestamp"),
    (SALE | {"timestamp": "1800-01-01T00:00:00Z"}, "timestamp"),
    (SALE | {"customerCode": ""}, "customerCode"),
    (SALE | {"productCode": 30122}, "productCode"),
])
def test_bad_field_values_are_422(gateway: TestClient, event_: dict, field: str) -> None:
    [err] = assert_error(gateway.post(URL, json=[VIEWED, event_], headers=H), 422)["errors"]
    assert (err["index"], err["type"], err["field"]) == (1, "EventSale", field)


def test_request_level_errors_in_the_retail_shape(gateway: TestClient, settings: Settings) -> None:
    no_program = assert_error(gateway.post(URL, json=SALE), 422)
    assert no_program["errors"][0]["field"] == "header.program-id"
    text = gateway.post(URL, content=orjson.dumps(SALE), headers=H | {"content-type": "text/plain"})
    assert assert_error(text, 422)["errors"][0]["field"] == "header.content-type"
    broken = gateway.post(URL, content=b'{"type": "EventSale",', headers=H | {
        "content-type": "application/json"})
    assert "JSON" in assert_error(broken, 422)["errors"][0]["message"]
    scalar = gateway.post(URL, json="EventSale", headers=H)
    assert "object or an array" in assert_error(scalar, 422)["errors"][0]["message"]

    settings.max_body_bytes = 1000
    big = gateway.post(URL, json=[VIEWED] * 20, headers=H)
    assert "1000 bytes" in assert_error(big, 413)["message"]


def test_broker_unavailable_is_503_with_retry_after(broker_down: TestClient,
                                                    settings: Settings) -> None:
    response = broker_down.post(URL, json=SALE, headers=H)
    assert "retry later" in assert_error(response, 503)["message"]
    assert response.headers["retry-after"] == str(settings.retry_after_s)


def test_user_state_late_is_504_events_durable(gateway: TestClient, state_late: Settings) -> None:
    response = gateway.post(URL, json=SALE, headers=H)
    assert "do not resend" in assert_error(response, 504)["message"]
    assert len(read_topic(state_late.bootstrap, state_late.topic_events, at_least=1)) == 1


# -- API keys --------------------------------------------------------------------------
@pytest.fixture
def tokens(settings: Settings, tmp_path: Path) -> dict[str, str]:
    return create_keys(settings, tmp_path, "shop")


def test_api_keys_are_required_and_refused_in_the_retail_shape(
    keyed: TestClient, tokens: dict[str, str]
) -> None:
    def post(token: str | None, body: object = SALE) -> object:
        auth = {"authorization": f"Bearer {token}"} if token else {}
        return keyed.post(URL, json=body, headers=H | auth)

    assert "credentials" in assert_error(post(None), 401)["message"]
    assert "invalid" in assert_error(post("sk_000000000000_" + "x" * 43), 401)["message"]
    assert "another program" in assert_error(post(tokens["other"]), 403)["message"]
    assert "'read' key" in assert_error(post(tokens["read"]), 403)["message"]
    # credentials come before validation: an invalid body without a key is still 401
    assert_error(post(None, {"type": "Nope"}), 401)
    ok = post(tokens["write"])
    assert ok.status_code == 200 and ok.json() == {"status": "ok", "accepted": 1}


# -- label weights ---------------------------------------------------------------------
def test_a_sale_drives_the_same_label_weights_as_an_actionhub_purchase(
    pipeline: TestClient, agents: Agents
) -> None:
    agents.start()
    assets = {"assets": [{"asset_id": "N30122", "labels": ["red", "shoe"]}]}
    assert pipeline.put("/assets", json=assets, headers=H).status_code == 200
    pipeline.app.state.gateway.settings.dialect_state_wait_programs = ["*"]
    # every program asks to wait: each answer comes once user state has it
    sale = pipeline.post(URL, json=SALE | {"customerCode": "retail-user"}, headers=H)
    assert sale.status_code == 200, sale.text
    purchase = event("hub-user", "N30122", event_type="purchase", labels=[],
                     event_timestamp=SALE["timestamp"])
    assert pipeline.post("/events?queue_updates=false", json={"events": [purchase]},
                         headers=H).status_code == 200

    def weights(user: str) -> list[dict]:
        response = pipeline.get(f"/users/{user}/label-weights", headers=H)
        assert response.status_code == 200
        return response.json()["label_weights"]

    retail, hub = weights("retail-user"), weights("hub-user")
    assert retail == hub
    assert [w["label"] for w in retail] == ["red", "shoe"]
    assert retail[0]["weight"] == pytest.approx(5.0)  # a purchase's raise, not a view's


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_a_number_json_has_not_in_an_unknown_field_is_422(gateway: TestClient, number: str) -> None:
    # unknown fields become the properties' JSON text, which these would break
    body = orjson.dumps([VIEWED, SALE | {"note": {"n": "@"}}]).decode().replace('"@"', number)
    [err] = assert_error(gateway.post(URL, content=body, headers=H | {
        "content-type": "application/json"}), 422)["errors"]
    assert (err["index"], err["type"]) == (1, "EventSale")
    assert "NaN and Infinity" in err["message"]
