"""Group commit on Tansu: the lines of concurrent requests share one message per partition,
and what held per request still holds: each user's order, ``queue_updates=false``
answering only once the user's state includes the request, 503 for every request of a
window the broker did not ack."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from fastapi.testclient import TestClient

from services.gateway.app import create_app
from services.shared.broker import EmbeddedBroker
from services.shared.settings import Settings
from tests.integration.conftest import Agents, event, wait_for
from tests.integration.test_faults import own_broker  # noqa: F401 - a fixture

H = {"program-id": "shop"}
USERS = [f"u{i}" for i in range(4)]


def topic_lines(settings: Settings, expected: int, timeout_s: float = 20.0) -> tuple[int, list[dict]]:
    """(messages, every event line) of the events topic, read until ``expected`` lines."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap,
                         "group.id": "reader-" + uuid.uuid4().hex, "enable.auto.commit": False})
    topic = settings.topic_events
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    messages, lines = 0, []
    deadline = time.monotonic() + timeout_s
    while len(lines) < expected and time.monotonic() < deadline:
        for message in consumer.consume(1000, 0.2):
            if message.error() is None:
                messages += 1
                lines.extend(orjson.loads(line) for line in message.value().split(b"\n"))
    consumer.close()
    return messages, lines


def in_parallel(clients: int, work: Callable[[int], None]) -> None:
    with ThreadPoolExecutor(clients) as pool:
        for done in [pool.submit(work, c) for c in range(clients)]:
            done.result()


def test_concurrent_requests_share_messages_and_keep_each_users_order(settings: Settings) -> None:
    """8 clients, 10 requests each, one after the other, all for the same 4 users: every
    event is on the topic once, fewer messages than requests carry them, and each user's
    events of one client are in the order that client sent them."""
    settings.group_commit_ms = 20.0
    settings.queue_updates_default = True
    clients, requests, per_user = 8, 10, 2
    with TestClient(create_app(settings)) as client:
        def work(c: int) -> None:
            for r in range(requests):
                batch = [event(u, f"c{c}-r{r}-e{k}") for u in USERS for k in range(per_user)]
                response = client.post("/events", json={"events": batch}, headers=H)
                assert response.status_code == 200, response.text

        in_parallel(clients, work)
    expected = clients * requests * len(USERS) * per_user
    messages, lines = topic_lines(settings, expected)
    assert len(lines) == expected
    assert len({line["event_id"] for line in lines}) == expected  # none twice
    assert messages < clients * requests / 2  # concurrent requests shared messages
    sequence: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
    for line in lines:  # each partition's lines in topic order; a user lives on one
        c, r, k = line["asset_id"].split("-")
        sequence[(line["user_id"], c)].append((int(r[1:]), int(k[1:])))
    assert len(sequence) == len(USERS) * clients
    for order in sequence.values():
        assert order == sorted(order) and len(order) == requests * per_user


def test_queue_updates_false_is_exact_across_concurrent_requests(
    settings: Settings, agents: Agents
) -> None:
    """6 clients post with queue_updates=false for the same 2 users at once; the moment a
    POST answers, both users' state holds its label (the message with the user's last
    line of that request was applied, whatever else shared it)."""
    settings.group_commit_ms = 10.0
    agents.start()
    with TestClient(create_app(settings)) as client:
        def work(c: int) -> None:
            for r in range(5):
                label = f"c{c}r{r}"
                batch = [event(u, "a1", labels=[label]) for u in ("u1", "u2")]
                response = client.post("/events?queue_updates=false", json={"events": batch},
                                       headers=H)
                assert response.status_code == 200, response.text
                for user in ("u1", "u2"):
                    got = client.get(f"/users/{user}/label-weights", headers=H).json()
                    assert label in {w["label"] for w in got["label_weights"]}, (user, label)

        in_parallel(6, work)


def test_a_window_the_broker_does_not_ack_fails_every_request_in_it(
    settings: Settings, own_broker: EmbeddedBroker  # noqa: F811 - the fixture
) -> None:
    """The broker frozen: all 12 concurrent requests get 503 + Retry-After, none 200 (the
    window's messages were not acked); resumed, requests are answered 200 again."""
    settings.group_commit_ms = 50.0
    settings.publish_timeout_s = 1.5
    settings.queue_updates_default = True
    assert own_broker.process is not None
    with TestClient(create_app(settings)) as client:
        assert client.post("/events", json={"events": [event()]}, headers=H).status_code == 200
        os.kill(own_broker.process.pid, signal.SIGSTOP)
        try:
            answers: list[tuple[int, str | None]] = []

            def work(c: int) -> None:
                response = client.post("/events", json={"events": [event(f"s{c}")]}, headers=H)
                answers.append((response.status_code, response.headers.get("retry-after")))

            in_parallel(12, work)
        finally:
            os.kill(own_broker.process.pid, signal.SIGCONT)
        assert answers == [(503, "1")] * 12
        wait_for(lambda: client.post("/events", json={"events": [event()]},
                                     headers=H).status_code == 200, timeout_s=30)
