"""Real-time user state on Tansu + chDB with real `sluice agents` worker processes."""

from __future__ import annotations

import subprocess
import sys
from contextlib import closing

import orjson
import pytest
from fastapi.testclient import TestClient

from services.gateway.app import create_app
from services.shared.clickhouse import Store
from services.shared.ranking import ModelConfig
from services.shared.settings import Settings
from tests.integration.conftest import Agents, env_for, event, read_topic, running_sink, wait_for

H = {"program-id": "shop"}
T = "2026-11-20T10:00:00Z"
T_MINUS_HALF_LIFE = "2026-11-13T10:00:00Z"  # 7 days earlier: counts half
CATALOG = [
    {"asset_id": "a1", "labels": ["red", "shoe"], "attributes": {"price": 10}},
    {"asset_id": "a2", "labels": ["blue", "shoe"]},
    {"asset_id": "a3", "labels": ["red", "hat"]},
    {"asset_id": "a4", "labels": ["green"]},
]
# purchase of a1 at T with event label "sale" (amount 5), then an older view of a2 (amount 1,
# one half-life before T, so 0.5); the view arrives after the purchase: out of order.
EVENTS = [
    event("u1", "a1", event_type="purchase", labels=["sale"], event_timestamp=T),
    event("u1", "a2", event_type="view", labels=[], event_timestamp=T_MINUS_HALF_LIFE),
]
EXPECTED_WEIGHTS = [  # highest first, ties by label
    {"label": "shoe", "weight": 5.5},  # 5 (a1) + 0.5 (a2)
    {"label": "red", "weight": 5.0},
    {"label": "sale", "weight": 5.0},
    {"label": "blue", "weight": 0.5},
]
EXPECTED_RECOMMENDATIONS = [  # a1, a2 are the user's last events: excluded
    {"asset_id": "a3", "score": 5.0, "labels": ["red"]},  # red 5
    {"asset_id": "a4", "score": 0.0, "labels": []},  # no shared label: popularity fill
]


def weights(client: TestClient, user: str) -> list[dict]:
    response = client.get(f"/users/{user}/label-weights", headers=H)
    assert response.status_code == 200
    return [{"label": w["label"], "weight": pytest.approx(w["weight"])} for w in response.json()["label_weights"]]


def recommendations(client: TestClient, user: str) -> list[dict]:
    response = client.get(f"/users/{user}/recommendations", headers=H)
    assert response.status_code == 200
    return response.json()["recommendations"]


def test_queue_updates_false_answers_when_state_includes_the_batch(
    pipeline: TestClient, agents: Agents
) -> None:
    agents.start()
    put = pipeline.put("/assets", json={"assets": CATALOG}, headers=H)
    assert put.status_code == 200, put.text
    assert pipeline.get("/assets/a1", headers=H).json()["attributes"] == {"price": 10}

    posted = pipeline.post("/events?queue_updates=false", json={"events": EVENTS}, headers=H)
    assert posted.status_code == 200, posted.text
    # no waiting: the answer came after the state was published
    assert weights(pipeline, "u1") == EXPECTED_WEIGHTS
    got = recommendations(pipeline, "u1")
    assert [r["asset_id"] for r in got] == ["a3", "a4"]
    assert got[0]["score"] == pytest.approx(5.0) and got[0]["labels"] == ["red"]
    assert got[1] == {"asset_id": "a4", "score": 0.0, "labels": []}

    # an asset's labels change: the ranking follows at once
    assert pipeline.put("/assets", json={"assets": [{"asset_id": "a4", "labels": ["shoe"]}]},
                        headers=H).status_code == 200
    assert [r["asset_id"] for r in recommendations(pipeline, "u1")] == ["a4", "a3"]
    assert pipeline.delete("/assets/a4", headers=H).status_code == 200
    assert pipeline.get("/assets/a4", headers=H).status_code == 404
    assert [r["asset_id"] for r in recommendations(pipeline, "u1")] == ["a3"]


def test_unknown_user_gets_cold_start_and_empty_weights(
    pipeline: TestClient, store: Store
) -> None:
    pipeline.put("/assets", json={"assets": CATALOG}, headers=H)
    # popularity: a3 twice, a2 once (stored only, no user processing needed)
    batch = [event("x", "a3"), event("y", "a3"), event("z", "a2")]
    assert pipeline.post("/events?process_user_actions=false", json={"events": batch},
                         headers=H).status_code == 200
    wait_for(lambda: store.query("SELECT count() AS n FROM events")[0]["n"] == 3)
    assert weights(pipeline, "nobody") == []
    cold = recommendations(pipeline, "nobody")
    assert [r["asset_id"] for r in cold] == ["a3", "a2", "a1", "a4"]  # popularity, then id
    assert all(r["score"] == 0.0 for r in cold)


def test_queue_updates_false_without_agents_is_504_but_durable(
    settings: Settings, store: Store
) -> None:
    settings.update_timeout_s = 1.0
    with running_sink(settings, store), TestClient(create_app(settings, store)) as client:
        response = client.post("/events?queue_updates=false", json={"events": [event("u9")]}, headers=H)
        assert response.status_code == 504
        assert "durable" in response.json()["detail"]
        wait_for(lambda: store.query("SELECT count() AS n FROM events")[0]["n"] == 1)


def test_changelog_partition_is_the_source_partition(
    pipeline: TestClient, agents: Agents, settings: Settings
) -> None:
    """Whoever owns a source partition must recover exactly its users' states."""
    agents.start()
    batch = [event(f"user{i}", "a1") for i in range(200)]
    assert pipeline.post("/events?queue_updates=false", json={"events": batch}, headers=H).status_code == 200
    records = read_topic(settings.bootstrap, settings.topic_user_state, at_least=200)
    assert len(records) >= 200
    assert all(m.partition() == orjson.loads(m.value())["partition"] for m in records)


def test_a_request_split_over_several_messages_waits_for_each_users_last_part(
    pipeline: TestClient, agents: Agents, settings: Settings, store: Store
) -> None:
    """A partition's share of a request beyond message_max_bytes goes as several messages;
    queue_updates=false answers only once every user's last part is applied."""
    settings.message_max_bytes = 2_000  # ~7 event lines per message
    agents.start()
    batch = [event(f"user{i % 5}", f"a{i}", event_type="purchase", labels=[f"l{i % 3}"])
             for i in range(120)]
    assert pipeline.post("/events?queue_updates=false", json={"events": batch}, headers=H).status_code == 200
    for u in range(5):  # 24 purchases each (amount 5) over labels l0..l2: no wait needed
        got = {w["label"]: w["weight"] for w in weights(pipeline, f"user{u}")}
        expected = {f"l{k}": 5.0 * sum(1 for i in range(u, 120, 5) if i % 3 == k) for k in range(3)}
        assert got == {label: pytest.approx(w) for label, w in expected.items() if w}
    messages = read_topic(settings.bootstrap, settings.topic_events, at_least=120 // 7)
    assert len(messages) >= 120 // 7 and all(len(m.value()) <= 2_000 for m in messages)
    wait_for(lambda: store.query("SELECT count() AS n FROM events FINAL")[0]["n"] == 120)


def test_bulk_load_then_rebuild_gives_what_live_processing_gives(
    settings: Settings, agents: Agents, tmp_path
) -> None:
    """process_user_actions=false stores events but changes no state; `sluice rebuild-state`
    (agents stopped) then brings the state to what live processing computed."""
    bulk = [dict(e, user_id="bulk") for e in EVENTS]
    live = [dict(e, user_id="live") for e in EVENTS]
    agents.start()
    with closing(Store(settings)) as store, running_sink(settings, store), \
            TestClient(create_app(settings, store)) as client:
        client.put("/assets", json={"assets": CATALOG}, headers=H)
        assert client.post("/events?queue_updates=false", json={"events": live}, headers=H).status_code == 200
        assert client.post("/events?process_user_actions=false", json={"events": bulk},
                           headers=H).status_code == 200
        wait_for(lambda: store.query("SELECT count() AS n FROM events")[0]["n"] == 4)
        assert weights(client, "live") == EXPECTED_WEIGHTS
        assert weights(client, "bulk") == []
    agents.stop_all()

    done = subprocess.run([sys.executable, "-m", "services.cli", "rebuild-state"],
                          env=env_for(settings), capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert b"rebuilt 2 users from 4 events, and 4 assets" in done.stdout

    agents.start()
    # closing(): a failure here must not leave chDB open on this path for the next tests
    with closing(Store(settings)) as store, TestClient(create_app(settings, store)) as client:
        wait_for(lambda: weights(client, "bulk") == EXPECTED_WEIGHTS, timeout_s=10)
        assert weights(client, "live") == EXPECTED_WEIGHTS
        assert recommendations(client, "bulk") == recommendations(client, "live")
        # live processing resumes on top of the rebuilt state, counting nothing twice
        more = [event("bulk", "a3", event_type="click", labels=[], event_timestamp=T)]
        response = client.post("/events?queue_updates=false", json={"events": more}, headers=H)
        assert response.status_code == 200, (response.text, agents.stats(1))
        assert {w["label"]: w["weight"] for w in weights(client, "bulk")}["red"] == pytest.approx(7.0)


def test_worker_killed_loses_no_update_and_counts_none_twice(
    settings: Settings, store: Store, agents: Agents
) -> None:
    """Two workers share the partitions; SIGKILL one; the other takes its partitions over,
    recovers their state from the changelog and goes on: every user ends with exactly the
    events it was sent."""
    settings.update_timeout_s = 30.0
    users = [f"user{i}" for i in range(40)]
    first = agents.start()
    second = agents.start()
    # the group has rebalanced: each worker owns some of the partitions
    wait_for(lambda: agents.stats(first)["partitions"] > 0 and agents.stats(second)["partitions"] > 0,
             timeout_s=90, every_s=0.5)
    with running_sink(settings, store), TestClient(create_app(settings, store)) as client:

        def post(round_: int, ts: str, queue_updates: str) -> None:
            batch = [event(u, "a1", event_type="click", labels=[f"r{round_}"], event_timestamp=ts)
                     for u in users]
            response = client.post(f"/events?queue_updates={queue_updates}",
                                   json={"events": batch}, headers=H)
            assert response.status_code == 200, response.text

        post(0, T_MINUS_HALF_LIFE, "false")  # answered once both workers applied it
        wait_for(lambda: agents.stats(first)["messages"] > 0 and agents.stats(second)["messages"] > 0,
                 timeout_s=30)
        agents.kill(second)
        # Accepted at the broker's ack; the takeover (session timeout, rebalance, changelog
        # recovery) takes seconds to tens of seconds on a busy machine: wait for the effect.
        post(1, T, "true")
        wait_for(lambda: all(
            client.get(f"/users/{u}/label-weights", headers=H).json()["events"] >= 2 for u in users
        ), timeout_s=120, every_s=0.5)
        for user in users:
            record = client.get(f"/users/{user}/label-weights", headers=H).json()
            assert record["events"] == 2, (user, record)
            got = {w["label"]: w["weight"] for w in record["label_weights"]}
            assert got == {"r1": pytest.approx(2.0), "r0": pytest.approx(1.0)}  # 2, and 2 halved


def test_readyz_waits_until_the_views_hold_the_existing_user_state(settings: Settings) -> None:
    """A gateway (re)started on a changelog full of users is ready only once it has read
    them: a read right after /readyz says 200 is never a cold start."""
    from confluent_kafka import Producer

    from services.shared.events import message_key
    from services.shared.kafka import ensure_topics, producer_config
    from services.shared.users import UserRecord
    from streams.model import apply_event

    ensure_topics(settings)
    producer = Producer(producer_config(settings))
    for i in range(3000):
        record = UserRecord("shop", f"r{i}")
        apply_event(record.state, ModelConfig(), 0.0, "purchase", [f"l{i}"], [], "a")
        producer.produce(settings.topic_user_state, record.encode(), message_key("shop", f"r{i}"))
    assert producer.flush(30) == 0
    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"]["views"] == "caught up"
        assert weights(client, "r2999") == [{"label": "l2999", "weight": pytest.approx(5.0)}]
