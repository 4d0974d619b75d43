"""`sluice verify` against a real broker, sink and ClickHouse (services/verify.py).

Clean ingestion verifies clean (acked = stored, exit 0) and, once the agents group's
offsets are past the events, applied; a batch the sink skipped (its group's offset moved
past it while it was stopped) is found, named by partition and offsets, exit 1; a retried
batch with client ids (acked twice, stored once by event_id) is no gap.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from services import cli
from services.shared import clickhouse
from services.shared.clickhouse import Store
from services.shared.settings import Settings
from services.verify import Report
from services.verify_commands import run_once
from tests.integration.conftest import Agents, count, event, read_topic, running_sink, wait_for

H = {"program-id": "shop"}
USERS = [f"u{i}" for i in range(8)]  # over every partition of 4


@pytest.fixture
def fast(settings: Settings) -> Settings:
    settings.tally_flush_s = 0.1
    settings.queue_updates_default = True  # no agents run here: answer at the broker's ack
    return settings


@pytest.fixture
def window() -> tuple[datetime, datetime]:
    now = datetime.now(UTC)
    return now - timedelta(minutes=3), now + timedelta(minutes=2)


def post(client: TestClient, n: int, tag: str, query: str = "", **extra: Any) -> None:
    events = [event(USERS[i % len(USERS)], f"{tag}{i}", **extra) for i in range(n)]
    if "event_id" in extra:
        for i, e in enumerate(events):
            e["event_id"] = f"{tag}-{i}"
    response = client.post(f"/events{query}", json={"events": events}, headers=H)
    assert response.status_code == 200, response.text


def tallied(store: Store, kind: str) -> int:
    rows = store.query("SELECT sum(events) AS n FROM event_tallies FINAL WHERE kind = {k:String}",
                       {"k": kind})
    return int(rows[0]["n"] or 0)


def settled(store: Store, acked: int, stored: int) -> None:
    wait_for(lambda: tallied(store, "acked") == acked and tallied(store, "stored") == stored)


def check(settings: Settings, store: Store, window: tuple[datetime, datetime],
          agents: bool = False) -> Report:
    return run_once(settings, store, window[0], window[1], agents=agents)


def commit(settings: Settings, group: str, offsets: dict[int, int]) -> None:
    """Commit ``group``'s offsets on the events topic, as an operator's tool would."""
    consumer = Consumer({"bootstrap.servers": settings.bootstrap, "group.id": group,
                         "enable.auto.commit": False})
    consumer.commit(offsets=[TopicPartition(settings.topic_events, p, o)
                             for p, o in offsets.items()], asynchronous=False)
    consumer.close()


def ends(settings: Settings) -> dict[int, int]:
    """partition -> the offset after its last message (read, not Tansu's high watermark)."""
    out: dict[int, int] = {}
    for m in read_topic(settings.bootstrap, settings.topic_events, at_least=10**9, timeout_s=1.5):
        out[m.partition()] = max(out.get(m.partition(), 0), m.offset() + 1)
    return out


@pytest.fixture
def cli_store(store: Store, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """`sluice verify` in this process reads the test's store (chDB: one owner)."""
    class Shared:
        def __new__(cls, _settings: Settings) -> Store:  # type: ignore[misc]
            return store
    monkeypatch.setattr(clickhouse, "Store", Shared)
    monkeypatch.setattr(store, "close", lambda: None)
    yield


def test_clean_ingestion_verifies_clean_and_applied_once_the_agents_commit(
        fast: Settings, store: Store, pipeline: TestClient, window: tuple[datetime, datetime],
        cli_store: None) -> None:
    for n in (40, 25, 1):
        post(pipeline, n, f"c{n}-")
    wait_for(lambda: count(store) == 66)
    settled(store, acked=66, stored=66)
    report = check(fast, store, window)
    assert report.ok and report.gaps == []
    shop = report.programs["shop"]
    assert (shop.acked, shop.stored, shop.dead, shop.missing, shop.extra) == (66, 66, 0, 0, 0)

    behind = check(fast, store, window, agents=True)  # no agents ran: nothing applied
    assert not behind.ok and behind.total.unapplied == 66 and behind.total.applied == 0
    assert {g.kind for g in behind.gaps} == {"not applied"}
    commit(fast, fast.agents_app_id, ends(fast))
    applied = check(fast, store, window, agents=True)
    assert applied.ok and (applied.total.applied, applied.total.unapplied) == (66, 0)

    since, until = (t.isoformat() for t in window)
    result = CliRunner().invoke(cli.app, ["verify", "--since", since, "--until", until],
                                env=fast.environment() | {"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "no gap" in result.output
    assert [line.split() for line in result.output.splitlines() if "│ shop" in line] == [
        ["│", "shop", "│", "66", "│", "66", "│", "0", "│", "0", "│", "0", "│", "66", "│", "0",
         "│", "0", "│"]]


def test_a_batch_the_sink_skipped_is_found_by_partition_and_offsets(
        fast: Settings, store: Store, window: tuple[datetime, datetime], cli_store: None) -> None:
    from services.gateway.app import create_app

    # a gateway without the store, as in production: its tallies go through the topic
    with TestClient(create_app(fast)) as gateway:
        with running_sink(fast, store):
            post(gateway, 16, "a")
            wait_for(lambda: count(store) == 16)
        before = ends(fast)
        post(gateway, 8, "lost")  # the sink is stopped: acked, not stored
        after = ends(fast)
        lost = {p: (before.get(p, 0), end - 1) for p, end in after.items()
                if end > before.get(p, 0)}
        assert lost, after
        commit(fast, fast.sink_group, after)  # an operator's mistake: the group skips them
        with running_sink(fast, store):
            post(gateway, 8, "c")
            wait_for(lambda: count(store) == 24)
            settled(store, acked=32, stored=24)
    report = check(fast, store, window)
    assert not report.ok
    shop = report.programs["shop"]
    assert (shop.acked, shop.stored, shop.dead, shop.missing) == (32, 24, 0, 8)
    assert sum(g.events for g in report.gaps) == 8
    assert {g.partition: g.offsets for g in report.gaps} == {
        p: [span] for p, span in lost.items()}

    result = CliRunner().invoke(
        cli.app, ["verify", "--no-agents", "--since", window[0].isoformat(),
                  "--until", window[1].isoformat()], env=fast.environment() | {"COLUMNS": "200"})
    assert result.exit_code == 1, result.output
    for p, (first, last) in lost.items():
        where = f"{first}-{last}" if first != last else str(first)
        assert f"partition {p}: " in result.output and f"look at offsets {where}" in result.output


def test_a_retried_batch_with_client_ids_is_no_gap(
        fast: Settings, store: Store, pipeline: TestClient,
        window: tuple[datetime, datetime]) -> None:
    post(pipeline, 30, "r", event_id=True)
    post(pipeline, 30, "r", event_id=True)  # the client's retry: the same ids
    settled(store, acked=60, stored=60)
    assert count(store) == 30  # stored once, by event_id
    report = check(fast, store, window)
    assert report.ok, [g.describe() for g in report.gaps]
    shop = report.programs["shop"]
    assert (shop.acked, shop.stored, shop.missing, shop.extra) == (60, 60, 0, 0)


def test_what_a_real_agents_worker_applied_is_counted_applied(
        fast: Settings, store: Store, pipeline: TestClient, agents: Agents,
        window: tuple[datetime, datetime]) -> None:
    agents.start()
    post(pipeline, 20, "s")
    post(pipeline, 7, "q", query="?process_user_actions=false")  # read and skipped: applied
    settled(store, acked=27, stored=27)
    found: list[Report] = []

    def applied() -> bool:
        found[:] = [check(fast, store, window, agents=True)]
        return found[0].ok
    wait_for(applied, timeout_s=30)
    t = found[0].programs["shop"]
    assert (t.acked, t.stored, t.missing, t.applied, t.unapplied, t.unjudged) == (
        27, 27, 0, 27, 0, 0)
