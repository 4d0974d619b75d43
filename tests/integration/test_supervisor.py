"""`sluice up` as a supervisor (real Tansu + chDB, `sluice up` in a process of its own):
its children die with it, it adopts no port it did not open, and it restarts a dead
agents worker or a dead embedded broker by itself."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from services.shared.broker import free_port
from services.shared.processes import port_taken
from tests.integration.conftest import wait_for

H = {"program-id": "shop"}
PORTS = ("SLUICE_HTTP_PORT", "SLUICE_EMBEDDED_BROKER_PORT", "SLUICE_AGENTS_WEB_PORT")


@dataclass
class Up:
    proc: subprocess.Popen[bytes]
    ports: dict[str, int]
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.ports['SLUICE_HTTP_PORT']}"

    def child(self, kind: str) -> psutil.Process:
        """Its broker ('tansu') or agents worker ('agents'), by command line; not a roll's
        next worker, held before its recovery (--recover-on-stdin)."""
        [found] = [c for c in psutil.Process(self.proc.pid).children()
                   if kind in (line := " ".join(c.cmdline())) and "--recover-on-stdin" not in line]
        return found

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def up_env(data_dir: Path, ports: dict[str, int]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    return env | {"SLUICE_DATA_DIR": str(data_dir)} | {k: str(v) for k, v in ports.items()}


@contextmanager
def sluice_up(data_dir: Path, log: Path, ports: dict[str, int] | None = None,
              env: dict[str, str] | None = None) -> Iterator[Up]:
    """`sluice up`, ready (``env``: more SLUICE_* settings); on leaving, it must stop on
    SIGTERM with exit 0."""
    ports = ports or {name: free_port() for name in PORTS}
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "services.cli", "up"],
                                env=up_env(data_dir, ports) | (env or {}), stdout=out,
                                stderr=subprocess.STDOUT)
    up = Up(proc, ports, log)
    try:
        wait_for(lambda: ready(up.base) or proc.poll() is not None, timeout_s=120)
        assert proc.poll() is None, up.tail()
        yield up
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(90) == 0, up.tail()
    finally:  # its children die with it (PR_SET_PDEATHSIG)
        with suppress(ProcessLookupError):
            proc.kill()
        proc.wait()


def ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def post(base: str, n: int = 1, label: str = "a", queue_updates: bool = False,
         timeout_s: float = 30, event_id: str | None = None) -> httpx.Response:
    """n views of u1, all at the same time: each adds exactly 1 to the label's weight.
    ``event_id``: the client's own id (n = 1), so that a retry counts once."""
    event = {"user_id": "u1", "event_timestamp": "2026-11-23T10:00:00Z", "event_type": "view",
             "asset_id": "sku-1", "labels": [label]}
    if event_id is not None:
        event["event_id"] = event_id
    body = {"events": [event] * n}
    return httpx.post(f"{base}/events", params={"queue_updates": str(queue_updates).lower()},
                      json=body, headers=H, timeout=timeout_s)


def weights(base: str) -> dict[str, float]:
    got = httpx.get(f"{base}/users/u1/label-weights", headers=H, timeout=5)
    if got.status_code == 503:  # its worker is down or recovering: nothing to read yet
        assert got.headers["retry-after"]
        return {}
    return {w["label"]: w["weight"] for w in got.json()["label_weights"]}


def stored(base: str) -> int:
    got = httpx.get(f"{base}/events", params={"user_id": "u1", "limit": 1000}, headers=H,
                    timeout=5)
    return len(got.json()["events"])


def alive(procs: list[psutil.Process]) -> int:
    n = 0
    for proc in procs:
        with suppress(psutil.NoSuchProcess):
            n += proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    return n


def ports_free(ports: dict[str, int]) -> bool:
    return not any(port_taken("127.0.0.1", p) for p in ports.values())


def test_sigkill_of_up_leaves_no_child_and_the_next_start_is_clean(tmp_path: Path) -> None:
    log = tmp_path / "up.log"
    with sluice_up(tmp_path / "data", log) as up:
        assert post(up.base, 3).status_code == 200
        wait_for(lambda: stored(up.base) == 3, timeout_s=10)
        family = psutil.Process(up.proc.pid).children(recursive=True)
        assert {"tansu", "agents"} <= {k for c in family for k in ("tansu", "agents")
                                      if k in " ".join(c.cmdline())}
        up.proc.kill()
        up.proc.wait()
        wait_for(lambda: alive(family) == 0 and ports_free(up.ports), timeout_s=5)
        ports = up.ports
    # same ports, same data: nothing left to adopt, state rebuilt from ClickHouse
    with sluice_up(tmp_path / "data", log, ports) as up:
        assert weights(up.base) == {"a": 3.0}
        assert post(up.base, 1).status_code == 200
        assert weights(up.base) == {"a": 4.0}
    assert "restored 1 users (3 events)" in log.read_text()


@pytest.mark.parametrize("taken", PORTS)
def test_a_taken_port_is_named_and_nothing_starts(tmp_path: Path, taken: str) -> None:
    ports = {name: free_port() for name in PORTS}
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ports[taken]))
        squatter.listen()
        done = subprocess.run([sys.executable, "-m", "services.cli", "up"],
                              env=up_env(tmp_path / "data", ports), capture_output=True,
                              timeout=60, check=False)
    out = (done.stdout + done.stderr).decode()
    assert done.returncode != 0, out
    assert f"port {ports[taken]} " in out and taken in out, out
    assert f"pid {os.getpid()}" in out, out  # who holds it: this test
    assert not (tmp_path / "data").exists()  # nothing started, not even the data dir


def test_a_killed_broker_is_restarted_and_state_rebuilt_from_clickhouse(tmp_path: Path) -> None:
    log = tmp_path / "up.log"
    with sluice_up(tmp_path / "data", log) as up:
        assert post(up.base, 3).status_code == 200
        wait_for(lambda: stored(up.base) == 3, timeout_s=10)  # in ClickHouse: survives
        broker = up.child("tansu")
        broker.kill()
        killed = time.monotonic()
        answers = []
        # waiting (or a closed connection) while the next generation starts, then 200 again.
        # A 503/504 may come after the event was durably published (the agents not ready
        # yet): the client retries with its own id, as the API asks, so the event counts
        # once however often it was sent
        while True:
            assert time.monotonic() - killed < 90, (answers, up.tail())
            try:
                status = post(up.base, 1, timeout_s=20, event_id="after-the-restart").status_code
            except httpx.HTTPError as exc:
                answers.append(repr(exc))
            else:
                answers.append(status)
                if status == 200:
                    break
            time.sleep(0.1)
        print(f"\nbroker SIGKILL -> first 200 under sluice up: {time.monotonic() - killed:.1f} s")
        # 3 rebuilt from ClickHouse + the new one
        assert weights(up.base) == {"a": 4.0}, answers
        assert up.child("tansu").pid != broker.pid
        wait_for(lambda: stored(up.base) == 4, timeout_s=10)
    text = log.read_text()
    assert text.count("NOT YET STORED IN CLICKHOUSE MAY BE LOST") == 1
    assert "restored 1 users (3 events)" in text


def test_a_killed_agents_worker_is_restarted_and_counts_each_event_once(tmp_path: Path) -> None:
    log = tmp_path / "up.log"
    with sluice_up(tmp_path / "data", log) as up:
        for _ in range(5):  # five messages; their offsets are likely not committed yet
            assert post(up.base, 2, queue_updates=True).status_code == 200
        wait_for(lambda: weights(up.base) == {"a": 10.0}, timeout_s=20)
        agents = up.child("agents")
        agents.kill()
        killed = time.monotonic()
        for _ in range(5):  # accepted while no worker runs
            assert post(up.base, 2, queue_updates=True).status_code == 200
        wait_for(lambda: weights(up.base).get("a", 0) >= 20.0, timeout_s=60)
        print(f"\nagents SIGKILL -> state caught up under sluice up: "
              f"{time.monotonic() - killed:.1f} s")
        # answered once u1's state includes it: the replay before it is applied too
        assert post(up.base, 1, queue_updates=False).status_code == 200
        assert weights(up.base) == {"a": 21.0}
        assert up.child("agents").pid != agents.pid
    assert "the agents worker (pid" in log.read_text()


def test_sigterm_while_starting_stops_cleanly(tmp_path: Path) -> None:
    ports = {name: free_port() for name in PORTS}
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "services.cli", "up"],
                                env=up_env(tmp_path / "data", ports), stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "created topic" in log.read_text() or proc.poll() is not None,
                 timeout_s=60)
        family = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()[-3000:]
        wait_for(lambda: alive(family) == 0 and ports_free(ports), timeout_s=5)
    finally:
        with suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
