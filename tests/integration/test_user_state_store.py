"""The agents' user state on disk (RocksDB under SLUICE_DATA_DIR), with real `sluice agents`
worker processes on Tansu: a restarted worker keeps what its store holds, reads only the
changelog's tail, and counts no event twice."""

from __future__ import annotations

import pytest
from confluent_kafka import Producer
from fastapi.testclient import TestClient

from services.shared.events import message_key, partition_for
from services.shared.kafka import producer_config
from services.shared.settings import Settings
from services.shared.users import UserRecord
from streams.slots import app_dir, stored_users
from tests.integration.conftest import Agents, event, read_topic, wait_for

H = {"program-id": "shop"}
T0 = "2026-11-13T10:00:00Z"  # one half-life (7 days) before T1: counts half at T1
T1 = "2026-11-20T10:00:00Z"


def post(client: TestClient, users: list[str], label: str, ts: str, queue_updates: str) -> None:
    """One click per user, in requests of up to 1000 events."""
    for i in range(0, len(users), 1000):
        batch = [event(u, "a1", event_type="click", labels=[label], event_timestamp=ts)
                 for u in users[i:i + 1000]]
        response = client.post(f"/events?queue_updates={queue_updates}",
                               json={"events": batch}, headers=H)
        assert response.status_code == 200, response.text


def record(client: TestClient, user: str) -> dict:
    """The user's label weights; ``events`` -1 while its partition is being taken over (a
    503 with Retry-After, never an empty state)."""
    response = client.get(f"/users/{user}/label-weights", headers=H)
    if response.status_code == 503 and response.headers.get("retry-after"):
        return {"events": -1}
    assert response.status_code == 200
    return response.json()


def test_state_survives_a_sigkill_of_the_only_worker_and_counts_nothing_twice(
    settings: Settings, pipeline: TestClient, agents: Agents
) -> None:
    """Round 0 is applied, the only worker is SIGKILLed before it commits round 0 (its
    commits are a minute apart here), restarted on its own store and reads round 0 again;
    round 1 lands on top: every user counts each event once."""
    users = [f"user{i}" for i in range(300)]
    agents.settings = settings.model_copy(update={"agents_commit_interval_s": 60.0})
    first = agents.start()
    post(pipeline, users, "r0", T0, "false")  # answered once the worker applied it
    before = agents.stats(first)
    assert before["users_written"] == len(users) and before["changelog_recovered"] == 0
    agents.kill(first)
    slot = app_dir(settings) / "0"
    assert list(slot.glob("v1/tables/user-state-*.db")), "the table is on disk under the data dir"

    again = agents.start()  # waits until it joined the group and owns the partitions
    post(pipeline, users, "r1", T1, "true")
    wait_for(lambda: agents.stats(again)["users_written"] >= len(users), timeout_s=60)
    for user in users:
        got = record(pipeline, user)
        assert got["events"] == 2, (user, got)
        weights = {w["label"]: w["weight"] for w in got["label_weights"]}
        assert weights == {"r1": pytest.approx(2.0), "r0": pytest.approx(1.0)}  # 2, and 2 halved
    # its own store, found again: nothing of round 0 read back from the changelog
    assert agents.stats(again)["changelog_recovered"] <= 4  # at most a record per partition
    assert agents.stats(again)["messages"] == 2 * before["messages"]  # round 0 read again


def test_a_backlog_is_applied_in_runs_and_counts_every_event_once(
    settings: Settings, pipeline: TestClient, agents: Agents
) -> None:
    """Five rounds posted before any worker runs: the worker that starts finds a backlog
    whose batches hold more than SLUICE_AGENTS_BATCH_EVENTS (here 100) events, applies them
    in runs (each user's events spread over several), and every user counts 5 events."""
    settings.agents_batch_events = 100  # the worker's environment is made from settings
    users = [f"user{i}" for i in range(200)]
    for round_ in range(5):  # 200 events a request, ~50 a message (one per partition)
        post(pipeline, users, f"r{round_}", T1, "true")
    worker = agents.start()
    wait_for(lambda: agents.stats(worker)["users_written"] >= len(users), timeout_s=60)
    wait_for(lambda: all(record(pipeline, u)["events"] == 5 for u in users), timeout_s=60)
    for user in users:
        got = record(pipeline, user)
        weights = {w["label"]: w["weight"] for w in got["label_weights"]}
        assert weights == {f"r{r}": pytest.approx(2.0) for r in range(5)}, (user, got)
    stats = agents.stats(worker)
    # 1,000 events in runs of at most 100: at least 10 runs, and more runs than a batch
    # of messages would make alone (a run holds at most two of these ~50-event messages)
    assert stats["runs"] >= 10 and stats["runs"] * 2 >= stats["messages"], stats


def test_a_restarted_worker_reads_only_the_changelog_written_since_its_store(
    settings: Settings, pipeline: TestClient, agents: Agents
) -> None:
    """A worker's store holds 2,000 users; while it is down, 40 records reach the changelog
    (as from `sluice rebuild-state`, or from a worker that held its partitions meanwhile).
    The restarted worker reads those 40 and nothing before them, and goes on from them."""
    users = [f"user{i}" for i in range(2000)]
    first = agents.start()
    post(pipeline, users, "r0", T1, "false")
    agents.kill(first)
    total = len(read_topic(settings.bootstrap, settings.topic_user_state, at_least=len(users)))
    assert total >= len(users)

    # the tail: 40 users' records as another writer leaves them, 10 events more each
    producer = Producer(producer_config(settings))
    tail = users[:40]
    for message in read_topic(settings.bootstrap, settings.topic_user_state, at_least=total):
        current = UserRecord.decode(message.value())
        if current.user_id in tail:
            current.events += 10
            current.state.weights["tail"] = 1.0
            producer.produce(settings.topic_user_state, current.encode(),
                             message_key("shop", current.user_id), partition=message.partition())
    assert producer.flush(10) == 0

    again = agents.start()
    wait_for(lambda: agents.stats(again)["changelog_recovered"] >= len(tail), timeout_s=60)
    recovered = agents.stats(again)["changelog_recovered"]
    assert recovered <= len(tail) + 4, (recovered, total)  # + at most the seek's own record
    post(pipeline, tail + users[-10:], "r1", T1, "false")
    for user in tail:  # went on from the tail's record
        got = record(pipeline, user)
        assert got["events"] == 12, user
        assert {w["label"] for w in got["label_weights"]} == {"r0", "r1", "tail"}
    for user in users[-10:]:  # and from its own store's
        assert record(pipeline, user)["events"] == 2, user


def test_recovery_reads_to_the_end_offset_a_fetch_reports(settings: Settings) -> None:
    """Tansu's ListOffsets answers the last record batch's base offset + 1, so Faust's
    recovery alone would stop at the first record of a partition's last batch."""
    import asyncio

    from confluent_kafka import Consumer, TopicPartition
    from faust.types import TP

    from services.shared.kafka import ensure_topics
    from services.shared.publish import Publisher
    from streams.recovery import fetched_ends

    ensure_topics(settings)
    publisher = Publisher(settings)
    asyncio.run(publisher.publish([(b"k", b"v")] * 12, partitions=[0] * 12))  # one batch
    publisher.close()
    consumer = Consumer({"bootstrap.servers": settings.bootstrap, "group.id": "unused"})
    _, listed = consumer.get_watermark_offsets(TopicPartition(settings.topic_events, 0))
    consumer.close()
    assert 1 <= listed <= 12  # 1 on Tansu; 12 on Kafka
    tp, empty = TP(settings.topic_events, 0), TP(settings.topic_events, 1)
    assert fetched_ends(settings, {tp: listed, empty: 0}) == {tp: 12}


def test_with_a_standby_a_takeover_reads_only_the_tail(
    settings: Settings, pipeline: TestClient, agents: Agents
) -> None:
    """SLUICE_AGENTS_STANDBY_REPLICAS=1 with two workers: each follows the other's
    partitions into its own store; when one is SIGKILLed, the other serves its partitions
    having read far fewer changelog records than they hold, and counts every event once."""
    settings.agents_standby_replicas = 1
    users = [f"user{i}" for i in range(1000)]
    first, second = agents.start(), agents.start()  # two slots of one data dir
    wait_for(lambda: agents.stats(first)["partitions"] > 0
             and agents.stats(second)["partitions"] > 0, timeout_s=90, every_s=0.5)
    post(pipeline, users, "r0", T0, "false")
    # the standby copies read them (each worker the other's users; applied per 1,000)
    wait_for(lambda: agents.stats(first)["changelog_standby"]
             + agents.stats(second)["changelog_standby"] >= len(users), timeout_s=60)
    before = agents.stats(first)["changelog_recovered"]
    agents.kill(second)
    post(pipeline, users, "r1", T1, "true")
    wait_for(lambda: all(record(pipeline, u)["events"] >= 2 for u in users[::50]),
             timeout_s=120, every_s=0.5)
    for user in users:
        got = record(pipeline, user)
        assert got["events"] == 2, (user, got)
        weights = {w["label"]: w["weight"] for w in got["label_weights"]}
        assert weights == {"r1": pytest.approx(2.0), "r0": pytest.approx(1.0)}
    taken_over = agents.stats(first)["changelog_recovered"] - before
    assert taken_over < len(users) // 4, taken_over  # the other's ~500 users: not re-read


def test_a_stopped_workers_store_gives_each_users_newest_record(
    settings: Settings, pipeline: TestClient, agents: Agents
) -> None:
    """What a roll of the embedded broker carries over (streams.slots.stored_users): the
    SIGKILLed worker's store, read directly, holds each user's newest record in its
    partition; a live worker's store is never read."""
    users = [f"user{i}" for i in range(300)]
    first = agents.start()
    post(pipeline, users, "r0", T0, "false")
    post(pipeline, users, "r1", T1, "false")
    assert stored_users(settings) is None  # the only store is a live worker's
    agents.kill(first)
    got = stored_users(settings)
    assert got is not None
    assert set(got) == {message_key("shop", user) for user in users}
    assert all(UserRecord.decode(value).events == 2 for _, value in got.values())
    assert all(partition == partition_for(key, settings.events_partitions)
               for key, (partition, _) in got.items())
