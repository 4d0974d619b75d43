"""`sluice dlq` and `sluice replay` against a real broker, sink and ClickHouse.

The sink dead-letters a line with a missing field and one ClickHouse refuses; three more
letters are written as the sink writes them, of lines ClickHouse refused at the time (one
of them an event it in fact stored). Replay puts back what passes the sink's check, each
event once in ClickHouse; what still fails stays in the DLQ with its new reason; a second
replay does nothing.
"""

from __future__ import annotations

import re

import orjson
from confluent_kafka import Producer
from typer.testing import CliRunner, Result

from services import cli
from services.shared.clickhouse import Store
from services.shared.settings import Settings
from services.sink.letters import DeadLetter, read_all
from services.sink.replay import marker_topic
from tests.integration.conftest import running_sink, wait_for
from tests.integration.test_failures import produce_raw, wire


def sluice(settings: Settings, *args: str) -> Result:
    env = settings.environment() | {"COLUMNS": "400"}  # rich: no wrapped table cells
    result = CliRunner().invoke(cli.app, list(args), env=env)
    assert result.exit_code == 0, result.output
    return result


def letters(settings: Settings, at_least: int = 0) -> list[DeadLetter]:
    found: list[DeadLetter] = []

    def enough() -> bool:
        found[:] = read_all(settings, settings.topic_dlq)
        return len(found) >= at_least
    wait_for(enough)
    return found


def stored(store: Store) -> int:
    return int(store.query("SELECT count() AS n FROM events FINAL")[0]["n"])


def test_dlq_counts_and_replay_puts_each_letter_back_once(settings: Settings, store: Store) -> None:
    good = wire("u", 3)
    missing = orjson.loads(good[0][1])
    del missing["program_id"]
    bad_uuid = orjson.loads(wire("u", 1)[0][1]) | {"event_id": "not-a-uuid"}
    fixed = wire("v", 2)  # refused at the time, e.g. by a ClickHouse that was misconfigured
    with running_sink(settings, store):
        produce_raw(settings, good + [(b"k1", orjson.dumps(missing)), (b"k2", orjson.dumps(bad_uuid))])
        wait_for(lambda: stored(store) == 3)
        letters(settings, at_least=2)
        producer = Producer({"bootstrap.servers": settings.bootstrap})
        for key, value in fixed + [good[0]]:  # good[0]: an event ClickHouse in fact stored
            producer.produce(settings.topic_dlq, value, key, headers=[
                ("reason", b"ClickHouse refused the row: Code: 241. Memory limit exceeded"),
                ("category", b"clickhouse_refused"), ("source_topic", settings.topic_events.encode()),
                ("source_partition", b"0"), ("source_offset", b"0")])
        assert producer.flush(10) == 0
        before = letters(settings, at_least=5)
        assert len(before) == 5

        listing = sluice(settings, "dlq", "--limit", "2").output
        assert re.search(r"clickhouse_refused\s*│\s*p\s*│\s*4\s*│\s*0\s*│", listing), listing
        assert re.search(r"invalid_event\s*│\s*-\s*│\s*1\s*│\s*0\s*│", listing), listing
        assert "First 2 letters" in listing
        only = sluice(settings, "dlq", "--reason", "memory limit").output
        assert re.search(r"clickhouse_refused\s*│\s*p\s*│\s*3\s*│", only), only
        assert "invalid_event" not in only

        events_before = len(list(read_all(settings, settings.topic_events)))
        dry = sluice(settings, "replay", "--dry-run").output
        assert "Would replay 5 letters" in dry
        assert "stays in the DLQ: field 'program_id' is missing" in dry
        assert dry.count("goes: 1 event ") == 4
        assert "Memory limit exceeded" in dry  # why each was dead-lettered
        assert len(list(read_all(settings, settings.topic_events))) == events_before
        assert len(letters(settings)) == 5
        assert list(read_all(settings, marker_topic(settings))) == []

        first = sluice(settings, "replay").output
        assert "replayed 4 letters (4 events); 1 refused again" in first, first
        # the two fixed events stored; good[0] again and bad_uuid's refusal collapse/DLQ
        wait_for(lambda: stored(store) == 5)
        after = letters(settings, at_least=7)  # + the missing field again, + bad_uuid again
        [ids] = store.query("SELECT uniqExact(event_id) AS n FROM events")
        assert ids["n"] == 5
        fixed_ids = {orjson.loads(v)["event_id"] for _, v in fixed}
        rows = store.query("SELECT toString(event_id) AS id FROM events FINAL WHERE user_id = 'v'")
        assert {r["id"] for r in rows} == fixed_ids  # the lines' own event ids, kept
        again = {x.replay_of: x for x in after[5:]}
        by_value = {x.value: x.ref for x in before}
        assert set(again) == {by_value[orjson.dumps(missing)], by_value[orjson.dumps(bad_uuid)]}
        assert again[by_value[orjson.dumps(missing)]].reason == "field 'program_id' is missing"
        assert again[by_value[orjson.dumps(bad_uuid)]].reason.startswith("ClickHouse refused")
        events_after = len(list(read_all(settings, settings.topic_events)))
        assert events_after == events_before + 4

        second = sluice(settings, "replay").output
        assert "replayed 0 letters (0 events); 0 refused again" in second, second
        assert "5 already replayed, 2 refused at an earlier replay" in second
        assert len(list(read_all(settings, settings.topic_events))) == events_after
        assert len(letters(settings)) == 7
        assert stored(store) == 5
        listing = sluice(settings, "dlq").output
        assert re.search(r"total\s*│\s*│\s*7\s*│\s*5\s*│", listing), listing
