"""Faults under load, on a broker of each test's own (real Tansu + chDB): what clients see
and what is kept, counted event by event.

- the broker frozen (SIGSTOP) 12 s under load, then resumed;
- ``wait=stored`` batches, then SIGKILL of the whole embedded stack;
- ClickHouse refusing inserts for a while.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.gateway.app import create_app
from services.shared.broker import EmbeddedBroker, free_port
from services.shared.clickhouse import Store
from services.shared.kafka import ensure_topics
from services.shared.settings import Settings
from tests.integration.conftest import Agents, count, event, running_sink, wait_for
from tests.integration.test_supervisor import ready, sluice_up

H = {"program-id": "shop"}
USERS_PER_BATCH, EVENTS_PER_USER = 10, 2


@pytest.fixture
def own_broker(settings: Settings, tmp_path: Path) -> Iterator[EmbeddedBroker]:
    """A broker of this test's own, to freeze or kill without touching other tests."""
    broker = EmbeddedBroker(port=free_port(), log_path=tmp_path / "tansu.log").start()
    settings.kafka_bootstrap = broker.bootstrap
    ensure_topics(settings)
    yield broker
    if broker.process and broker.process.poll() is None:
        os.kill(broker.process.pid, signal.SIGCONT)
    broker.stop()


@contextmanager
def serving(settings: Settings, store: Store) -> Iterator[tuple[str, FastAPI]]:
    """The gateway on a real HTTP port (uvicorn on a thread), sharing the test's Store."""
    settings.http_port = free_port()
    app = create_app(settings, store)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1",
                                           port=settings.http_port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="test-gateway")
    thread.start()
    base = f"http://127.0.0.1:{settings.http_port}"
    try:
        wait_for(lambda: _status(f"{base}/healthz") == 200, timeout_s=30)
        yield base, app
    finally:
        server.should_exit = True
        thread.join(30)


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return 0


def batch(n: int) -> dict[str, list[dict[str, object]]]:
    """Batch n: its own users b<n>-u<i>, EVENTS_PER_USER purchases each (weight 5 each)."""
    return {"events": [event(f"b{n}-u{i}", f"a{j}", event_type="purchase", labels=["x"])
                       for i in range(USERS_PER_BATCH) for j in range(EVENTS_PER_USER)]}


class Load:
    """Clients posting numbered batches (see ``batch``) until stopped; every answer kept
    as (batch, status, sent, answered), status 0 for no answer."""

    def __init__(self, base: str, clients: int, params: dict[str, str] | None = None) -> None:
        self.base, self.params = base, params or {}
        self.answers: list[tuple[int, int, float, float]] = []
        self._numbers = itertools.count()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client) for _ in range(clients)]

    def start(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> list[tuple[int, int, float, float]]:
        self._stop.set()
        for t in self._threads:
            t.join(60)
        return self.answers

    def acked(self) -> list[int]:
        return sorted(n for n, status, _, _ in self.answers if status == 200)

    def _client(self) -> None:
        with httpx.Client(base_url=self.base, headers=H, timeout=30) as http:
            while not self._stop.is_set():
                n = next(self._numbers)
                sent = time.monotonic()
                try:
                    status = http.post("/events", params=self.params, json=batch(n)).status_code
                except httpx.HTTPError:
                    status = 0
                self.answers.append((n, status, sent, time.monotonic()))
                time.sleep(0.02)


def test_broker_frozen_12s_under_load_heals_by_itself(
        settings: Settings, own_broker: EmbeddedBroker, tmp_path: Path) -> None:
    settings.queue_updates_default = True
    settings.publish_timeout_s = 3.0
    store = Store(settings)
    agents = Agents(settings, tmp_path)
    readiness: list[tuple[float, int]] = []
    stop = threading.Event()

    def probe(base: str) -> None:
        while not stop.is_set():
            readiness.append((time.monotonic(), _status(f"{base}/readyz")))
            time.sleep(0.25)

    try:
        agents.start()
        with running_sink(settings, store), serving(settings, store) as (base, _app):
            load = Load(base, clients=3).start()
            prober = threading.Thread(target=probe, args=(base,))
            prober.start()
            time.sleep(3)
            assert own_broker.process is not None
            os.kill(own_broker.process.pid, signal.SIGSTOP)
            frozen_at = time.monotonic()
            time.sleep(12)
            os.kill(own_broker.process.pid, signal.SIGCONT)
            resumed_at = time.monotonic()
            time.sleep(10)
            stop.set()
            prober.join(60)
            answers = load.stop()
            ok = load.acked()
            # every batch answered 200 is stored whole, exactly once
            wait_for(lambda: _stored_batches(store, ok) == len(ok), timeout_s=60)
            # and every one of its users' state counts its events once
            wait_for(lambda: _users_right(base, ok), timeout_s=60)
    finally:
        agents.stop_all()
        store.close()
    statuses = {status for _, status, _, _ in answers}
    assert statuses <= {200, 503}, statuses
    before = [n for n, status, _, t in answers if t < frozen_at and status == 200]
    during = [status for _, status, _, t in answers if frozen_at + 4 < t < resumed_at]
    first_ok_after = min(t for _, status, _, t in answers if status == 200 and t > resumed_at)
    print(f"\n{len(ok)} batches acked, {len(answers) - len(ok)} refused; first 200 "
          f"{first_ok_after - resumed_at:.2f}s after the broker resumed")
    assert before and 503 in during and 200 not in during
    assert first_ok_after - resumed_at < 5
    assert any(status == 503 for t, status in readiness if frozen_at + 2 < t < resumed_at)
    assert any(status == 200 for t, status in readiness if t > resumed_at + 5)
    # the last seconds are 200s only: it healed, and stays healed
    assert all(status == 200 for _, status, _, t in answers if t > resumed_at + 5)


def _stored_batches(store: Store, batches: list[int]) -> int:
    """How many of ``batches`` ClickHouse holds whole and once (FINAL: as readers see it)."""
    rows = store.query(
        "SELECT splitByChar('-', user_id)[1] AS b, count() AS n FROM events FINAL "
        "WHERE program_id = 'shop' GROUP BY b")
    held = {row["b"]: row["n"] for row in rows}
    whole = USERS_PER_BATCH * EVENTS_PER_USER
    for n in batches:
        assert held.get(f"b{n}", 0) <= whole, f"batch {n} stored {held[f'b{n}']} times {whole}"
    return sum(held.get(f"b{n}") == whole for n in batches)


def _users_right(base: str, batches: list[int]) -> bool:
    """Each user of each acked batch, as the gateway reads it from the agents: state that
    counts each of its events once."""
    with httpx.Client(base_url=base, headers=H, timeout=10) as http:
        for n in batches:
            for i in range(USERS_PER_BATCH):
                answer = http.get(f"/users/b{n}-u{i}")
                if answer.status_code == 503:  # the worker is still recovering: not yet
                    return False
                events = answer.json()["events"]
                if events < EVENTS_PER_USER:
                    return False
                assert events == EVENTS_PER_USER, (n, i, events)
    return True


def test_wait_stored_acks_survive_sigkill_of_the_whole_stack(tmp_path: Path) -> None:
    """Clients post with wait=stored while `sluice up` (broker, sink, agents, gateway) is
    SIGKILLed: every batch answered 200 is in ClickHouse, whole and once, after a restart."""
    log = tmp_path / "up.log"
    with sluice_up(tmp_path / "data", log) as up:
        load = Load(up.base, clients=3, params={"wait": "stored"}).start()
        wait_for(lambda: len(load.acked()) >= 15, timeout_s=60)
        up.proc.kill()  # everything: its children die with it
        up.proc.wait()
        load.stop()
        ports = up.ports
    acked = load.acked()
    assert acked, log.read_text()[-3000:]
    latencies = sorted(done - sent for _, status, sent, done in load.answers if status == 200)
    print(f"\nwait=stored: {len(acked)} batches acked before the SIGKILL; latency p50 "
          f"{latencies[len(latencies) // 2] * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms")
    with sluice_up(tmp_path / "data", log, ports) as up:  # comes back clean on the same data
        assert ready(up.base)
    settings = Settings(data_dir=tmp_path / "data")
    store = Store(settings)  # sluice up is gone: this process may open chDB now
    try:
        whole = USERS_PER_BATCH * EVENTS_PER_USER
        held = _stored_batches(store, acked)
        assert held == len(acked), f"{len(acked) - held} of {len(acked)} acked batches lost"
        [row] = store.query("SELECT uniqExact(event_id) AS ids FROM events WHERE "
                            f"splitByChar('-', user_id)[1] IN ({','.join(repr(f'b{n}') for n in acked)})")
        assert row["ids"] == whole * len(acked)
    finally:
        store.close()


def test_clickhouse_refusing_inserts_pauses_the_sink_and_loses_nothing(
        settings: Settings, store: Store) -> None:
    """ClickHouse answers pings but refuses every insert (too many parts) for a while: the
    sink retries with backoff, sends nothing to the DLQ, and stores everything once after."""
    settings.queue_updates_default = True
    with running_sink(settings, store) as sink, TestClient(create_app(settings, store)) as client:
        assert client.post("/events", headers=H, json=batch(0)).status_code == 200
        wait_for(lambda: count(store) == 20)
        store.command("ALTER TABLE events MODIFY SETTING parts_to_throw_insert = 1")
        for n in range(1, 6):
            assert client.post("/events", headers=H, json=batch(n)).status_code == 200
        time.sleep(3)  # several insert attempts, all refused
        assert count(store) == 20 and store.ping()
        store.command("ALTER TABLE events RESET SETTING parts_to_throw_insert")
        wait_for(lambda: count(store) == 120, timeout_s=30)
    assert sink.dead_letters.sent == 0
    assert _stored_batches(store, list(range(6))) == 6
    [row] = store.query("SELECT count() AS n FROM events")
    assert row["n"] == 120  # refused inserts stored nothing: no duplicate even before merges
