"""Dead letters of erased users are left out of a replay: the pure parts."""

from __future__ import annotations

import orjson

from services.shared.erasures import Erasure
from services.sink.erased_letters import erased_users, is_erased, marker
from services.sink.letters import DeadLetter, Filter
from services.sink.replay import left_out, plan


def line(user: str, program: str = "shop") -> bytes:
    return orjson.dumps({
        "program_id": program, "event_id": "5b0f3f2d-8e11-4f5b-9a37-6f1d8a523c0e",
        "user_id": user, "event_timestamp": "2026-11-20T10:00:00Z", "event_type": "view",
        "asset_id": "a", "labels": [], "received_at": "2026-11-20T10:00:01Z",
        "queue_updates": True, "process_user_actions": True})


def letter(offset: int, value: bytes, source: tuple[int, int], ts: int = 1_000) -> DeadLetter:
    return DeadLetter(0, offset, ts, value, None, {
        "reason": b"ClickHouse refused the row", "source_topic": b"events",
        "source_partition": str(source[0]).encode(), "source_offset": str(source[1]).encode()})


def markers(*marks: tuple[bytes, bytes]) -> list[DeadLetter]:
    return [DeadLetter(0, i, 1, value, key) for i, (key, value) in enumerate(marks)]


def test_a_letter_of_an_erased_user_from_before_the_erasure_is_left_out() -> None:
    ann = Erasure.new("shop", "ann")
    key, value = marker(ann, 2, 50)
    assert b"ann" not in key and orjson.loads(value)["offset"] == 50
    erased = erased_users(markers((key, value), (b"junk", b"{")))
    assert list(erased) == [key.decode()]
    at_ms = erased[key.decode()][2]
    assert is_erased(letter(0, line("ann"), (2, 49)), erased)  # before it, same partition
    assert not is_erased(letter(1, line("ann"), (2, 51)), erased)  # the new user's
    assert not is_erased(letter(2, line("bob"), (2, 10)), erased)
    assert not is_erased(letter(3, line("ann", "other"), (2, 10)), erased)  # another program
    assert is_erased(letter(4, line("bob") + b"\n" + line("ann"), (2, 10)), erased)
    # another partition (the topic was repartitioned): the letter's time decides
    assert is_erased(letter(5, line("ann"), (0, 99), ts=at_ms - 1), erased)
    assert not is_erased(letter(6, line("ann"), (0, 1), ts=at_ms + 1), erased)
    assert not is_erased(letter(7, b"not json", (2, 1)), erased)
    # a later erasure of the same user wins (compaction keeps the last)
    later = erased_users(markers((key, value), marker(ann, 2, 80)))
    assert is_erased(letter(8, line("ann"), (2, 51)), later)


def test_a_replay_plan_counts_them_apart_and_replays_the_rest() -> None:
    erased = erased_users(markers(marker(Erasure.new("shop", "ann"), 2, 50)))
    letters = [letter(0, line("ann"), (2, 10)), letter(1, line("bob"), (2, 11)),
               letter(2, line("ann"), (2, 60))]
    got = plan(letters, {}, Filter(), "events", erased=lambda x: is_erased(x, erased))
    assert [s.letter.offset for s in got.steps] == [1, 2] and got.erased == 1
    assert left_out(got).endswith("1 of users erased since")
