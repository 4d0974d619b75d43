"""The erasure message, its receipt, its status and its ClickHouse statements: pure parts."""

from __future__ import annotations

from collections import deque
from datetime import datetime

import orjson
import pytest

from services.shared import erasures
from services.shared.erasures import Erasure, InvalidEvent, Receipt, Stored
from services.shared.events import encode, message_key


def test_an_erasure_is_told_from_every_event_by_its_first_bytes_and_decodes_back() -> None:
    erasure = Erasure.new("shop", "u'1")
    value = erasure.encode()
    assert erasures.is_erasure(value) and value.startswith(erasures.PREFIX)
    assert erasures.decode(value) == erasure
    assert erasure.key == message_key("shop", "u'1")
    event = encode({"program_id": "shop", "user_id": "sluice_erasure", "labels": []})
    assert [erasures.is_erasure(v) for v in (event, b"", None, b'{"sluice_erasure"')] == [
        False, False, False, False]
    empty_program = (b'{"sluice_erasure":1,"program_id":"","user_id":"u","erasure_id":"e",'
                     b'"requested_at":"t"}')
    for bad in (b'{"sluice_erasure":1}', empty_program, b'{"sluice_erasure":x'):
        with pytest.raises(InvalidEvent):
            erasures.decode(bad)


def test_a_receipt_round_trips_names_its_user_only_by_digest_and_refuses_forgeries() -> None:
    erasure = Erasure.new("shop", "alice@example.com")
    receipt = erasures.receipt_for(erasure, 3, 1234)
    text = receipt.encode()
    assert Receipt.decode(text) == receipt
    assert b"alice" not in text.encode() and "alice" not in repr(Receipt.decode(text))
    assert receipt.names("shop", "alice@example.com")
    assert not receipt.names("shop", "bob") and not receipt.names("other", "alice@example.com")
    assert [Receipt.decode(t) for t in ("", "!!", text[:-3], "kwGkc2hvcKZzdG9yZWSBAAc")] == [
        None] * 4


@pytest.mark.parametrize(("topology", "cluster", "table"), [
    ("single", None, "DELETE FROM events WHERE"),
    ("replicated", "c1", "DELETE FROM events WHERE"),
    ("cloud", None, "DELETE FROM events WHERE"),
    ("sharded", "c1", "DELETE FROM events_local ON CLUSTER 'c1' WHERE"),
])
def test_the_delete_is_one_lightweight_delete_per_topology_with_quoted_ids(
        topology: str, cluster: str | None, table: str) -> None:
    hostile = Erasure("sh'op", "u\\1' OR 1=1 --", "e", "t")
    twice = [hostile, Erasure("shop", "ann", "e2", "t"), Erasure("shop", "ann", "e3", "t")]
    sql = erasures.delete_statement(twice, topology, cluster)
    assert sql == (f"{table} (program_id, user_id) IN (('sh\\'op', 'u\\\\1\\' OR 1=1 --'), "
                   "('shop', 'ann'))")
    assert erasures.count_statement(twice[1:]) == (
        "SELECT program_id, user_id, count() AS n FROM events FINAL "
        "WHERE (program_id, user_id) IN (('shop', 'ann')) GROUP BY program_id, user_id")


def test_the_erasures_row_keeps_a_digest_never_the_user_id() -> None:
    erasure = Erasure("shop", "alice@example.com", "e1", "2026-12-05T04:00:00Z")
    row = orjson.loads(erasures.record_row(erasure, 2, 77, 1000))
    assert "alice" not in orjson.dumps(row).decode()
    assert row["user_digest"] == erasures.user_digest("shop", "alice@example.com")
    assert (row["source_partition"], row["source_offset"], row["rows_deleted"]) == (2, 77, 1000)
    assert len(row["user_digest"]) == 32


RECEIPT = Receipt("shop", "d", "e", partition=1, offset=10)
DONE = Stored("2026-12-05T04:00:01+00:00", 5)


def status(sink: int, agents: int, stored: Stored | None, table: bool = True,
           there: bool = True) -> tuple[str, str, str]:
    asked: list[int] = []

    def still() -> bool:
        asked.append(1)
        return there

    got = erasures.decide(RECEIPT, sink, agents, stored, table, still)
    if got["status"] == "done" and there:
        assert not asked  # no read of the topic once every store is done
    return (got["status"], got["stores"]["clickhouse"]["status"], got["stores"]["agents"]["status"])


def test_done_means_clickhouse_recorded_and_the_agents_group_passed_the_message() -> None:
    assert status(11, 11, DONE) == ("done", "done", "done")
    assert status(11, 10, DONE) == ("pending", "done", "pending")  # committed 10: not past
    assert status(11, 11, None) == ("pending", "pending", "done")  # the table decides
    assert status(11, 11, None, table=False) == ("done", "done", "done")  # no table: offsets
    assert status(10, 11, None, table=False) == ("pending", "pending", "done")
    # the topic started over (embedded broker restarted): state was rebuilt from ClickHouse
    assert status(-1, -1, DONE, there=False) == ("done", "done", "done")
    # ... and the erasure never reached the sink: lost, erase again
    assert status(-1, -1, None, there=False) == ("lost", "pending", "pending")
    full = erasures.decide(RECEIPT, 11, 11, DONE, True, lambda: True)
    assert full["stores"]["clickhouse"] == {"status": "done", "rows_deleted": 5,
                                           "erased_at": DONE.erased_at}


def test_stored_row_reads_the_table_by_program_digest_and_id() -> None:
    seen: list[dict[str, object]] = []

    def query(sql: str, params: dict[str, object]) -> list[dict[str, object]]:
        seen.append(params)
        return [{"erased_at": datetime(2026, 12, 5, 4), "rows_deleted": 3, "n": 1}]

    assert erasures.stored_row(query, RECEIPT) == Stored("2026-12-05T04:00:00+00:00", 3)
    assert seen == [{"p": "shop", "d": "d", "e": "e"}]
    assert erasures.stored_row(lambda *_: [{"erased_at": None, "rows_deleted": 0, "n": 0}],
                               RECEIPT) is None


def test_the_live_page_forgets_the_users_events_and_dead_letters() -> None:
    events = [{"program_id": "shop", "user_id": "u1"}, {"program_id": "shop", "user_id": "u2"},
              {"program_id": "other", "user_id": "u1"}, {"program_id": "shop", "user_id": "u1"}]
    dead = deque([{"value": '{"program_id":"shop","user_id":"u1","x":1}'},
                  {"value": '{"program_id":"shop","user_id":"u12"}'}], maxlen=100)
    kept, letters = erasures.forget_user(events, dead, Erasure.new("shop", "u1").encode())
    assert kept == [{"program_id": "shop", "user_id": "u2"}, {"program_id": "other", "user_id": "u1"}]
    assert list(letters) == [{"value": '{"program_id":"shop","user_id":"u12"}'}]
    assert letters.maxlen == 100
    assert erasures.forget_user(events, dead, b'{"sluice_erasure":x') == (events, dead)
