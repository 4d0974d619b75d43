"""Every kind of bad request gets a clear 4xx in FastAPI's shape; never a 500."""

from __future__ import annotations

import orjson
import pytest
from fastapi.testclient import TestClient

from tests.integration.conftest import event

HEADERS = {"program-id": "p1"}


def post(client: TestClient, body: object, headers: dict[str, str] = HEADERS, **kw: object):
    return client.post("/events", json=body, headers=headers, **kw)


def locs(response) -> list[list[object]]:
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert all({"loc", "msg", "type"} <= set(d) for d in detail)
    return [d["loc"] for d in detail]


def test_missing_program_id_header(gateway: TestClient) -> None:
    assert ["header", "program-id"] in locs(post(gateway, {"events": [event()]}, headers={}))


def test_empty_program_id_header(gateway: TestClient) -> None:
    assert ["header", "program-id"] in locs(post(gateway, {"events": [event()]}, headers={"program-id": ""}))


@pytest.mark.parametrize("n", [0, 1001])
def test_event_count_out_of_bounds(gateway: TestClient, n: int) -> None:
    response = post(gateway, {"events": [event(asset=str(i)) for i in range(n)]})
    assert locs(response) == [["body", "events"]]
    assert response.json()["detail"][0]["type"] in ("too_short", "too_long")


@pytest.mark.parametrize("field", ["user_id", "event_timestamp", "event_type", "asset_id", "labels"])
def test_missing_field(gateway: TestClient, field: str) -> None:
    bad = event()
    del bad[field]
    response = post(gateway, {"events": [event(), bad]})
    assert locs(response) == [["body", "events", 1, field]]
    assert response.json()["detail"][0]["type"] == "missing"


@pytest.mark.parametrize("value", ["yesterday", "2026-13-01T00:00:00Z", "", 1700000000, "0001-01-01T00:00:00Z"])
def test_bad_timestamp(gateway: TestClient, value: object) -> None:
    assert locs(post(gateway, {"events": [event(event_timestamp=value)]})) == [
        ["body", "events", 0, "event_timestamp"]
    ]


@pytest.mark.parametrize("field", ["user_id", "event_type", "asset_id"])
@pytest.mark.parametrize("value", [123, "", None, ["x"]])
def test_bad_id(gateway: TestClient, field: str, value: object) -> None:
    assert locs(post(gateway, {"events": [event(**{field: value})]})) == [["body", "events", 0, field]]


@pytest.mark.parametrize("labels", ["red", [1], [""], {"a": 1}])
def test_labels_not_an_array_of_strings(gateway: TestClient, labels: object) -> None:
    assert locs(post(gateway, {"events": [event(labels=labels)]}))[0][:4] == ["body", "events", 0, "labels"]


def test_body_not_an_object(gateway: TestClient) -> None:
    assert locs(post(gateway, [event()])) == [["body"]]


def test_malformed_json(gateway: TestClient) -> None:
    response = gateway.post("/events", content=b'{"events": [', headers=HEADERS | {"content-type": "application/json"})
    assert locs(response) == [["body"]]
    assert response.json()["detail"][0]["type"] == "json_invalid"


def test_empty_body(gateway: TestClient) -> None:
    response = gateway.post("/events", content=b"", headers=HEADERS | {"content-type": "application/json"})
    assert locs(response) == [["body"]]


def test_wrong_content_type(gateway: TestClient) -> None:
    response = gateway.post("/events", content=b'{"events": []}', headers=HEADERS | {"content-type": "text/plain"})
    assert locs(response) == [["header", "content-type"]]


def test_bad_query_flag(gateway: TestClient) -> None:
    response = gateway.post("/events?queue_updates=maybe", json={"events": [event()]}, headers=HEADERS)
    assert locs(response) == [["query", "queue_updates"]]


def test_body_too_large(gateway: TestClient) -> None:
    limit = gateway.app.state.gateway.settings.max_body_bytes
    huge = {"events": [event(labels=["x" * 200] * 100) for _ in range(limit // 20_000 + 2)]}
    response = post(gateway, huge)
    assert response.status_code == 413
    assert str(limit) in response.json()["detail"]


def test_get_events_needs_user_id(gateway: TestClient) -> None:
    assert ["query", "user_id"] in locs(gateway.get("/events", headers=HEADERS))


def test_openapi_documents_the_contract(gateway: TestClient) -> None:
    spec = gateway.get("/openapi.json").json()
    post_op = spec["paths"]["/events"]["post"]
    params = {p["name"]: p for p in post_op["parameters"]}
    assert params["program-id"]["required"] is True
    assert {"queue_updates", "process_user_actions"} <= set(params)
    event_schema = spec["components"]["schemas"]["Event"]
    assert set(event_schema["required"]) == {"user_id", "event_timestamp", "event_type", "asset_id", "labels"}
    assert spec["components"]["schemas"]["EventList"]["properties"]["events"]["maxItems"] == 1000
    assert "/healthz" in spec["paths"] and "/readyz" in spec["paths"]
    assert gateway.get("/docs").status_code == 200


@pytest.mark.parametrize(("attributes", "says"), [
    ('{"price": 123456789012345678901234567890}', "64 bits"),  # was a 500 (orjson)
    ('{"nested": [{"x": -99999999999999999999}]}', "64 bits"),
    ('{"x": NaN}', "NaN"),
    ('{"x": [Infinity]}', "NaN"),
    ('{"x": "\\ud800"}', "Invalid JSON"),  # a lone surrogate: not Unicode
    ('{"\\udc00": 1}', "surrogate"),
    ('{"a":' * 300 + "1" + "}" * 300, "recursion"),
])
def test_asset_attributes_kafka_or_clickhouse_would_refuse_get_a_422(
        gateway: TestClient, attributes: str, says: str) -> None:
    body = '{"assets": [{"asset_id": "a1", "labels": [], "attributes": ' + attributes + '}]}'
    response = gateway.put("/assets", content=body.encode(), headers=HEADERS | {
        "content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert says in response.text
    assert gateway.get("/assets/a1", headers=HEADERS).status_code == 404  # nothing stored


def test_asset_attributes_at_the_edges_are_stored_as_sent(gateway: TestClient) -> None:
    attributes = {"max": 2**64 - 1, "min": -(2**63), "pi": 3.14159, "k" * 10_000: "long key",
                  "deep": [[[[{"ok": True}]]]], "text": "ünï \U0001f600"}
    response = gateway.put("/assets", json={"assets": [{"asset_id": "a1", "labels": [],
                                                        "attributes": attributes}]},
                           headers=HEADERS)
    assert response.status_code == 200, response.text
    assert gateway.get("/assets/a1", headers=HEADERS).json()["attributes"] == attributes


def test_an_unknown_field_nested_past_any_parser_limit_is_422(gateway: TestClient) -> None:
    # msgspec, which skips unknown fields, raised RecursionError here: a 500
    bad = orjson.dumps({"events": [event(extra="@")]}).replace(b'"@"', b"[" * 5000 + b"]" * 5000)
    response = gateway.post("/events", content=bad, headers=HEADERS | {
        "content-type": "application/json"})
    assert locs(response) == [["body"]]
    assert "recursion limit" in response.json()["detail"][0]["msg"]
