"""What a replay does with each letter, without a broker: order, markers, re-checks."""

from __future__ import annotations

import uuid

import orjson

from services.shared.events import message_key
from services.sink.dlq import REPLAY_OF
from services.sink.letters import DeadLetter, Filter
from services.sink.replay import (
    Outcome,
    Plan,
    ReplayError,
    _replay_batch,
    check,
    done_markers,
    is_done,
    marker_value,
    plan,
    requeued_headers,
)

EVENTS = "events"


def good(user: str = "u", program: str = "p") -> bytes:
    return orjson.dumps({
        "program_id": program, "event_id": str(uuid.uuid4()), "user_id": user,
        "event_timestamp": "2026-11-20T10:00:00Z", "event_type": "view", "asset_id": "a",
        "labels": ["x"], "received_at": "2026-11-20T10:00:01Z", "queue_updates": True,
        "process_user_actions": True,
    })


def letter(offset: int, value: bytes, partition: int = 0, ts: int = 1_000,
           **headers: bytes) -> DeadLetter:
    return DeadLetter(partition, offset, ts, value, None,
                      {"reason": b"ClickHouse refused the row", "source_topic": EVENTS.encode(),
                       "source_offset": b"17"} | headers)


def marker(ref: str, value: bytes) -> DeadLetter:
    return DeadLetter(0, 0, 0, value, ref.encode(), {})


def test_marker_key_is_partition_and_offset_and_matches_the_letters_timestamp() -> None:
    x = letter(42, good(), partition=1, ts=5_000)
    assert x.ref == "1:42"
    done = done_markers([marker(x.ref, marker_value(x, "replayed", "events:0:3"))])
    assert done == {"1:42": 5_000}
    assert is_done(x, done)
    # a DLQ topic re-created: the same offset, another letter
    assert not is_done(letter(42, good(), partition=1, ts=9_000), done)
    assert is_done(x, {"1:42": None})  # a marker without a timestamp still counts


def test_a_later_marker_wins_and_a_tombstone_unmarks() -> None:
    x = letter(1, good())
    done = done_markers([marker("0:1", marker_value(x, "refused", "dlq:0:9")), marker("0:1", b""),
                         marker("0:2", b"not json")])
    assert done == {"0:2": None}


def test_check_keeps_the_bytes_and_keys_each_line_by_its_user() -> None:
    a, b = good("u1"), good("u2")
    step = check(letter(0, a + b"\n" + b))
    assert step.refused is None
    assert step.lines == [(message_key("p", "u1"), a), (message_key("p", "u2"), b)]
    assert orjson.loads(step.lines[0][1])["event_id"] == orjson.loads(a)["event_id"]


def test_check_is_the_sinks_check() -> None:
    assert check(letter(0, b"{nope")).refused.startswith("not JSON")  # type: ignore[union-attr]
    missing = orjson.dumps({k: v for k, v in orjson.loads(good()).items() if k != "program_id"})
    assert check(letter(0, missing)).refused == "field 'program_id' is missing"
    assert check(letter(0, good() + b"\n{bad")).lines == []  # one bad line refuses the letter
    assert check(letter(0, b"")).refused == "empty message (tombstone) on the events topic"


def test_plan_keeps_dlq_order_and_leaves_out_what_is_done_tried_filtered_or_other() -> None:
    letters = [
        letter(3, good()), letter(1, good()), letter(0, good(), partition=1),
        letter(2, good(program="other")),
        letter(4, good(), **{REPLAY_OF: b"0:1"}),
        letter(5, b"{}", source_topic=b"assets"),
        letter(6, good()),
    ]
    done = {"0:6": 1_000}
    p = plan(letters, done, Filter(program="p"), EVENTS)
    assert [s.letter.ref for s in p.steps] == ["0:1", "0:3", "1:0"]
    assert (p.filtered, p.already, p.tried, p.other) == (2, 1, 1, 0)
    again = plan(letters, done, Filter(), EVENTS, retry_refused=True)
    assert [s.letter.ref for s in again.steps] == ["0:1", "0:2", "0:3", "0:4", "1:0"]
    assert again.other == 1


def test_a_letter_refused_again_notes_the_replay_and_keeps_its_origin() -> None:
    x = letter(7, b"{bad")
    headers = requeued_headers(x, "not JSON: oops")
    assert headers["reason"] == b"not JSON: oops"
    assert headers[REPLAY_OF] == b"0:7"
    assert headers["category"] == b"invalid_event"
    assert headers["source_topic"] == EVENTS.encode() and headers["source_offset"] == b"17"
    assert "replayed_at" in headers
    assert requeued_headers(letter(8, b""), "empty")["category"] == b"empty"


class FakeProducer:
    """Records produce() and flush() in order; a flush delivers (or fails) what is queued."""

    def __init__(self, failing_topic: str | None = None) -> None:
        self.failing_topic = failing_topic
        self.log: list[tuple[str, bytes | None, bytes | None]] = []
        self.queued: list[tuple[str, object]] = []

    def produce(self, topic: str, value: bytes, key: bytes | None, partition: int = -1,
                headers: object = None, on_delivery: object = None) -> None:
        self.log.append((topic, key, value))
        self.queued.append((topic, on_delivery))

    def flush(self, _timeout: float) -> int:
        self.log.append(("flush", None, None))
        queued, self.queued = self.queued, []
        for offset, (topic, callback) in enumerate(queued):
            if callable(callback):
                err = FakeError() if topic == self.failing_topic else None
                callback(err, FakeDelivered(topic, offset))
        return 0


class FakeError:
    def str(self) -> str:
        return "Broker: Not enough in-sync replicas"


class FakeDelivered:
    def __init__(self, topic: str, offset: int) -> None:
        self._topic, self._offset = topic, offset

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset


def _batch(producer: FakeProducer) -> tuple[Outcome, BaseException | None]:
    from services.shared.settings import Settings

    settings = Settings(kafka_bootstrap="127.0.0.1:1", topic_events=EVENTS, topic_dlq="dlq")
    steps = [check(letter(0, good())), check(letter(1, b"{bad"))]
    outcome = Outcome(Plan(steps=steps))
    try:
        _replay_batch(settings, producer, steps, outcome, 1.0)  # type: ignore[arg-type]
    except ReplayError as exc:
        return outcome, exc
    return outcome, None


def test_markers_follow_the_acked_records_never_precede_them() -> None:
    producer = FakeProducer()
    outcome, error = _batch(producer)
    assert error is None
    assert [(topic, key) for topic, key, _ in producer.log] == [
        (EVENTS, message_key("p", "u")), ("dlq", None), ("flush", None),
        ("dlq.replayed", b"0:0"), ("dlq.replayed", b"0:1"), ("flush", None)]
    assert (outcome.replayed, outcome.events, outcome.refused) == (1, 1, 1)
    assert orjson.loads(producer.log[3][2])["outcome"] == "replayed"  # type: ignore[arg-type]
    assert orjson.loads(producer.log[4][2])["to"] == "dlq:0:1"  # type: ignore[arg-type]


def test_a_letter_whose_records_the_broker_refused_is_not_marked() -> None:
    producer = FakeProducer(failing_topic=EVENTS)
    outcome, error = _batch(producer)
    assert isinstance(error, ReplayError) and "1 letters stay unreplayed" in str(error)
    markers = [key for topic, key, _ in producer.log if topic == "dlq.replayed"]
    assert markers == [b"0:1"]  # the refused-again letter's new letter was acked
    assert (outcome.replayed, outcome.refused) == (0, 1)
