"""The letters the sink writes: reason, category, origin, and a replay's mark carried over."""

from __future__ import annotations

import pytest

from services.shared.settings import Settings
from services.sink.dlq import REPLAY_HEADER, REPLAY_OF, DeadLetters, Letter


class FakeMessage:
    def __init__(self, headers: list[tuple[str, bytes]] | None = None) -> None:
        self._headers = headers

    def value(self) -> bytes:
        return b"whole"

    def key(self) -> bytes:
        return b"k"

    def topic(self) -> str:
        return "events"

    def partition(self) -> int:
        return 2

    def offset(self) -> int:
        return 40

    def headers(self) -> list[tuple[str, bytes]] | None:
        return self._headers


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> tuple[DeadLetters, list[Letter]]:
    letters = DeadLetters(Settings(kafka_bootstrap="127.0.0.1:1"))
    out: list[Letter] = []
    monkeypatch.setattr(letters, "_produce", out.append)
    return letters, out


def test_a_letter_says_why_and_where_from(sent: tuple[DeadLetters, list[Letter]]) -> None:
    letters, out = sent
    letters.send(FakeMessage(), "field 'x' is missing", "invalid_event", value=b"line")  # type: ignore[arg-type]
    [(value, key, headers)] = out
    assert (value, key) == (b"line", b"k")
    assert headers == {"reason": b"field 'x' is missing", "category": b"invalid_event",
                       "source_topic": b"events", "source_partition": b"2",
                       "source_offset": b"40"}


def test_a_replayed_line_refused_again_keeps_its_replay_mark(
        sent: tuple[DeadLetters, list[Letter]]) -> None:
    letters, out = sent
    message = FakeMessage([(REPLAY_HEADER, b"0:7"), ("other", b"x")])
    letters.send(message, "ClickHouse refused the row", "clickhouse_refused")  # type: ignore[arg-type]
    assert out[0][0] == b"whole"
    assert out[0][2][REPLAY_OF] == b"0:7"
    assert "other" not in out[0][2]
