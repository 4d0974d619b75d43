"""What a roll of the embedded broker decides and carries (services.broker_roll,
services.roll_copies), on the test broker: whether the agents have caught up (Tansu's
ListOffsets trails its last batch), each user's newest record with its source position
reset, dead letters kept as they were, and the asset catalog, copied before the switch and
its tail after."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
from confluent_kafka import Consumer, Producer, TopicPartition
from fastapi.testclient import TestClient

from services.broker_roll import agents_caught_up
from services.roll_copies import copy_assets, copy_letters, read_users, write_users
from services.shared.assets import asset_key, decode_asset, encode_asset, iso_utc
from services.shared.broker import free_port
from services.shared.events import message_key, partition_for
from services.shared.kafka import client_config, ensure_topics, producer_config
from services.shared.settings import Settings
from services.shared.users import UserRecord
from services.sink.letters import read_all
from tests.integration.conftest import Agents, env_for, event, read_topic, wait_for


def record(user: str, events: int, settings: Settings, offset: int = 41) -> tuple[bytes, int, bytes]:
    key = message_key("shop", user)
    partition = partition_for(key, settings.events_partitions)
    rec = UserRecord("shop", user, partition=partition, offset=offset, events=events)
    return key, partition, rec.encode()


def test_the_agents_have_caught_up_only_once_committed_past_the_last_record(
        settings: Settings) -> None:
    ensure_topics(settings)
    producer = Producer(producer_config(settings) | {"linger.ms": 50})
    for i in range(12):  # one batch on partition 1: Tansu's ListOffsets then says 1, not 12
        producer.produce(settings.topic_events, b"x%d" % i, b"k", partition=1)
    assert producer.flush(10) == 0
    group = Consumer(client_config(settings) | {"group.id": settings.agents_app_id,
                                                "enable.auto.commit": False})
    try:
        assert not agents_caught_up(settings, timeout_s=0.3)  # nothing committed
        group.commit(offsets=[TopicPartition(settings.topic_events, 1, 1)], asynchronous=False)
        assert not agents_caught_up(settings, timeout_s=0.3)  # the batch's first record only
        assert not agents_caught_up(settings, timeout_s=30, gone=lambda: True)  # died: at once
        group.commit(offsets=[TopicPartition(settings.topic_events, 1, 12)], asynchronous=False)
        assert agents_caught_up(settings, timeout_s=0.3)
    finally:
        group.close()


def next_broker(settings: Settings) -> Settings:
    """The next broker of a roll (here: the next topics of the same one)."""
    tag = uuid.uuid4().hex[:8]
    after = settings.model_copy(update={"topic_events": f"events-{tag}",
                                        "topic_dlq": f"events-{tag}.dlq",
                                        "topic_assets": f"assets-{tag}",
                                        "agents_app_id": f"agents-{tag}"})
    ensure_topics(after)
    return after


def test_a_roll_carries_each_users_newest_record_and_every_dead_letter(
        settings: Settings) -> None:
    producer = Producer(producer_config(settings))
    newest = {}
    for user, counts in {"ann": (1, 2, 3), "bob": (5,), "cy": (7, 8)}.items():
        for events in counts:
            key, partition, value = record(user, events, settings)
            producer.produce(settings.topic_user_state, value, key, partition=partition)
            newest[key] = (partition, events)
    erased_key, erased_partition, _ = record("cy", 0, settings)  # erased: a tombstone
    producer.produce(settings.topic_user_state, None, erased_key, partition=erased_partition)
    del newest[erased_key]
    letters = [(b"bad line %d" % i, {"reason": b"invalid", "n": str(i).encode()}, 1_700_000_000_000 + i)
               for i in range(3)]
    for value, headers, ts in letters[:2]:
        producer.produce(settings.topic_dlq, value, b"k", headers=list(headers.items()),
                         timestamp=ts)
    assert producer.flush(10) == 0

    users = read_users(settings)
    assert {k: (p, UserRecord.decode(v).events) for k, (p, v) in users.items()} == newest

    after = next_broker(settings)
    copied_to = copy_letters(settings, after)  # before the switch
    value, headers, ts = letters[2]  # the old sink dead-letters one more while it drains
    producer.produce(settings.topic_dlq, value, b"k", headers=list(headers.items()), timestamp=ts)
    assert producer.flush(10) == 0
    copy_letters(settings, after, after=copied_to)
    done = write_users(after, users)
    assert (done.users, done.events) == (2, 3 + 5)
    got = {}
    for message in read_topic(after.bootstrap, after.topic_user_state, at_least=2):
        rec = UserRecord.decode(message.value())
        assert (rec.partition, rec.offset) == (message.partition(), -1)  # nothing applied yet
        got[message.key()] = (message.partition(), rec.events)
    assert got == newest
    copied = list(read_all(after, after.topic_dlq))
    assert [(x.offset, x.value, x.headers, x.timestamp_ms) for x in copied] == [
        (i, v, h, ts) for i, (v, h, ts) in enumerate(letters)]


def asset(asset_id: str, labels: list[str]) -> tuple[bytes, bytes]:
    record = {"program_id": "shop", "asset_id": asset_id, "labels": labels, "attributes": "{}",
              "updated_at": iso_utc(), "deleted": False}
    return asset_key("shop", asset_id), encode_asset(record)


def test_a_roll_copies_the_catalog_and_what_the_old_gateway_wrote_after(settings: Settings) -> None:
    producer = Producer(producer_config(settings))
    for asset_id, labels in (("a", ["old"]), ("a", ["new"]), ("b", ["x"])):
        key, value = asset(asset_id, labels)
        producer.produce(settings.topic_assets, value, key)
    assert producer.flush(10) == 0
    after = next_broker(settings)
    first = copy_assets(settings, after)
    key, value = asset("c", ["late"])  # the old gateway's last request, after the copy
    producer.produce(settings.topic_assets, value, key)
    assert producer.flush(10) == 0
    copy_assets(settings, after, after=first)
    got = [decode_asset(m.value()) for m in read_topic(after.bootstrap, after.topic_assets,
                                                       at_least=4, timeout_s=3)]
    # each asset's newest record once (the older "a" stays behind), then the late one
    assert sorted((r["asset_id"], r["labels"]) for r in got) == [
        ("a", ["new"]), ("b", ["x"]), ("c", ["late"])]


def held_worker(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    """A roll's next worker: `sluice agents --recover-on-stdin`, as `sluice up` starts it."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "services.cli", "agents", "--recover-on-stdin",
             "--loglevel", "info"], env=env_for(settings), stdin=subprocess.PIPE,
            stdout=out, stderr=subprocess.STDOUT)


def worker_stats(settings: Settings) -> dict:
    try:
        return httpx.get(f"http://127.0.0.1:{settings.agents_web_port}/stats", timeout=2).json()
    except httpx.HTTPError:
        return {}


def test_a_held_worker_joins_at_once_and_recovers_and_applies_only_once_told(
        settings: Settings, pipeline: TestClient, tmp_path: Path) -> None:
    """The next worker of a roll owns its partitions while the old agents still catch up,
    but reads no user record and applies no event until told; then it loads the records
    carried meanwhile and applies the events that waited on top of them, each once."""
    ensure_topics(settings)
    log = tmp_path / "agents.log"
    worker = held_worker(settings, log)
    try:
        wait_for(lambda: "held with" in log.read_text(), timeout_s=60, every_s=0.2)  # joined
        users = [f"user{i}" for i in range(40)]
        carried = {key: (partition, value) for key, partition, value
                   in (record(u, 3, settings) for u in users)}
        assert write_users(settings, carried).events == 3 * len(users)
        erased_key, erased_partition, _ = record(users[0], 0, settings)  # erased since
        producer = Producer(producer_config(settings))
        producer.produce(settings.topic_user_state, None, erased_key, partition=erased_partition)
        assert producer.flush(10) == 0
        response = pipeline.post("/events?queue_updates=true", headers={"program-id": "shop"},
                                 json={"events": [event(u, "a1") for u in users]})
        assert response.status_code == 200, response.text
        time.sleep(2)  # held: no web page yet (the old worker holds its port), nothing applied
        assert worker_stats(settings) == {}
        held = read_topic(settings.bootstrap, settings.topic_user_state, at_least=len(users))
        assert len(held) == len(users) + 1  # the carried records alone: the worker wrote none
        assert worker.stdin is not None
        worker.stdin.write(b"go\n")
        worker.stdin.close()
        wait_for(lambda: worker_stats(settings).get("users_written", 0) >= len(users),
                 timeout_s=30)
        told = worker_stats(settings)
        assert told["serving"] == settings.events_partitions
        # the carried records loaded in bulk, so Faust's own recovery found none left
        assert f"loaded {len(users) + 1} changelog records" in log.read_text()
        assert told["changelog_recovered"] == 0 and told["users_written"] == len(users)
        metrics = httpx.get(f"http://127.0.0.1:{settings.agents_web_port}/metrics").text
        held_users = [line for line in metrics.splitlines()
                      if line.startswith("sluice_agents_state_users")]
        assert held_users and float(held_users[0].split()[-1]) == len(users)  # erasure: not one
        for user in users:  # three carried events and the one applied after, each once
            got = pipeline.get(f"/users/{user}/label-weights", headers={"program-id": "shop"})
            expected = 1 if user == users[0] else 4  # the erased one: what came after only
            assert got.status_code == 200 and got.json()["events"] == expected, (user, got.text)
    finally:
        worker.terminate()
        worker.wait(30)


def test_a_held_worker_told_nothing_stops(settings: Settings, tmp_path: Path) -> None:
    """End of its input (the roll gave it up): it stops, leaving its group, and applied
    nothing."""
    ensure_topics(settings)
    log = tmp_path / "agents.log"
    worker = held_worker(settings, log)
    try:
        wait_for(lambda: "held with" in log.read_text(), timeout_s=60, every_s=0.2)
        assert worker.stdin is not None
        worker.stdin.close()
        assert worker.wait(30) == 0
        assert "told nothing" in log.read_text()
    finally:
        if worker.poll() is None:
            worker.kill()


def test_a_held_worker_told_before_it_started_begins_once_it_has_its_partitions(
        settings: Settings, pipeline: TestClient, tmp_path: Path) -> None:
    """A roll may carry user state before its next worker has even started (a prepared one
    that died is replaced at the roll): the line is already waiting when the worker starts.
    It begins once assigned, loads the carried records and applies events (it stalled in
    its start before, at creating Faust's assignor topic, and never served)."""
    ensure_topics(settings)
    users = [f"early{i}" for i in range(20)]
    carried = {key: (partition, value) for key, partition, value
               in (record(u, 2, settings) for u in users)}
    write_users(settings, carried)
    log = tmp_path / "agents.log"
    worker = held_worker(settings, log)
    try:
        assert worker.stdin is not None
        worker.stdin.write(b"go\n")  # at once: before its imports are done
        worker.stdin.close()
        response = pipeline.post("/events?queue_updates=true", headers={"program-id": "shop"},
                                 json={"events": [event(u, "a1") for u in users]})
        assert response.status_code == 200, response.text
        wait_for(lambda: worker_stats(settings).get("users_written", 0) >= len(users),
                 timeout_s=60)
        assert worker_stats(settings)["serving"] == settings.events_partitions
        for user in users:  # two carried events and the one applied after, each once
            got = pipeline.get(f"/users/{user}/label-weights", headers={"program-id": "shop"})
            assert got.status_code == 200 and got.json()["events"] == 3, (user, got.text)
    finally:
        worker.terminate()
        worker.wait(30)


def test_asked_to_commit_a_worker_commits_what_it_applied_at_once(
        settings: Settings, pipeline: TestClient, tmp_path: Path) -> None:
    """A roll asks the old worker to commit what it applied (/internal/commit) rather than
    wait for its next commit: with commits a minute apart, the roll sees it caught up."""
    slow = settings.model_copy(update={"agents_commit_interval_s": 60.0})
    ensure_topics(slow)
    workers = Agents(slow, tmp_path)
    try:
        workers.start()
        users = [f"c{i}" for i in range(20)]
        response = pipeline.post("/events?queue_updates=true", headers={"program-id": "shop"},
                                 json={"events": [event(u, "a1") for u in users]})
        assert response.status_code == 200, response.text
        wait_for(lambda: workers.stats(0)["users_written"] >= len(users), timeout_s=30)
        # applied, not committed: a roll that could not ask would wait up to a minute
        unasked = slow.model_copy(update={"agents_web_port": free_port()})
        assert not agents_caught_up(unasked, timeout_s=1.0)
        assert agents_caught_up(slow, timeout_s=10.0)
    finally:
        workers.stop_all()
