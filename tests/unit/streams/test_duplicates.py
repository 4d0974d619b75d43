"""Events carrying a client's own id: a retry (the same id again within the window) changes
no user state, across batches, through the changelog and after a replay; ids past the
window or beyond the cap are forgotten, and what a record carries for them is measured."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from services.shared.events import message_key
from services.shared.ranking import ModelConfig, label_weights
from services.shared.users import UserRecord, pack_seen, unpack_seen
from streams.update import Dedup, apply_messages, split_by_user

NS = uuid.UUID("6f1d8a52-3c0e-4f5b-9a37-5b0f3f2d8e11")
T0 = 1_796_400_000  # receipt times, epoch seconds


@dataclass
class Msg:
    partition: int
    offset: int
    value: bytes


def line(client_id: str | None, received: int, label: str = "x", source: str = "posthog") -> bytes:
    event_id = str(uuid.uuid5(NS, f"p\x1f{source}\x1f{client_id}")) if client_id else str(uuid.uuid4())
    event = {
        "program_id": "p", "user_id": "ann", "event_timestamp": "2026-11-20T10:00:00Z",
        "event_type": "purchase", "asset_id": f"a-{label}", "labels": [label],
        "process_user_actions": True, "event_id": event_id, "source": source,
        "received_at": datetime.fromtimestamp(received, UTC).isoformat(),
    }
    if client_id:
        event["client_event_id"] = client_id
    return orjson.dumps(event)


def apply(record: UserRecord, messages: list[Msg], dedup: Dedup | None = None,
          duplicates: dict[str, int] | None = None) -> bool:
    entries = split_by_user(messages)[message_key("p", "ann")]
    return apply_messages(record, entries, lambda _p: ModelConfig(), dedup=dedup or Dedup(),
                          duplicates=duplicates)


def test_a_retried_batch_and_a_repeat_in_a_later_batch_count_once() -> None:
    record = UserRecord("p", "ann")
    batch = [Msg(0, 1, b"\n".join([line("e1", T0), line("e2", T0, "y")]))]
    apply(record, batch)
    once = label_weights(record.state)
    dups: dict[str, int] = {}
    # the client's retry: the same events, a new message a second later
    apply(record, [Msg(0, 2, b"\n".join([line("e1", T0 + 1), line("e2", T0 + 1, "y")]))],
          duplicates=dups)
    # half seen before, half new; and the record went through the changelog meanwhile
    record = UserRecord.decode(record.encode())
    apply(record, [Msg(0, 3, b"\n".join([line("e2", T0 + 60, "y"), line("e3", T0 + 60, "z")]))],
          duplicates=dups)
    assert record.events == 3 and dups == {"posthog": 3}
    weights = dict(label_weights(record.state))
    assert set(weights) == {"x", "y", "z"} and weights["x"] == dict(once)["x"]


def test_events_without_a_client_id_are_never_taken_for_repeats() -> None:
    record = UserRecord("p", "ann")
    apply(record, [Msg(0, 1, b"\n".join([line(None, T0), line(None, T0)]))])
    apply(record, [Msg(0, 2, line(None, T0))])
    assert record.events == 3 and record.seen_packed == "" and not record.seen
    assert b'"seen"' not in record.encode()  # users without client ids pay nothing


def test_the_same_id_from_another_dialect_is_another_event() -> None:
    record = UserRecord("p", "ann")
    apply(record, [Msg(0, 1, b"\n".join([line("e1", T0, source="posthog"),
                                        line("e1", T0, source="segment")]))])
    assert record.events == 2


def test_an_id_past_the_window_counts_again_and_old_ids_are_forgotten() -> None:
    dedup = Dedup(window_s=3600, max_ids=1000)
    record = UserRecord("p", "ann")
    apply(record, [Msg(0, 1, line("e1", T0))], dedup)
    apply(record, [Msg(0, 2, line("e1", T0 + 3599))], dedup)  # within: a retry
    assert record.events == 1
    apply(record, [Msg(0, 3, line("e2", T0 + 3600 + 5))], dedup)  # e1 is now past the window
    assert record.events == 2 and len(record.seen or {}) == 1
    apply(record, [Msg(0, 4, line("e1", T0 + 3600 + 6))], dedup)
    assert record.events == 3


def test_the_ids_a_record_keeps_are_capped_newest_first() -> None:
    dedup = Dedup(window_s=86400, max_ids=50)
    record = UserRecord("p", "ann")
    for i in range(120):
        apply(record, [Msg(0, i, line(f"e{i}", T0 + i))], dedup)
    assert 45 <= len(record.seen or {}) <= 50  # past 50, the oldest tenth goes at once
    apply(record, [Msg(0, 200, line("e119", T0 + 500))], dedup)  # among the newest: a retry
    apply(record, [Msg(0, 201, line("e0", T0 + 501))], dedup)  # forgotten: counted again
    assert record.events == 121


def test_a_replay_of_the_same_messages_decides_as_the_first_pass() -> None:
    """A worker that crashed after the changelog write replays from its committed offset:
    the record's offset skips whole messages; a replay onto a record from before them
    decides each event the same way, since the times come from the events themselves."""
    messages = [Msg(0, 1, line("e1", T0)), Msg(0, 2, line("e1", T0 + 5)), Msg(0, 3, line("e2", T0 + 9))]
    first = UserRecord("p", "ann")
    apply(first, messages)
    again = UserRecord("p", "ann")
    apply(again, messages[:2])
    apply(again, messages)  # replayed from the start: 1 and 2 are skipped by offset
    assert first.encode() == again.encode() and first.events == 2


def test_packing_keeps_every_id_in_16_characters() -> None:
    seen = {(1 << 64) - 1: T0, 0: T0 + 1, 12345678901234567890: 4_000_000_000}
    packed = pack_seen(seen)
    assert unpack_seen(packed) == seen and len(packed) == 16 * 3
    record = UserRecord("p", "ann")
    base = len(record.encode())
    for i in range(100):
        record.first_time(i, T0, 86400, 1000)
    assert len(record.encode()) - base == len(',"seen":""') + 16 * 100
