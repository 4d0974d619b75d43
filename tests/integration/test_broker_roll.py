"""`sluice up` rolls its embedded broker over under load (services.broker_roll): Tansu's memory
stays under SLUICE_EMBEDDED_BROKER_MAX_MB, and every acked event is stored once and applied
once, across rolls, while clients post and read without pause: requests are acked all
through a roll, none waits for it."""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Self

import httpx
import psutil
import pytest

from services.shared.broker import free_port
from tests.integration.conftest import event, wait_for
from tests.integration.test_backpressure import gauges
from tests.integration.test_supervisor import PORTS, sluice_up

H = {"program-id": "shop"}
# Tansu starts at ~20 MiB: rolled at 30% (~29 MiB), every ~40 requests here; both brokers of
# a roll together stay far from 90% of the bound (backpressure)
BROKER_MB = 96
PACE_S = 0.1  # each writer's pause after an acked request (~4 MB/s for both)
USERS = [f"r{i}" for i in range(20)]


def tansu_rss(up_pid: int) -> int:
    """The embedded brokers' memory now: both of a roll's, while it runs."""
    held = 0
    for child in psutil.Process(up_pid).children(recursive=True):
        try:
            if "tansu" in child.name():
                held += int(child.memory_info().rss)
        except psutil.NoSuchProcess:
            continue
    return held


class Rolls:
    """When each roll ran (by the log's lines, looked at every 20 ms)."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.windows: list[tuple[float, float | None]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.watch, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(5)

    def watch(self) -> None:
        while not self.stop.wait(0.02):
            text = self.log.read_text() if self.log.exists() else ""
            began = text.count("rolling the embedded broker")
            ended = text.count("rolled the embedded broker")
            now = time.monotonic()
            while len(self.windows) < began:
                self.windows.append((now, None))
            for i in range(ended):
                start, end = self.windows[i]
                if end is None:
                    self.windows[i] = (start, now)


class Clients:
    """Writers that post 200-event requests with their own event ids and retry a request
    until it is acked (as an SDK does), and a reader of one user's label weights."""

    def __init__(self, base: str, params: dict[str, str] | None = None) -> None:
        self.base, self.params = base, params or {}
        self.acked: Counter[str] = Counter()
        self.acked_at: list[float] = []  # time.monotonic() of each ack
        self.answers: Counter[str] = Counter()  # what writers saw besides 200s
        self.reads: Counter[str] = Counter()
        self.slowest_read_s = 0.0
        self.slowest_post_s = 0.0
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.write, args=(k,), daemon=True) for k in range(2)]
        self.threads.append(threading.Thread(target=self.read, daemon=True))

    def __enter__(self) -> Self:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(120)

    def write(self, k: int) -> None:
        with httpx.Client(base_url=self.base, headers=H, timeout=60) as http:
            while not self.stop.is_set():
                users = [USERS[(k + i) % len(USERS)] for i in range(200)]
                body = {"events": [event(u, event_id=str(uuid.uuid4()),
                                         properties={"pad": "x" * 1000}) for u in users]}
                began = time.monotonic()
                while True:  # the same request until it is acked: a retry counts once
                    try:
                        status = http.post("/events", json=body, params=self.params).status_code
                    except httpx.HTTPError as exc:
                        status = type(exc).__name__
                    if status == 200:
                        break
                    if self.stop.is_set():  # given up: never acked
                        return
                    with self.lock:
                        self.answers[str(status)] += 1
                    time.sleep(0.2)
                with self.lock:
                    self.acked.update(users)
                    self.acked_at.append(time.monotonic())
                    self.slowest_post_s = max(self.slowest_post_s, time.monotonic() - began)
                time.sleep(PACE_S)

    def read(self) -> None:
        with httpx.Client(base_url=self.base, headers=H, timeout=60) as http:
            while not self.stop.is_set():
                began = time.monotonic()
                try:
                    status = str(http.get(f"/users/{USERS[0]}/label-weights").status_code)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                self.reads[status] += 1
                self.slowest_read_s = max(self.slowest_read_s, time.monotonic() - began)
                time.sleep(0.05)


ENV = {"SLUICE_EMBEDDED_BROKER_MAX_MB": str(BROKER_MB), "SLUICE_BACKPRESSURE_CHECK_S": "0.1",
       "SLUICE_EMBEDDED_BROKER_ROLL_SHARE": "0.3",
       # the next generation as soon as one starts: rolls come every few seconds here, so
       # at the default (0.9 of the mark) its worker would still be joining when needed
       "SLUICE_EMBEDDED_BROKER_PREPARE_SHARE": "0",
       "SLUICE_KAFKA_COMPRESSION": "none", "SLUICE_QUEUE_UPDATES_DEFAULT": "true"}
PREPARED = re.compile(r"prepared the next generation: a broker on port (\d+), agents worker "
                      r"pid (\d+) held")


def rolls(base: str) -> float:
    return gauges(httpx.get(f"{base}/metrics", timeout=60).text).get(
        "sluice_embedded_broker_rolls_total", 0)


def all_once(base: str, acked: Counter[str]) -> None:
    """Every acked event stored once in ClickHouse and applied once to its user's state."""
    total = sum(acked.values())
    with httpx.Client(base_url=base, headers=H, timeout=30) as http:
        def off() -> dict[str, tuple[int, int]]:
            out = {}
            for user in USERS:
                got = http.get(f"/users/{user}/label-weights")
                events = got.json()["events"] if got.status_code == 200 else -1
                if events != acked[user]:
                    out[user] = (acked[user], events)
            return out
        wait_for(lambda: not off(), timeout_s=90)

        def stored() -> int:  # ClickHouse, deduplicated (FINAL): each event once
            return sum(len(http.get("/events", params={"user_id": user, "limit": 10_000})
                           .json()["events"]) for user in USERS)
        wait_for(lambda: stored() >= total, timeout_s=30)  # the sink's last batch
        assert stored() == total


def test_rolls_hold_the_broker_under_its_bound_and_keep_every_event_once(tmp_path: Path) -> None:
    with sluice_up(tmp_path / "data", tmp_path / "up.log", env=ENV) as up:
        held: list[int] = []
        with Rolls(tmp_path / "up.log") as rolled, Clients(up.base) as clients:
            def rolled_twice() -> bool:
                held.append(tansu_rss(up.proc.pid))
                return rolls(up.base) >= 2
            wait_for(rolled_twice, timeout_s=240, every_s=0.2)
        acked = sum(clients.acked.values())
        with httpx.Client(base_url=up.base, headers=H, timeout=30) as http:
            def all_stored() -> bool:
                return gauges(http.get("/metrics").text).get("sluice_sink_rows_total", 0) >= acked
            wait_for(all_stored, timeout_s=60)
            time.sleep(1)  # a copy stored twice would show now
            metrics = http.get("/metrics").text
            assert gauges(metrics)["sluice_sink_rows_total"] == acked, up.tail()  # inserted once
            assert 'sluice_embedded_broker_rolls_total{carried="changelog"}' in metrics, up.tail()
        all_once(up.base, clients.acked)
        assert max(held) < BROKER_MB * 2**20, f"{max(held) / 2**20:.0f} MiB"
        # requests waited for the rolls instead of being refused
        assert not clients.answers, (clients.answers, up.tail())
        assert set(clients.reads) == {"200"}, clients.reads
        # requests were acked in every quarter of each roll: none waited for it (before, they
        # waited for the first half: the drain, the carry and the next broker's start)
        windows = [(start, end) for start, end in rolled.windows if end is not None]
        assert len(windows) >= 2, (rolled.windows, up.tail())
        for start, end in windows:
            quarter = (end - start) / 4
            acks = [sum(start + q * quarter <= t < start + (q + 1) * quarter
                        for t in clients.acked_at) for q in range(4)]
            print(f"roll of {end - start:.1f} s: acks per quarter {acks}")
            assert all(acks), (acks, end - start)
        print(f"acked {acked} events; broker at most {max(held) / 2**20:.0f} MiB; slowest post "
              f"{clients.slowest_post_s:.1f} s, read {clients.slowest_read_s:.1f} s")


@pytest.mark.parametrize("part", ["agents", "broker"])
def test_a_prepared_generation_that_dies_before_its_roll_is_replaced(
        tmp_path: Path, part: str) -> None:
    """SIGKILL of the next generation's held worker, or of its broker, while it waits for
    the roll: the roll starts another and carries user state as usual, every event once."""
    log = tmp_path / "up.log"
    with sluice_up(tmp_path / "data", log, env=ENV) as up:
        wait_for(lambda: bool(PREPARED.search(log.read_text())), timeout_s=60, every_s=0.05)
        port, pid = map(int, PREPARED.search(log.read_text()).groups())  # type: ignore[union-attr]
        if part == "broker":
            [pid] = [c.pid for c in psutil.Process(up.proc.pid).children()
                     if "tansu" in c.name() and f":{port}" in " ".join(c.cmdline())]
        psutil.Process(pid).kill()
        with Clients(up.base) as clients:
            wait_for(lambda: rolls(up.base) >= 1, timeout_s=120, every_s=0.2)
        metrics = httpx.get(f"{up.base}/metrics", timeout=30).text
        assert 'sluice_embedded_broker_rolls_total{carried="changelog"}' in metrics, up.tail()
        all_once(up.base, clients.acked)
        assert not clients.answers, clients.answers
    assert "the prepared next generation did not last" in log.read_text()


def test_agents_killed_during_a_roll_make_it_rebuild_state_from_clickhouse(tmp_path: Path) -> None:
    log = tmp_path / "up.log"
    # prepared at the default share: the roll may find its next worker still joining
    env = {k: v for k, v in ENV.items() if k != "SLUICE_EMBEDDED_BROKER_PREPARE_SHARE"}
    with sluice_up(tmp_path / "data", log, env=env) as up:
        agents = up.child("agents")
        agents.suspend()  # frozen: the roll waits for it to catch up, and it never does
        with Clients(up.base) as clients:
            wait_for(lambda: "rolling the embedded broker" in log.read_text(), timeout_s=120,
                     every_s=0.05)
            agents.kill()
            wait_for(lambda: rolls(up.base) >= 1, timeout_s=120, every_s=0.2)
            time.sleep(2)  # and some more after the roll
        metrics = httpx.get(f"{up.base}/metrics", timeout=30).text
        assert 'sluice_embedded_broker_rolls_total{carried="rebuild"}' in metrics, up.tail()
        # replaced (asked of the log: a later roll may be between two workers right now)
        started = re.findall(r"agents worker started, pid (\d+)", log.read_text())
        assert len(started) >= 2 and int(started[-1]) != agents.pid, started
        all_once(up.base, clients.acked)
        assert not clients.answers, clients.answers
    assert "the worker died" in log.read_text()


def test_sluice_up_killed_mid_roll_restarts_with_every_acked_event_once(tmp_path: Path) -> None:
    log = tmp_path / "up.log"
    ports = {name: free_port() for name in PORTS}
    with sluice_up(tmp_path / "data", log, ports=ports, env=ENV) as up:
        # the ack a crash cannot take back: the events a SIGKILL loses otherwise, the sink's
        # batch window, come from both brokers of a roll (docs/operating.md)
        with Clients(up.base, params={"wait": "stored"}) as clients:
            # the old sink drained: the old broker is about to go
            wait_for(lambda: "sink stopped" in log.read_text(), timeout_s=120, every_s=0.02)
            up.proc.kill()
            up.proc.wait(30)
            clients.stop.set()  # what they still post waits on the dead port, then fails
        acked = Counter(clients.acked)
    with sluice_up(tmp_path / "data", log, ports=ports, env=ENV) as up:
        all_once(up.base, acked)
    assert log.read_text().count("rolling the embedded broker") == 1


def test_sigterm_mid_roll_stops_cleanly_with_every_acked_event_once(tmp_path: Path) -> None:
    log = tmp_path / "up.log"
    ports = {name: free_port() for name in PORTS}
    with sluice_up(tmp_path / "data", log, ports=ports, env=ENV) as up:
        with Clients(up.base) as clients:
            wait_for(lambda: "rolling the embedded broker" in log.read_text(), timeout_s=120,
                     every_s=0.05)
            up.proc.terminate()
            # the roll ends first (its next sink drains what requests gave the next broker)
            # and it exits 0
            assert up.proc.wait(90) == 0, up.tail()
            clients.stop.set()
        acked = Counter(clients.acked)
    assert "stopped; the sink wrote" in log.read_text()
    with sluice_up(tmp_path / "data", log, ports=ports, env=ENV) as up:
        all_once(up.base, acked)
