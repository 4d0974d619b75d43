"""A client's retry counts once: in ClickHouse and in user state, across batches and
across an agents worker killed between the two sends (issue 24: exactly once under retries).
The vendor dialects carry their own ids (Personalize eventId, PostHog uuid, Segment
messageId); ActionHub's POST /events takes an optional event_id."""

from __future__ import annotations

import re

import httpx
import pytest
from fastapi.testclient import TestClient

from services.gateway.app import create_app
from services.shared.clickhouse import Store
from services.shared.settings import Settings
from tests.integration.conftest import Agents, event, running_sink, wait_for

H = {"program-id": "shop"}
T = "2026-11-20T10:00:00Z"
USERS = [f"user{i}" for i in range(5)]


def batch(ids: range, with_ids: bool = True) -> list[dict[str, object]]:
    """Event i: user i % 5 buys asset a{i} labelled l{i % 3} (amount 5), all at T."""
    out = []
    for i in ids:
        e = event(USERS[i % 5], f"a{i}", event_type="purchase", labels=[f"l{i % 3}"],
                  event_timestamp=T)
        if with_ids:
            e["event_id"] = f"evt-{i}"
        out.append(e)
    return out


def expected(ids: set[int], user: str) -> dict[str, float]:
    weights: dict[str, float] = {}
    for i in ids:
        if USERS[i % 5] == user:
            weights[f"l{i % 3}"] = weights.get(f"l{i % 3}", 0.0) + 5.0
    return weights


def duplicates_counted(agents: Agents, index: int) -> float:
    port = agents.workers[index][1]
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    found = re.search(r'^sluice_duplicates_total\{source="actionhub"\} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_retried_and_half_repeated_batches_count_once_across_a_killed_worker(
    settings: Settings, store: Store, agents: Agents
) -> None:
    first = agents.start()
    with running_sink(settings, store), TestClient(create_app(settings, store)) as client:

        def post(events: list[dict[str, object]]) -> None:
            response = client.post("/events?queue_updates=false", json={"events": events},
                                   headers=H)
            assert response.status_code == 200, response.text

        post(batch(range(20)))
        agents.kill(first)  # SIGKILL between the send and its retry
        second = agents.start()
        post(batch(range(20)))  # the client's retry of the whole batch
        post(batch(range(10, 30)))  # half seen before, half new
        post(batch(range(100, 105), with_ids=False))  # no ids: never taken for repeats
        post(batch(range(100, 105), with_ids=False))
        distinct = set(range(30))
        for user in USERS:
            got = client.get(f"/users/{user}/label-weights", headers=H).json()
            assert got["events"] == 6 + 2, (user, got)  # 30 distinct / 5 users + 2 id-less
            weights = {w["label"]: w["weight"] for w in got["label_weights"]}
            want = expected(distinct | {100, 101, 102, 103, 104}, user)
            want[f"l{(100 + USERS.index(user)) % 3}"] += 5.0  # the id-less one, sent twice
            assert weights == pytest.approx(want), user
        assert duplicates_counted(agents, second) == 30  # 20 retried + 10 repeated
        # ClickHouse: every read Sluice serves shows each event once
        # 30 distinct + 10 id-less; every copy of a retried event collapses onto one row
        wait_for(lambda: store.query(
            "SELECT count() AS n FROM events FINAL WHERE program_id = 'shop'")[0]["n"] == 40,
            timeout_s=30)
        final = store.query("SELECT client_event_id, count() AS n FROM events FINAL "
                            "WHERE program_id = 'shop' GROUP BY client_event_id")
        counts = {row["client_event_id"]: row["n"] for row in final}
        assert {k: v for k, v in counts.items() if k} == {f"evt-{i}": 1 for i in distinct}
        assert counts[""] == 10  # the id-less events, each send stored
        for user in USERS:
            rows = client.get("/events", params={"user_id": user, "limit": 100},
                              headers=H).json()["events"]
            ids = [r["client_event_id"] for r in rows if r["client_event_id"]]
            assert sorted(ids) == sorted(f"evt-{i}" for i in distinct if USERS[i % 5] == user)
