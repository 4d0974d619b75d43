"""Real-time user state on Tansu + chDB with real `sluice agents` worker processes."""

from __future__ import annotations

import subprocess
import sys
import time
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
    pipeline: TestClient, store: Store, agents: Agents
) -> None:
    agents.start()  # "no state" must come from the user's owner, not from a guess
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
        # ready: its asset catalog is loaded (the events posted below get their asset's labels)
        assert client.get("/readyz").status_code == 200
        assert weights(client, "bulk") == EXPECTED_WEIGHTS
        assert weights(client, "live") == EXPECTED_WEIGHTS
        assert recommendations(client, "bulk") == recommendations(client, "live")
        # live processing resumes on top of the rebuilt state, counting nothing twice
        more = [event("bulk", "a3", event_type="click", labels=[], event_timestamp=T)]
        response = client.post("/events?queue_updates=false", json={"events": more}, headers=H)
        assert response.status_code == 200, (response.text, agents.stats(1))
        assert {w["label"]: w["weight"] for w in weights(client, "bulk")}["red"] == pytest.approx(7.0)


def test_worker_sigkilled_reads_stay_right_and_nothing_counts_twice(
    settings: Settings, store: Store, agents: Agents
) -> None:
    """Two workers share the partitions and each answers reads of its own users; SIGKILL
    one: until the other has taken its partitions over (session timeout, rebalance,
    changelog recovery) a read of them is a 503 with Retry-After, never an empty or stale
    state; afterwards every user reads right, each event counted once."""
    settings.update_timeout_s = 30.0
    users = [f"user{i}" for i in range(40)]
    first = agents.start()
    second = agents.start()
    # the group has rebalanced: each worker owns and serves some of the partitions
    wait_for(lambda: agents.stats(first)["serving"] > 0 and agents.stats(second)["serving"] > 0,
             timeout_s=90, every_s=0.5)
    with running_sink(settings, store), TestClient(create_app(settings, store)) as client:

        def post(round_: int, ts: str, queue_updates: str) -> None:
            batch = [event(u, "a1", event_type="click", labels=[f"r{round_}"], event_timestamp=ts)
                     for u in users]
            response = client.post(f"/events?queue_updates={queue_updates}",
                                   json={"events": batch}, headers=H)
            assert response.status_code == 200, response.text

        def read(user: str) -> dict | None:
            """The user's label weights; None for a 503 (which must say when to retry)."""
            response = client.get(f"/users/{user}/label-weights", headers=H)
            if response.status_code == 503:
                assert int(response.headers["retry-after"]) > 0
                return None
            assert response.status_code == 200, response.text
            return response.json()

        post(0, T_MINUS_HALF_LIFE, "false")  # answered once both workers applied it
        # before: every read answered by its owner, right
        assert all(read(u)["events"] == 1 for u in users)  # type: ignore[index]
        assert agents.stats(first)["messages"] > 0 and agents.stats(second)["messages"] > 0
        agents.kill(second)
        post(1, T, "true")  # accepted at the broker's ack
        unavailable = 0
        deadline = time.monotonic() + 120
        while True:
            answers = [read(u) for u in users]
            unavailable += sum(a is None for a in answers)
            for answer in answers:  # during the takeover: right as of then, or a 503
                if answer is not None:
                    assert answer["events"] in (1, 2), answer
                    if answer["events"] == 1:
                        assert answer["label_weights"] == [  # a click: 2
                            {"label": "r0", "weight": pytest.approx(2.0)}]
            if all(a is not None and a["events"] == 2 for a in answers):
                break
            assert time.monotonic() < deadline, answers
            time.sleep(0.2)
        for user in users:
            record = read(user)
            assert record is not None and record["events"] == 2, (user, record)
            got = {w["label"]: w["weight"] for w in record["label_weights"]}
            assert got == {"r1": pytest.approx(2.0), "r0": pytest.approx(1.0)}  # 2, and 2 halved
        # the killed worker's users were unreadable for a while (it owned some partitions)
        assert unavailable > 0


def test_a_gateway_started_on_existing_user_state_reads_it_from_the_owners(
    settings: Settings, agents: Agents
) -> None:
    """Gateways keep no user state: one (re)started on a changelog full of users is ready at
    once and reads each user from the worker that owns it, never a cold start."""
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
    agents.start()  # recovers the 3000 records into its store, then serves them
    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"]["views"] == "caught up"
        for i in (0, 1234, 2999):
            assert weights(client, f"r{i}") == [{"label": f"l{i}", "weight": pytest.approx(5.0)}]
        assert not hasattr(client.app.state.gateway.views, "users")
