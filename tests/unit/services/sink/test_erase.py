"""Erasures in the sink's batches, on a real chDB: what came before an erasure is stored
and then deleted with the user's other rows, what came after stays, other users are
untouched, the erasure is recorded once per id however often it is replayed."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from services.shared.clickhouse import Store
from services.shared.erasures import HEADER, Erasure, user_digest
from services.shared.events import WIRE_HEADER
from services.shared.settings import Settings
from services.sink.consume import Sink
from services.sink.erase import segments


@dataclass
class Msg:
    _value: bytes
    _offset: int
    _topic: str = "events"
    _headers: list[tuple[str, bytes]] = field(default_factory=lambda: [WIRE_HEADER])

    def value(self) -> bytes:
        return self._value

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def key(self) -> None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_796_400_000_000)

    def headers(self) -> list[tuple[str, bytes]]:
        return self._headers


class Published:
    """The markers for `sluice replay`, as the sink would publish them."""

    def __init__(self) -> None:
        self.marks: list[tuple[bytes, bytes]] = []

    def publish(self, marks: list[tuple[bytes, bytes]]) -> None:
        self.marks += marks


def lines(*users: str) -> bytes:
    return b"\n".join(orjson.dumps({
        "program_id": "shop", "event_id": str(uuid.uuid4()), "user_id": user,
        "event_timestamp": "2026-11-20T10:00:00Z", "event_type": "view", "asset_id": "a1",
        "labels": [], "received_at": "2026-11-20T10:00:00Z", "queue_updates": True,
        "process_user_actions": True}) for user in users)


def wipe(user: str, offset: int) -> Msg:
    return Msg(Erasure.new("shop", user).encode(), offset, _headers=[HEADER])


def test_segments_cut_a_batch_at_each_run_of_erasures_in_order() -> None:
    a, b, c = Msg(b"a", 1), Msg(b"b", 4), Msg(b"c", 6)
    e2, e3, e5, e7 = wipe("u", 2), wipe("v", 3), wipe("u", 5), wipe("w", 7)
    got = [([m.offset() for m in part], [e.offset() for e in run])
           for part, run in segments([a, e2, e3, b, e5, c])]  # type: ignore[list-item]
    assert got == [([1], [2, 3]), ([4], [5]), ([6], [])]
    assert [([m.offset() for m in p], [e.offset() for e in r])
            for p, r in segments([e2, a, e7])] == [([], [2]), ([1], [7])]  # type: ignore[list-item]
    assert list(segments([])) == []


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[tuple[Sink, Store]]:
    settings = Settings(data_dir=tmp_path, kafka_bootstrap="127.0.0.1:1", topic_events="events")
    store = Store(settings)
    sink = Sink(settings, store)
    sink.erasures.markers = Published()  # type: ignore[assignment]  # no broker here
    yield sink, store
    store.close()


def counts(store: Store) -> dict[str, int]:
    rows = store.query("SELECT user_id, count() AS n FROM events FINAL GROUP BY user_id")
    return {r["user_id"]: r["n"] for r in rows}


def test_a_batch_stores_before_the_erasure_deletes_then_stores_what_came_after(
        sink: tuple[Sink, Store]) -> None:
    worker, store = sink
    worker.write([Msg(lines("ann", "ann", "bob"), 0)])  # an earlier batch
    batch = [Msg(lines("ann", "bob"), 1), wipe("ann", 2), Msg(lines("ann"), 3)]
    worker.write(batch)  # type: ignore[arg-type]
    assert counts(store) == {"ann": 1, "bob": 2}  # ann's one event after the erasure
    recorded = store.query("SELECT rows_deleted, source_offset FROM erasures")
    assert recorded == [{"rows_deleted": 3, "source_offset": 2}]
    assert worker.rows_written == 6 and worker.erasures.done == 1
    assert worker.dead_letters.sent == 0  # an erasure is no dead letter
    worker.write(batch)  # type: ignore[arg-type]  # replayed after a crash: the same outcome
    assert counts(store) == {"ann": 1, "bob": 2}
    assert store.query("SELECT count() AS n FROM erasures FINAL") == [{"n": 1}]
    # a run of erasures (bob twice, ann, a user with nothing): one DELETE, a row each
    worker.write([wipe("bob", 4), wipe("ann", 5), wipe("bob", 6), wipe("nobody", 7),  # type: ignore[list-item]
                  Msg(lines("bob"), 8)])
    assert counts(store) == {"bob": 1}
    recorded = store.query("SELECT source_offset, rows_deleted FROM erasures FINAL "
                           "WHERE source_offset > 2 ORDER BY source_offset")
    assert [(r["source_offset"], r["rows_deleted"]) for r in recorded] == [
        (4, 2), (5, 1), (6, 0), (7, 0)]
    assert worker.erasures.done == 6  # ann, her replayed erasure, the run of 4
    marks = worker.erasures.markers.marks  # type: ignore[union-attr]
    assert [orjson.loads(value)["offset"] for _, value in marks] == [2, 2, 4, 5, 6, 7]
    assert marks[2][0] == f"shop\x1f{user_digest('shop', 'bob')}".encode()
