"""User records: their changelog value round-trips, and costs what it holds when kept."""

from __future__ import annotations

import tracemalloc

from services.shared.ranking import UserState
from services.shared.users import UserRecord


def record(i: int) -> UserRecord:
    r = UserRecord("shop", f"user-{i}", partition=2, offset=40 + i, events=7)
    r.state = UserState(ref_ts=1.7e9, weights={f"label-{j}": 1.5 * j for j in range(12)},
                        recent=[(1.7e9 + k, f"sku-{k}") for k in range(10)])
    return r


def test_encode_round_trips() -> None:
    r = record(3)
    r.touch_session(1.7e9, 1800)
    back = UserRecord.decode(r.encode())
    assert (back.program_id, back.user_id, back.partition, back.offset, back.events) == (
        "shop", "user-3", 2, 43, 7)
    assert back.state.weights == r.state.weights and back.state.recent == r.state.recent
    assert (back.sessions, back.last_seen) == (1, 1.7e9)


def test_kept_values_cost_about_their_length() -> None:
    """The agents' table keeps one value per user: no allocator slack may ride along
    (orjson's own buffers are 4 KiB and more for a ~600-byte record)."""
    records = [record(i) for i in range(5_000)]
    tracemalloc.start()
    try:
        kept = [r.encode() for r in records]
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    payload = sum(map(len, kept))
    assert payload > 5_000 * 400
    assert held < 1.3 * payload, f"{held / len(kept):.0f} bytes held per {payload / len(kept):.0f}-byte record"


def test_a_position_set_on_the_bytes_equals_one_set_on_the_decoded_record() -> None:
    """A roll resets every carried record's source position without decoding it: the
    result must be the bytes that decoding, setting and encoding give, whatever the client
    called its user and labels."""
    tricky = ',"partition":5,"offset":9,"events":1,'
    cases = [record(1), record(2)]
    cases[1].user_id = tricky  # escaped in the JSON: no match inside it
    cases[1].state.weights = {"partition": 3.0, "offset": 1.0, "events": 2.0, tricky: 0.5}
    cases[1].seen = {11: 1_700_000_000, 12: 1_700_000_001}  # packed after the position
    cases[0].touch_session(1.7e9, 1800)
    for r in cases:
        raw = r.encode()
        expected = UserRecord.decode(raw)
        expected.partition, expected.offset = 3, -1
        assert UserRecord.with_position(raw, 3, -1) == (expected.encode(), r.events)
    # a value not in encode's layout is decoded and encoded
    odd = b'{"program_id":"shop","user_id":"u","ref_ts":0.0,"weights":{},"recent":[],' \
          b'"offset":4,"partition":1,"events":2}'
    value, events = UserRecord.with_position(odd, 0, -1)
    assert events == 2 and (UserRecord.decode(value).partition, UserRecord.decode(value).offset) == (0, -1)
