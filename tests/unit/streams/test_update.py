"""Source messages -> per-user actions -> records: bundles, flags, replays, bad messages."""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from services.shared.events import message_key
from services.shared.ranking import ModelConfig, label_weights
from services.shared.users import UserRecord
from streams.update import apply_messages, split_by_user


@dataclass
class Msg:
    partition: int
    offset: int
    value: bytes


def line(user: str, label: str, *, process: bool = True, program: str = "p") -> bytes:
    return orjson.dumps({
        "program_id": program, "user_id": user, "event_timestamp": "2026-11-20T10:00:00Z",
        "event_type": "purchase", "asset_id": f"a-{label}", "labels": [label],
        "process_user_actions": process,
    })


def bundle(partition: int, offset: int, *lines: bytes) -> Msg:
    return Msg(partition, offset, b"\n".join(lines))


def config(_program: str) -> ModelConfig:
    return ModelConfig()


def test_a_bundle_is_split_by_the_user_each_line_names() -> None:
    split = split_by_user([
        bundle(0, 5, line("ann", "x"), line("bob", "y"), line("ann", "z")),
        bundle(0, 6, line("bob", "w"), line("ann", "v", program="q")),
    ])
    assert set(split) == {message_key("p", "ann"), message_key("p", "bob"), message_key("q", "ann")}
    ann = split[message_key("p", "ann")]
    assert [(e.offset, [a[3] for a in e.actions]) for e in ann] == [(5, [["x"], ["z"]])]
    bob = split[message_key("p", "bob")]
    assert [(e.offset, [a[3] for a in e.actions]) for e in bob] == [(5, [["y"]]), (6, [["w"]])]


def test_events_that_skip_user_processing_and_bad_messages_change_nothing() -> None:
    split = split_by_user([
        bundle(1, 0, line("ann", "x", process=False)),
        bundle(1, 1, line("bob", "y"), b"{not json"),  # skipped whole: the sink dead-letters it
        bundle(1, 2, line("cid", "z")),
    ])
    assert list(split) == [message_key("p", "cid")]


def test_records_apply_each_message_once_whatever_the_replays() -> None:
    messages = [bundle(2, 10, line("ann", "x"), line("bob", "y")), bundle(2, 11, line("ann", "x"))]
    record = UserRecord("p", "ann")
    assert apply_messages(record, split_by_user(messages)[message_key("p", "ann")], config)
    assert (record.partition, record.offset, record.events) == (2, 11, 2)
    once = label_weights(record.state)
    assert once[0][0] == "x" and once[0][1] > 0
    # the same messages again (a replay after a crash or a rebalance): no change
    assert not apply_messages(record, split_by_user(messages)[message_key("p", "ann")], config)
    assert label_weights(record.state) == once and record.events == 2
