"""HTTP -> Kafka -> ClickHouse, on a real broker and a real ClickHouse engine."""

from __future__ import annotations

import orjson
from confluent_kafka import Producer
from fastapi.testclient import TestClient

from services.gateway.app import create_app
from services.shared.clickhouse import Store
from services.shared.events import message_key, partition_for
from services.shared.kafka import producer_config
from services.shared.settings import Settings
from tests.integration.conftest import event, read_topic, running_sink, wait_for


def stored_count(store: Store) -> int:
    return int(store.query("SELECT count() AS n FROM events FINAL")[0]["n"])


def test_posted_events_land_in_clickhouse_once_with_every_field(
    pipeline: TestClient, store: Store
) -> None:
    batch = {
        "events": [
            event("alice", "a1", labels=["red"], event_timestamp="2026-11-20T10:00:00Z"),
            event("alice", "a2", event_type="purchase", labels=[],
                  event_timestamp="2026-11-20T12:00:00+02:00"),
            event("bob", "a1", event_timestamp="2026-11-21T08:30:00.250Z"),
        ]
    }
    response = pipeline.post(
        "/events?queue_updates=true&process_user_actions=false",
        json=batch, headers={"program-id": "shop"},
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"result": "accepted 3 events"}
    wait_for(lambda: stored_count(store) == 3)

    got = pipeline.get("/events", params={"user_id": "alice"}, headers={"program-id": "shop"})
    assert got.status_code == 200
    rows = got.json()["events"]
    # newest first: 12:00+02:00 is 10:00Z, same instant as the first; received order breaks it
    assert [r["asset_id"] for r in rows] == ["a2", "a1"] or [r["asset_id"] for r in rows] == ["a1", "a2"]
    by_asset = {r["asset_id"]: r for r in rows}
    a2 = by_asset["a2"]
    assert a2["event_type"] == "purchase"
    assert a2["labels"] == []
    assert a2["event_timestamp"].startswith("2026-11-20T10:00:00")
    assert a2["program_id"] == "shop" and a2["user_id"] == "alice"
    assert a2["queue_updates"] is True and a2["process_user_actions"] is False
    assert len(a2["event_id"]) == 36 and a2["event_id"] != by_asset["a1"]["event_id"]
    assert a2["received_at"] >= "2026-11-23"
    assert by_asset["a1"]["labels"] == ["red"]

    bob = pipeline.get("/events", params={"user_id": "bob"}, headers={"program-id": "shop"})
    assert [r["event_timestamp"][:23] for r in bob.json()["events"]] == ["2026-11-21T08:30:00.250"]
    other_program = pipeline.get("/events", params={"user_id": "bob"}, headers={"program-id": "x"})
    assert other_program.json() == {"events": []}


def test_queue_updates_defaults_to_false_and_events_go_to_their_users_partition(
    pipeline: TestClient, settings: Settings
) -> None:
    users = [f"user{i}" for i in range(40)]
    # process_user_actions=false: no user update to wait for, so no agents are needed here
    response = pipeline.post("/events?process_user_actions=false",
                             json={"events": [event(u) for u in users] + [event("user0", "a9")]},
                             headers={"program-id": "p"})
    assert response.status_code == 200
    messages = read_topic(settings.bootstrap, settings.topic_events, at_least=settings.events_partitions)
    # one message per partition, none keyed; each line on its user's key's partition
    assert len(messages) == settings.events_partitions
    assert {m.partition() for m in messages} == set(range(settings.events_partitions))
    seen = []
    for message in messages:
        assert message.key() is None
        for line in message.value().split(b"\n"):
            wire = orjson.loads(line)
            assert wire["queue_updates"] is False and wire["process_user_actions"] is False
            assert wire["event_timestamp"] == "2026-11-20T10:00:00Z"
            key = message_key("p", wire["user_id"])
            assert message.partition() == partition_for(key, settings.events_partitions)
            seen.append((wire["user_id"], wire["asset_id"]))
    assert sorted(seen) == sorted([(u, "a1") for u in users] + [("user0", "a9")])
    assert seen.index(("user0", "a1")) < seen.index(("user0", "a9"))  # one user's order kept


def test_the_gateway_places_users_where_librdkafka_places_their_keys(settings: Settings) -> None:
    """A producer sending per-user keyed messages (Kafka's partitioner) lands where the
    gateway's bundles do, so its events and the gateway's meet the same agent."""
    producer = Producer(producer_config(settings))
    landed: dict[bytes, int] = {}
    keys = [message_key("p", f"user{i}") for i in range(200)]
    for key in keys:
        producer.produce(settings.topic_assets, b"{}", key,
                         on_delivery=lambda err, msg: landed.__setitem__(msg.key(), msg.partition()))
    assert producer.flush(20) == 0
    assert landed == {key: partition_for(key, settings.events_partitions) for key in keys}


def test_many_batches_arrive_exactly_once(pipeline: TestClient, store: Store) -> None:
    total = 0
    for b in range(5):
        batch = {"events": [event(f"user{i % 37}", f"asset{b}-{i}") for i in range(1000)]}
        assert pipeline.post("/events?queue_updates=true", json=batch,
                             headers={"program-id": "bulk"}).status_code == 200
        total += 1000
    wait_for(lambda: stored_count(store) == total, timeout_s=30)
    distinct = store.query("SELECT uniqExact(event_id) AS n FROM events")[0]["n"]
    assert distinct == total


def test_the_sink_batches_by_rows_not_by_messages(settings: Settings, store: Store) -> None:
    """1000 events arrive as 4 bundles of ~250 rows: each reaches 100 rows and triggers an
    insert at once, not the 60 s timer (a count of messages would never reach 100)."""
    settings.sink_batch_rows, settings.sink_batch_seconds = 100, 60.0
    with running_sink(settings, store) as sink, TestClient(create_app(settings, store)) as client:
        batch = {"events": [event(f"user{i}", f"a{i}") for i in range(1000)]}
        assert client.post("/events?queue_updates=true&process_user_actions=false", json=batch,
                           headers={"program-id": "rows"}).status_code == 200
        wait_for(lambda: stored_count(store) == 1000, timeout_s=30)
        assert sink.rows_written == 1000
