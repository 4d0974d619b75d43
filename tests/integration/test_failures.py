"""What happens when things break: a dead broker, poison messages, a killed sink."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
from confluent_kafka import Producer
from fastapi.testclient import TestClient

from services.gateway.app import create_app
from services.shared.broker import EmbeddedBroker, free_port
from services.shared.clickhouse import Store
from services.shared.events import encode, message_key
from services.shared.kafka import ensure_topics
from services.shared.settings import Settings
from tests.integration.conftest import event, read_topic, running_sink, wait_for


def test_broker_stopped_means_503_never_200(tmp_path: Path) -> None:
    broker = EmbeddedBroker(port=free_port()).start()
    settings = Settings(kafka_bootstrap=broker.bootstrap, data_dir=tmp_path, publish_timeout_s=2.0,
                        retry_after_s=3)
    try:
        ensure_topics(settings)
        with TestClient(create_app(settings)) as client:
            ok = client.post("/events?queue_updates=true", json={"events": [event()]},
                             headers={"program-id": "p"})
            assert ok.status_code == 200
            assert client.get("/readyz").status_code == 200
            broker.stop()
            for _ in range(2):
                down = client.post("/events", json={"events": [event()] * 10},
                                   headers={"program-id": "p"})
                assert down.status_code == 503, down.text
                assert down.headers["retry-after"] == "3"
                assert "retry later" in down.json()["detail"]
            ready = client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["broker"] == "broker unreachable"
    finally:
        broker.stop()


def produce_raw(settings: Settings, values: list[tuple[bytes, bytes | None]]) -> None:
    producer = Producer({"bootstrap.servers": settings.bootstrap})
    for key, value in values:
        producer.produce(settings.topic_events, value=value, key=key)
    assert producer.flush(10) == 0


def wire(user: str, n: int) -> list[tuple[bytes, bytes]]:
    return [
        (message_key("p", user), encode({
            "program_id": "p", "event_id": str(uuid.uuid4()), "user_id": user,
            "event_timestamp": "2026-11-20T10:00:00Z", "event_type": "view", "asset_id": f"a{i}",
            "labels": ["x"], "received_at": "2026-11-20T10:00:01Z", "queue_updates": True,
            "process_user_actions": True,
        }))
        for i in range(n)
    ]


def test_malformed_messages_go_to_the_dlq_and_the_sink_goes_on(settings: Settings, store: Store) -> None:
    refused_by_clickhouse = orjson.loads(wire("u", 1)[0][1]) | {"event_id": "not-a-uuid"}
    poison = [
        (b"k1", b"{not json"),
        (b"k2", orjson.dumps({"user_id": "u"})),
        (b"k3", orjson.dumps(refused_by_clickhouse)),
    ]
    with running_sink(settings, store) as sink:
        produce_raw(settings, wire("u", 5) + poison + wire("v", 5))
        wait_for(lambda: store.query("SELECT count() AS n FROM events")[0]["n"] == 10)
        dead = read_topic(settings.bootstrap, settings.topic_dlq, at_least=3)
        # still alive: later good events still arrive
        produce_raw(settings, wire("w", 3))
        wait_for(lambda: store.query("SELECT count() AS n FROM events")[0]["n"] == 13)
    assert sink.dead_letters.sent == 3
    assert sorted(m.key() for m in dead) == [b"k1", b"k2", b"k3"]
    reasons = {m.key(): dict(m.headers())["reason"].decode() for m in dead}
    assert "not JSON" in reasons[b"k1"]
    assert "'program_id' is missing" in reasons[b"k2"]
    assert "ClickHouse refused" in reasons[b"k3"]
    assert dead[0].value() in {v for _, v in poison}
    assert all(dict(m.headers())["source_topic"] == settings.topic_events.encode() for m in dead)


def test_sink_killed_mid_batch_loses_nothing_and_duplicates_nothing(settings: Settings) -> None:
    """SIGKILL the sink process repeatedly while the topic fills; restart it each time;
    every event ends up in ClickHouse exactly once."""
    ensure_topics(settings)
    env = os.environ | {
        "SLUICE_KAFKA_BOOTSTRAP": settings.bootstrap, "SLUICE_DATA_DIR": str(settings.data_dir),
        "SLUICE_TOPIC_EVENTS": settings.topic_events, "SLUICE_TOPIC_DLQ": settings.topic_dlq,
        "SLUICE_SINK_GROUP": settings.sink_group, "SLUICE_SINK_BATCH_ROWS": "3000",
        "SLUICE_SINK_BATCH_SECONDS": "0.3",
    }
    env.pop("SLUICE_CLICKHOUSE_URL", None)
    command = [sys.executable, "-m", "services.cli", "sink"]
    total, kills = 0, 0
    for round_ in range(4):
        sink = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        batch = wire(f"user{round_}", 20_000)
        produce_raw(settings, batch)
        total += len(batch)
        time.sleep(2.0 + round_ * 0.3)  # inside the stream of inserts and commits
        sink.send_signal(signal.SIGKILL)
        sink.wait()
        kills += 1
    # a last sink drains everything, then stops gracefully
    sink = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and committed(settings) < total:
        time.sleep(0.5)
    sink.send_signal(signal.SIGTERM)
    _, err = sink.communicate(timeout=60)
    assert sink.returncode == 0, err.decode()[-2000:]
    assert committed(settings) == total
    store = Store(settings)  # the sink is gone: this process may open chDB now
    try:
        [counts] = store.query(
            "SELECT (SELECT count() FROM events FINAL) AS final, uniqExact(event_id) AS distinct_ids,"
            " count() AS raw FROM events")
    finally:
        store.close()
    assert kills == 4
    assert counts["final"] == total
    assert counts["distinct_ids"] == total


def committed(settings: Settings) -> int:
    """Sum of the sink group's committed offsets = messages it has finished with (offsets
    start at 0 and are dense). Tansu's high watermark lags the log end (it reports the last
    batch's base offset), so the lag is computed from what was produced instead."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": settings.bootstrap, "group.id": settings.sink_group})
    topic = settings.topic_events
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    offsets = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
    consumer.close()
    return sum(max(tp.offset, 0) for tp in offsets)
