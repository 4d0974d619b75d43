"""``POST /events?wait=broker|user|stored`` and the receipts of the batches answered 202."""

from __future__ import annotations

from fastapi.testclient import TestClient

from services.gateway.app import create_app
from services.gateway.receipts import Receipt
from services.shared.clickhouse import Store
from services.shared.settings import Settings
from tests.integration.conftest import count, event, running_sink, wait_for

H = {"program-id": "shop"}


def test_wait_stored_answers_once_clickhouse_holds_the_batch(
        settings: Settings, store: Store) -> None:
    with running_sink(settings, store), TestClient(create_app(settings, store)) as client:
        for n in (1, 250):
            posted = client.post("/events?wait=stored", headers=H,
                                 json={"events": [event(f"u{i}") for i in range(n)]})
            assert posted.status_code == 200, posted.text
            # no polling: the 200 itself says ClickHouse holds every event of the batch
        assert count(store) == 251


def test_wait_stored_without_a_sink_answers_202_and_the_receipt_follows(
        settings: Settings, store: Store) -> None:
    settings.wait_timeout_s = 0.5
    with TestClient(create_app(settings, store)) as client:
        posted = client.post("/events?wait=stored", headers=H,
                             json={"events": [event("a"), event("b"), event("c")]})
        assert posted.status_code == 202, posted.text
        body = posted.json()
        assert body["status"] == "pending"
        receipt = Receipt.decode(body["receipt"])
        assert receipt is not None and receipt.program == "shop" and receipt.wait == "stored"
        url = f"/receipts/{body['receipt']}"
        assert client.get(url, headers=H).json()["status"] == "pending"
        assert client.get(url, headers={"program-id": "other"}).status_code == 404
        assert client.get("/receipts/not-a-receipt", headers=H).status_code == 404
        assert count(store) == 0
        with running_sink(settings, store):  # the sink comes: the batch is stored
            wait_for(lambda: client.get(url, headers=H).json()["status"] == "stored", 30)
        assert count(store) == 3


def test_wait_broker_answers_without_waiting_for_anyone(settings: Settings, store: Store) -> None:
    settings.wait_timeout_s = 0.2
    with TestClient(create_app(settings, store)) as client:  # no sink, no agents
        posted = client.post("/events?wait=broker", headers=H, json={"events": [event()]})
        assert posted.status_code == 200 and posted.json() == {"result": "accepted 1 events"}
        bad = client.post("/events?wait=never", headers=H, json={"events": [event()]})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "wait"]
