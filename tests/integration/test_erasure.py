"""User erasure end to end on Tansu + chDB with a real `sluice agents` worker (issue 25):
after ``DELETE /users/{id}`` (and ``sluice users erase``) no read of Sluice returns the
user's data (GET /events, label weights, recommendations, the profile and CrowdPower's
session, the live page), the receipt reaches done, other users keep exactly theirs, a later
event of the same id is a new user's first; and all of it holds after every role restarts
(the worker on an empty store, re-reading the changelog: the tombstone wins) and after a
rebuild of state from ClickHouse onto new topics (what `sluice up` does on every start)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from services.cli import app as cli
from services.gateway.app import create_app
from services.shared.clickhouse import Store
from services.shared.events import message_key, partition_for
from services.shared.kafka import ensure_topics
from services.shared.settings import Settings
from streams.rebuild import rebuild_state
from streams.slots import reset_local_state
from tests.integration.conftest import (
    Agents,
    create_keys,
    event,
    read_topic,
    running_sink,
    wait_for,
)
from tests.integration.test_failures import wire

H = {"program-id": "shop"}
CATALOG = [{"asset_id": f"a{i}", "labels": ["red" if i % 2 else "blue", "shoe"]} for i in range(4)]
T = 1_796_400_000  # CrowdPower's created_at, epoch seconds


def post(client: TestClient, user: str, n: int, **query: str) -> None:
    events = [event(user, f"a{i % 4}", event_type="purchase", labels=[f"l{i}"],
                    event_id=f"{user}-{i}") for i in range(n)]
    params = {"queue_updates": "false"} | query
    response = client.post("/events", params=params, json={"events": events}, headers=H)
    assert response.status_code == 200, response.text


def reads(client: TestClient, user: str) -> dict[str, Any]:
    """Every read of Sluice that names a user, reduced to what it holds of it."""
    weights = client.get(f"/users/{user}/label-weights", headers=H).json()
    profile = client.get(f"/users/{user}", headers=H).json()
    crowd = client.get(f"/compat/crowdpower/users/{user}", headers=H).json()["data"]
    recommended = client.get(f"/users/{user}/recommendations", headers=H).json()
    stored = client.get("/events", params={"user_id": user, "limit": 1000}, headers=H).json()
    return {"stored": len(stored["events"]), "state": weights["events"],
            "labels": len(weights["label_weights"]), "sessions": profile["sessions"],
            "profile": profile["events"], "crowd": crowd["events"],
            "crowd_sessions": crowd["sessions"], "last_seen": profile["last_seen"],
            "recommended": [r["asset_id"] for r in recommended["recommendations"]]}


GONE = {"stored": 0, "state": 0, "labels": 0, "sessions": 0, "profile": 0, "crowd": 0,
        "crowd_sessions": 0, "last_seen": None}


def live_users(client: TestClient) -> set[str]:
    return {e["user_id"] for e in client.get("/ui/live", headers=H).json()["events"]}


def stored_rows(store: Store, user: str) -> int:
    """Rows of the user in ClickHouse, deleted or not yet merged away (no FINAL)."""
    return int(store.query("SELECT count() AS n FROM events WHERE user_id = {u:String}",
                           {"u": user})[0]["n"])


def catalog(client: TestClient) -> None:
    """A new gateway follows the catalog from its topic: loaded before ranking reads."""
    wait_for(lambda: client.get(f"/assets/a{len(CATALOG) - 1}", headers=H).status_code == 200)


def status(client: TestClient, url: str) -> dict[str, Any]:
    response = client.get(url, headers=H)
    assert response.status_code == 200, response.text
    return response.json()


def test_an_erased_user_is_gone_from_every_read_across_restarts_and_a_rebuild(
    settings: Settings, store: Store, agents: Agents, tmp_path: Path
) -> None:
    settings.dialect_state_wait_programs = ["*"]
    agents.start()
    with running_sink(settings, store), TestClient(create_app(settings, store)) as client:
        assert client.put("/assets", json={"assets": CATALOG}, headers=H).status_code == 200
        post(client, "ann", 5)
        post(client, "bob", 3)
        post(client, "carl", 2)
        crowd = client.post("/compat/crowdpower/events/bulk", headers=H, json={
            "user_id": "ann", "events": [{"action": "open", "created_at": T},
                                         {"action": "open", "created_at": T + 4000}]})
        assert crowd.status_code == 200, crowd.text
        wait_for(lambda: reads(client, "ann")["stored"] == 7, timeout_s=20)
        before = reads(client, "ann")
        assert (before["state"], before["sessions"], before["crowd"]) == (7, 2, 7)
        wait_for(lambda: "ann" in live_users(client), timeout_s=10)  # the live page follows
        cold = reads(client, "nobody")["recommended"]
        bob = reads(client, "bob")
        assert (bob["stored"], bob["state"], bob["labels"]) == (3, 3, 6)  # l0-2, 3 of assets

        erased = client.delete("/users/ann", params={"wait": "true"}, headers=H)
        assert erased.status_code == 200, erased.text  # every store done within the wait
        assert erased.json()["status"] == "done"
        url = erased.json()["status_url"]
        done = status(client, url)
        assert done["status"] == "done"
        assert done["stores"]["clickhouse"]["rows_deleted"] == 7
        assert done["stores"]["agents"] == {"status": "done"}
        assert reads(client, "ann") == GONE | {"recommended": cold}
        assert stored_rows(store, "ann") == 0 and "ann" not in live_users(client)
        assert reads(client, "bob") == bob  # untouched, exactly
        assert client.get(url.replace("/ann/", "/bob/"), headers=H).status_code == 404
        # the changelog's last word on ann is a tombstone
        changelog = read_topic(settings.bootstrap, settings.topic_user_state, at_least=4)
        ann_records = [m.value() for m in changelog if m.key() == message_key("shop", "ann")]
        assert len(ann_records) >= 2 and ann_records[-1] is None

        # the same from the command line, waiting until every store is done
        cli_run = CliRunner().invoke(cli, ["users", "erase", "carl", "--program", "shop",
                                           "--timeout", "20"], env=settings.environment())
        assert cli_run.exit_code == 0, cli_run.output
        assert cli_run.output.splitlines()[-1] == (
            "done: clickhouse done; agents done")  # embedded chDB: the sink's offsets say
        assert reads(client, "carl") == GONE | {"recommended": cold}
        receipt = cli_run.output.split()[1]
        again = CliRunner().invoke(cli, ["users", "erasure", "carl", receipt, "-p", "shop"],
                                   env=settings.environment())
        assert again.exit_code == 0, again.output

        # ann's dead letters stay on the DLQ topic: a replay leaves them out, not eve's
        dlq = Producer({"bootstrap.servers": settings.bootstrap})
        for user in ("ann", "eve"):
            source = partition_for(message_key("shop", user), settings.events_partitions)
            dlq.produce(settings.topic_dlq, wire(user, 1)[0][1].replace(b'"p"', b'"shop"'),
                        headers=[("reason", b"ClickHouse refused the row"),
                                 ("category", b"clickhouse_refused"),
                                 ("source_topic", settings.topic_events.encode()),
                                 ("source_partition", str(source).encode()),
                                 ("source_offset", b"0")])
        assert dlq.flush(10) == 0
        dry = CliRunner().invoke(cli, ["replay", "--dry-run"],
                                 env=settings.environment() | {"COLUMNS": "400"})
        assert dry.exit_code == 0, dry.output
        assert "Would replay 1 letters" in dry.output, dry.output
        assert dry.output.rstrip().endswith("1 of users erased since")  # ann's letter

        # a later event of the same user id (and the same client event id, "ann-0", as one
        # erased: its dedup ids went too) is a new user's first: l0, blue, shoe
        post(client, "ann", 1)
        wait_for(lambda: reads(client, "ann")["stored"] == 1, timeout_s=20)
        assert reads(client, "ann") | {"recommended": []} == GONE | {
            "stored": 1, "state": 1, "labels": 3, "profile": 1, "crowd": 1, "recommended": []}

    # every role restarts; the worker on an empty store reads the whole changelog
    agents.stop_all()
    assert reset_local_state(settings) >= 1
    agents.start()
    with running_sink(settings, store), TestClient(create_app(settings, store)) as client:
        catalog(client)
        assert (reads(client, "ann")["stored"], reads(client, "ann")["state"]) == (1, 1)
        assert reads(client, "carl") == GONE | {"recommended": reads(client, "nobody")["recommended"]}
        assert reads(client, "bob") == bob
        assert status(client, url)["status"] == "done"
    agents.stop_all()

    # the embedded broker's restart: new topics, state rebuilt from ClickHouse
    tag = uuid.uuid4().hex[:8]
    fresh = settings.model_copy(update={
        "topic_events": f"events-{tag}", "topic_dlq": f"events-{tag}.dlq",
        "topic_assets": f"assets-{tag}", "agents_app_id": f"agents-{tag}",
        "sink_group": f"sink-{tag}"})
    ensure_topics(fresh)
    rebuilt = rebuild_state(fresh, store, show_progress=False)
    assert (rebuilt.users, rebuilt.events) == (2, 4)  # bob's 3 and ann's new one; carl: none
    restarted = Agents(fresh, tmp_path)
    restarted.start()
    try:
        with running_sink(fresh, store), TestClient(create_app(fresh, store)) as client:
            catalog(client)
            cold = reads(client, "nobody")["recommended"]
            assert reads(client, "carl") == GONE | {"recommended": cold}
            assert (reads(client, "ann")["stored"], reads(client, "ann")["state"]) == (1, 1)
            assert reads(client, "bob") == bob
            # the receipt outlives the topics it was issued on: ClickHouse recorded it
            assert status(client, url)["status"] == "done"
    finally:
        restarted.stop_all()


def test_erasing_takes_a_read_key_of_the_program_and_the_receipt_names_what_is_pending(
    settings: Settings, store: Store, tmp_path: Path
) -> None:
    """No agents run: ClickHouse is done, the agents' part stays pending (never a false
    done), and the erasure of a user with no events deletes nothing."""
    tokens = create_keys(settings, tmp_path, "shop")
    with running_sink(settings, store), TestClient(create_app(settings, store)) as client:
        def bearer(name: str) -> dict[str, str]:
            return H | {"authorization": f"Bearer {tokens[name]}"}

        assert client.delete("/users/dora", headers=H).status_code == 401
        assert client.delete("/users/dora", headers=bearer("write")).status_code == 403
        assert client.delete("/users/dora", headers=bearer("other_read")).status_code == 403
        accepted = client.delete("/users/dora", headers=bearer("read"))
        assert accepted.status_code == 202, accepted.text
        url = accepted.json()["status_url"]
        assert client.get(url, headers=bearer("write")).status_code == 403
        assert client.get(url.replace("/erasure/", "/erasure/x"),
                          headers=bearer("read")).status_code == 404

        def clickhouse_done() -> bool:
            return bool(client.get(url, headers=bearer("read")).json()["stores"]["clickhouse"][
                "status"] == "done")

        wait_for(clickhouse_done, timeout_s=10)
        got = client.get(url, headers=bearer("read")).json()
        assert got["status"] == "pending" and got["stores"]["agents"]["status"] == "pending"
        assert got["stores"]["clickhouse"]["rows_deleted"] == 0
        assert store.query("SELECT count() AS n FROM erasures") == [{"n": 1}]
        assert store.query("SELECT count() AS n FROM events") == [{"n": 0}]
