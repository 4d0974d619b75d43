"""Reads of user state while partitions move between `sluice agents` workers (issue 21):
while a partition's owner cannot answer, a worker whose copy of it holds every record of
its changelog answers instead (streams/reads.py), so reads neither fail nor go back in time.
Real worker processes on Tansu."""

from __future__ import annotations

import re
import signal
import threading
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from services.shared.events import message_key, partition_for
from services.shared.settings import Settings
from tests.integration.conftest import Agents, wait_for
from tests.integration.test_user_state_store import T0, post

H = {"program-id": "shop"}


def readyz(agents: Agents, i: int) -> dict:
    return httpx.get(f"http://127.0.0.1:{agents.workers[i][1]}/readyz", timeout=2).json()


def partition_of(settings: Settings, user: str) -> int:
    return partition_for(message_key("shop", user), settings.events_partitions)


@pytest.mark.parametrize(("sig", "standbys"), [(signal.SIGKILL, 1), (signal.SIGTERM, 0)],
                         ids=["SIGKILL with a standby", "SIGTERM without"])
def test_a_stopped_owners_users_are_read_until_the_takeover(
    settings: Settings, pipeline: TestClient, agents: Agents, sig: signal.Signals,
    standbys: int, tmp_path: Path,
) -> None:
    """SIGKILL of a worker: its partitions stay its own until the session times out; every
    read of its users meanwhile comes from the other worker's standby copy, exact. SIGTERM
    (no standby): the worker leaves the group at once and answers its users' reads from its
    own store until the other serves them (streams/handover.py)."""
    settings.agents_standby_replicas = standbys
    settings.agents_session_timeout_s = 20.0  # the window the reads must be answered in
    users = [f"user{i}" for i in range(400)]
    first, second = agents.start(), agents.start()
    wait_for(lambda: all(readyz(agents, i)["ready"] and readyz(agents, i)["owned"]
                         for i in (first, second)), timeout_s=90, every_s=0.5)
    post(pipeline, users, "r0", T0, "false")  # applied, so in the changelog
    if standbys:
        wait_for(lambda: agents.stats(first)["changelog_standby"]
                 + agents.stats(second)["changelog_standby"] >= len(users), timeout_s=60)
    lost = set(readyz(agents, second)["owned"])
    theirs = [u for u in users if partition_of(settings, u) in lost]
    assert theirs
    answers: list[httpx.Response] = []
    stop = threading.Event()

    def read() -> None:  # while the worker stops, and after
        while not stop.is_set():
            answers.extend(pipeline.get(f"/users/{u}/label-weights", headers=H)
                           for u in theirs[:20])

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        agents.kill(second, sig)  # returns once it exited
    finally:
        stop.set()
        reader.join(30)
    answers.extend(pipeline.get(f"/users/{u}/label-weights", headers=H) for u in theirs)
    if sig == signal.SIGKILL:  # the standby answered for the dead owner
        assert agents.stats(first)["copy_reads"] > 0
    else:  # the leaver answered its users' reads until the other served its partitions
        handed = re.search(r"handed over after .* (\d+) reads answered",
                           (tmp_path / f"agents-{second}.log").read_text())
        assert handed and int(handed.group(1)) > 0
    assert [r.status_code for r in answers] == [200] * len(answers)
    assert {r.json()["events"] for r in answers} == {1}
    assert all(r.json()["label_weights"][0]["label"] == "r0" for r in answers)


def test_reads_go_on_while_a_worker_joins_and_takes_partitions_over(
    settings: Settings, pipeline: TestClient, agents: Agents
) -> None:
    """A second worker joins (no standbys): while the rebalance runs and the new owner
    recovers, the old owner's copies answer; no read fails or sees fewer events."""
    users = [f"user{i}" for i in range(400)]
    first = agents.start()
    post(pipeline, users, "r0", T0, "false")
    post(pipeline, users, "r0", T0, "false")
    readers_users = users[::10]  # 40 users, spread over the partitions
    seen: list[tuple[str, int, int]] = []  # (user, status, events)
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            for user in readers_users:
                r = pipeline.get(f"/users/{user}/label-weights", headers=H)
                seen.append((user, r.status_code,
                             r.json()["events"] if r.status_code == 200 else -1))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        second = agents.start()
        wait_for(lambda: readyz(agents, second)["ready"] and readyz(agents, first)["ready"]
                 and len(readyz(agents, second)["owned"]) > 0, timeout_s=90, every_s=0.2)
        moved = set(readyz(agents, second)["owned"])
        done = len(seen)
        wait_for(lambda: len(seen) >= done + 2 * len(readers_users), timeout_s=30)
    finally:
        stop.set()
        reader.join(30)
    assert moved and len(seen) > 4 * len(readers_users)
    failed = [s for s in seen if s[1] != 200]
    assert not failed, (len(failed), len(seen), failed[:5])
    assert {events for _, _, events in seen} == {2}
