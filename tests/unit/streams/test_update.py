"""Source messages -> per-user actions -> records: bundles, flags, replays, bad messages."""

from __future__ import annotations

import random
from dataclasses import dataclass

import orjson

from services.shared.events import KEY_SEPARATOR, message_key
from services.shared.ranking import ModelConfig, label_weights
from services.shared.users import UserRecord
from streams.update import apply_messages, chunks, events_in, split_by_user


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


def apply_in_runs(messages: list[Msg], max_events: int) -> tuple[dict[bytes, bytes], int]:
    """What the agent does with a batch: each run split by user, applied to the records a
    store holds (here a dict), written back before the next run. Returns the store, runs."""
    store: dict[bytes, bytes] = {}
    runs = 0
    for run in chunks(messages, max_events, lambda m: m.value):
        runs += 1
        for key, entries in split_by_user(run).items():
            record = (UserRecord.decode(store[key]) if key in store
                      else UserRecord("p", key.decode().partition(KEY_SEPARATOR)[2]))
            entries.sort(key=lambda entry: entry.offset)
            if apply_messages(record, entries, config):
                store[key] = record.encode()
    return store, runs


def test_runs_keep_the_messages_order_and_hold_at_most_the_events_asked() -> None:
    sizes = [3, 1, 4, 1, 5, 9, 2, 6]  # events per message
    messages = [bundle(0, i, *[line(f"u{j}", "x") for j in range(n)]) for i, n in enumerate(sizes)]
    runs = list(chunks(messages, 6, lambda m: m.value))
    assert [m for run in runs for m in run] == messages  # every message once, in order
    assert [[events_in(m.value) for m in run] for run in runs] == [
        [3, 1], [4, 1], [5], [9], [2], [6]]  # 9 > 6: a run of its own
    assert list(chunks([], 6, lambda m: m.value)) == []


def test_a_batch_applied_in_runs_gives_the_records_of_one_run() -> None:
    """Users whose events are spread over many messages of their partition (a message
    holds one partition's users, as the gateway publishes), messages of a previous batch
    read again: applied in runs of a few events or all at once, every record is the same."""
    rng = random.Random(7)
    users = [[f"u{i}" for i in range(p, 40, 2)] for p in (0, 1)]  # partition -> its users
    messages = []
    offsets = [0, 0]
    for _ in range(60):
        partition = rng.randrange(2)
        lines_ = [line(rng.choice(users[partition]), rng.choice("abcdef"))
                  for _ in range(rng.randint(1, 12))]
        messages.append(bundle(partition, offsets[partition], *lines_))
        offsets[partition] += 1
    # a restart reads the first messages again (their offsets were not committed)
    messages = messages[:15] + messages
    whole, runs = apply_in_runs(messages, 10**9)
    assert runs == 1
    for max_events in (1, 7, 25):
        split, runs = apply_in_runs(messages, max_events)
        assert runs > 1
        assert split == whole, max_events
