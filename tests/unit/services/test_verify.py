"""`sluice verify`'s pure parts: the comparison, the offsets it names, the tallies' counts."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from services.shared.tallies import BatchTallies, GatewayTallies, line_keys, row_key
from services.verify import Cell, compare, uncovered, window

M = datetime(2026, 12, 5, 4, 52, tzinfo=UTC)
W = {"since": M - timedelta(hours=1), "until": M + timedelta(minutes=1)}


def cell(acked: int, stored: int, dead: int = 0, partition: int = 0, last: int = 9,
         program: str = "shop", minute: datetime = M) -> Cell:
    return Cell(program, minute, partition, acked, stored, dead, last if acked else -1)


def test_equal_counts_are_no_gap_and_dead_letters_are_not_lost() -> None:
    report = compare([cell(10, 10), cell(5, 3, dead=2, partition=1)], None, **W)
    assert report.ok and report.gaps == []
    t = report.programs["shop"]
    assert (t.acked, t.stored, t.dead, t.missing, t.extra) == (15, 13, 2, 0, 0)


def test_a_shortfall_is_a_gap_per_partition_and_a_surplus_is_not() -> None:
    report = compare([cell(10, 7, partition=2), cell(4, 6, partition=3),
                      cell(3, 3, program="other")], None, **W)
    assert not report.ok
    assert [(g.kind, g.program, g.partition, g.events) for g in report.gaps] == [
        ("missing", "shop", 2, 3)]
    t = report.programs["shop"]
    assert (t.acked, t.stored, t.missing, t.extra) == (14, 13, 3, 2)
    assert report.programs["other"].missing == 0
    assert report.total.acked == 17


def test_applied_is_judged_by_the_agents_committed_offset() -> None:
    cells = [cell(10, 10, partition=0, last=41), cell(6, 6, partition=1, last=7),
             cell(2, 2, partition=2, last=3)]
    report = compare(cells, {0: 42, 1: 7, 2: -1}, **W)  # 7: the message at 7 is not applied
    t = report.programs["shop"]
    assert (t.applied, t.unapplied, t.unjudged) == (10, 8, 0)
    assert [(g.kind, g.partition, g.events, g.offsets) for g in report.gaps] == [
        ("not applied", 1, 6, [(7, 7)]), ("not applied", 2, 2, [(0, 3)])]
    assert "partition 1: 6 events acked but not yet applied by the agents; look at offsets 7" \
        in report.gaps[0].describe()


def test_tallies_older_than_the_partitions_first_message_are_not_judged() -> None:
    older = cell(4, 4, minute=M - timedelta(minutes=5), last=900)
    emptied = cell(5, 5, partition=1, last=77)  # an empty partition now: a new topic's
    report = compare([older, cell(3, 3, last=2), emptied], {0: 3, 1: -1},
                     {0: M + timedelta(seconds=20)}, **W)
    assert report.ok
    assert (report.total.applied, report.total.unjudged) == (3, 9)


def test_the_minute_a_topic_began_is_judged_unless_it_holds_an_earlier_brokers_offsets() -> None:
    """A roll of `sluice up`'s broker: the minute it happened in counts the old broker's
    acks (offsets up to 5,000) with the next one's (up to 40, all applied): no alarm. A topic
    that began this minute with no earlier broker in it is judged as any minute."""
    began = {0: M + timedelta(seconds=20), 1: M + timedelta(seconds=20)}
    rolled = cell(120, 120, partition=0, last=5_000)
    fresh = cell(30, 30, partition=1, last=29)
    report = compare([rolled, fresh], {0: 41, 1: 12}, began, ends={0: 41, 1: 30}, **W)
    assert (report.total.unjudged, report.total.unapplied) == (120, 30)
    assert [(g.kind, g.partition, g.offsets) for g in report.gaps] == [
        ("not applied", 1, [(12, 29)])]
    caught_up = compare([rolled, fresh], {0: 41, 1: 30}, began, ends={0: 41, 1: 30}, **W)
    assert caught_up.ok and caught_up.total.applied == 30


def test_uncovered_names_the_acked_offsets_no_stored_batch_holds() -> None:
    assert uncovered([(0, 7)], [(0, 3), (6, 7)]) == [(4, 5)]
    assert uncovered([(0, 3), (4, 9)], [(0, 9)]) == []
    assert uncovered([(10, 12), (20, 20)], [(11, 11)]) == [(10, 10), (12, 12), (20, 20)]
    assert uncovered([(5, 8)], []) == [(5, 8)]


def test_the_default_window_ends_the_settle_time_before_now_on_a_minute() -> None:
    since, until = window(120, 60, datetime(2026, 12, 5, 5, 0, 30, tzinfo=UTC))
    assert (since, until) == (datetime(2026, 12, 5, 3, 58, tzinfo=UTC),
                              datetime(2026, 12, 5, 4, 58, tzinfo=UTC))


def line(program: str = "shop", received: str = "2026-12-05T04:52:20.5Z", **extra: Any) -> bytes:
    event = {"user_id": "u", "event_id": "e"} | extra
    tail = {"program_id": program, "received_at": received, "queue_updates": True}
    return orjson.dumps(event)[:-1] + b"," + orjson.dumps(tail)[1:]


def test_line_keys_count_each_line_by_program_and_minute() -> None:
    message = b"\n".join([line(), line(), line('sh"op'), line(received="2026-12-05T04:53:00Z")])
    assert line_keys(message) == {("shop", "2026-12-05 04:52:00"): 2,
                                  ('sh"op', "2026-12-05 04:52:00"): 1,
                                  ("shop", "2026-12-05 04:53:00"): 1}
    other = orjson.dumps({"received_at": "2026-12-05T04:52:59+00:00", "program_id": "p"})
    assert line_keys(other + b"\n" + b"not json") == {("p", "2026-12-05 04:52:00"): 1}
    assert row_key(b"") is None


def test_a_batch_counts_stored_and_refused_lines_with_its_id() -> None:
    batch = BatchTallies()
    batch.message(1, 40, 1_700_000, b"\n".join([line()] * 3))
    batch.message(1, 41, 1_700_001, line())
    batch.refused(1, 41, [line()])
    [row] = [orjson.loads(r) for r in batch.rows().split(b"\n")]
    assert {k: row[k] for k in ("program_id", "minute", "kind", "partition", "id", "events",
                                "dead", "first_offset", "last_offset")} == {
        "program_id": "shop", "minute": "2026-12-05 04:52:00", "kind": "stored",
        "partition": 1, "id": "40@1700000", "events": 3, "dead": 1, "first_offset": 40,
        "last_offset": 41}


class FakePublisher:
    def __init__(self, fail: int = 0) -> None:
        self.settings = type("S", (), {"tally_flush_s": 3600.0, "topic_tallies": "t"})()
        self.sent: list[bytes] = []
        self.fail = fail

    async def publish(self, messages: list[tuple[bytes, bytes]], topic: str) -> None:
        if self.fail:
            self.fail -= 1
            raise RuntimeError("no ack")
        assert topic == "t" and all(key.endswith(b"-1") for key, _ in messages)
        self.sent += [v for _, v in messages]


def test_the_gateway_tallies_acked_chunks_and_resends_a_failed_flush_with_its_ids() -> None:
    async def run() -> list[dict[str, Any]]:
        publisher = FakePublisher(fail=1)
        tallies = GatewayTallies(publisher)
        received = datetime(2026, 12, 5, 4, 52, 20, tzinfo=UTC)
        tallies.add("shop", received, [(0, [b"a", b"b"], 3), (2, [b"c"], 1)], [(0, 5), (2, 9)])
        tallies.add("shop", received, [(0, [b"d"], 1)], [(0, 8)])
        await tallies.flush()  # refused: kept
        assert publisher.sent == []
        await tallies.close()
        return [orjson.loads(r) for v in publisher.sent for r in v.split(b"\n")]

    rows = asyncio.run(run())
    assert {(r["partition"], r["events"], r["first_offset"], r["last_offset"], r["kind"])
            for r in rows} == {(0, 3, 5, 8, "acked"), (2, 1, 9, 9, "acked")}
    assert len({r["id"] for r in rows}) == 1 and rows[0]["id"].endswith("-1")


def test_under_sluice_up_the_gateway_inserts_its_tallies_itself() -> None:
    inserted: list[tuple[str, bytes]] = []

    class Store:
        def insert_json_rows(self, table: str, rows: bytes) -> None:
            inserted.append((table, rows))

    async def run() -> None:
        publisher = FakePublisher()
        tallies = GatewayTallies(publisher, Store())
        tallies.add("shop", datetime(2026, 12, 5, 4, 52, tzinfo=UTC), [(3, [b"a"], 1)], [(3, 4)])
        await tallies.close()
        assert publisher.sent == []  # not through the broker, which may be what died

    asyncio.run(run())
    [(table, rows)] = inserted
    assert table == "event_tallies"
    assert {k: orjson.loads(rows)[k] for k in ("partition", "events", "last_offset")} == {
        "partition": 3, "events": 1, "last_offset": 4}
