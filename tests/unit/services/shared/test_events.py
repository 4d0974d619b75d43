from __future__ import annotations

import orjson
import pytest

from services.shared.events import (
    InvalidEvent,
    decode,
    decode_message,
    lines,
    message_key,
    partition_for,
)

GOOD = {"program_id": "p", "event_id": "e", "user_id": "u", "event_timestamp": "2026-01-01T00:00:00Z",
        "event_type": "view", "asset_id": "a", "labels": ["x"], "received_at": "2026-01-01T00:00:01Z",
        "queue_updates": False, "process_user_actions": True}


def test_decode_accepts_a_canonical_event() -> None:
    assert decode(orjson.dumps(GOOD)) == GOOD


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "empty"),
        (b"{not json", "not JSON"),
        (b"[1,2]", "not a JSON object"),
        (orjson.dumps({k: v for k, v in GOOD.items() if k != "user_id"}), "'user_id' is missing"),
        (orjson.dumps(GOOD | {"labels": "x"}), "'labels' is str"),
        (orjson.dumps(GOOD | {"labels": [1]}), "non-string"),
        (orjson.dumps(GOOD | {"queue_updates": "no"}), "'queue_updates' is str"),
    ],
)
def test_decode_says_what_is_wrong(raw: bytes | None, reason: str) -> None:
    with pytest.raises(InvalidEvent, match=reason):
        decode(raw)


def test_key_keeps_program_and_user_apart() -> None:
    assert message_key("p", "u") != message_key("pu", "")
    assert message_key("p", "u") == b"p\x1fu"


def test_a_message_holds_json_lines() -> None:
    raw = orjson.dumps(GOOD) + b"\n" + orjson.dumps(GOOD | {"asset_id": "b", "asset_labels": ["y"]})
    assert [e["asset_id"] for e in decode_message(raw)] == ["a", "b"]
    assert len(lines(raw)) == 2
    with pytest.raises(InvalidEvent, match="empty"):
        lines(b"")
    with pytest.raises(InvalidEvent, match="asset_labels"):
        decode(orjson.dumps(GOOD | {"asset_labels": "y"}))


# Kafka's own murmur2 test vectors (clients/src/test/.../UtilsTest.java), as signed ints.
@pytest.mark.parametrize(
    ("key", "murmur2"),
    [(b"21", -973932308), (b"foobar", -790332482), (b"a-little-bit-long-string", -985981536),
     (b"a-little-bit-longer-string", -1486304829), (b"abc", 479470107),
     (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971)],
)
def test_partition_for_is_kafkas_default_partitioner(key: bytes, murmur2: int) -> None:
    for partitions in (1, 4, 7, 100):
        assert partition_for(key, partitions) == (murmur2 & 0x7FFFFFFF) % partitions
