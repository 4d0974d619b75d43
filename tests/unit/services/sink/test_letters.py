"""Dead letters read back, without a broker: categories, programs, filters, the summary."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from services.sink.letters import DeadLetter, Filter, excerpt, parse_time, summarize

T0 = datetime(2026, 12, 5, 3, 0, tzinfo=UTC)


def letter(offset: int, value: bytes = b"", reason: str = "field 'user_id' is missing",
           category: str | None = "invalid_event", at: datetime = T0, **headers: bytes) -> DeadLetter:
    all_headers = {"reason": reason.encode()} | headers
    if category is not None:
        all_headers["category"] = category.encode()
    return DeadLetter(0, offset, int(at.timestamp() * 1000), value, None, all_headers)


def line(**fields: object) -> bytes:
    return orjson.dumps({"program_id": "p", "user_id": "u"} | fields)


def test_category_from_the_header_else_from_the_reason() -> None:
    assert letter(0, category="clickhouse_refused").category == "clickhouse_refused"
    assert letter(0, reason="ClickHouse refused the row: Code: 27", category=None).category == \
        "clickhouse_refused"
    assert letter(0, reason="empty message (tombstone) on the events topic",
                  category=None).category == "empty"
    assert letter(0, reason="asset field 'labels' is missing", category=None).category == \
        "invalid_asset"
    assert letter(0, reason="not JSON: unexpected character", category=None).category == \
        "invalid_event"


def test_program_only_where_the_line_names_one() -> None:
    assert letter(0, line(program_id="shop")).program == "shop"
    assert letter(0, b"{not json").program is None
    assert letter(0, b"[1, 2]").program is None
    assert letter(0, orjson.dumps({"program_id": 7})).program is None
    assert letter(0, line(program_id="a") + b"\n" + line(program_id="b")).program == "a"


def test_filter_times_program_and_reason() -> None:
    early, late = letter(0, at=T0), letter(1, at=T0 + timedelta(hours=1))
    assert [x.offset for x in (early, late) if Filter(since=T0 + timedelta(minutes=1))(x)] == [1]
    assert [x.offset for x in (early, late) if Filter(until=T0 + timedelta(hours=1))(x)] == [0]
    assert Filter(since=T0)(early)  # since is inclusive
    shop = letter(2, line(program_id="shop"))
    assert Filter(program="shop")(shop) and not Filter(program="shop")(early)
    refused = letter(3, reason="ClickHouse refused the row: Code: 27", category="clickhouse_refused")
    assert Filter(reason="clickhouse_refused")(refused)
    assert Filter(reason="code: 27")(refused)  # part of the reason, any case
    assert not Filter(reason="clickhouse_refused")(early)


def test_parse_time_naive_is_utc() -> None:
    assert parse_time("2026-12-05T03:00") == T0
    assert parse_time("2026-12-05T03:00:00Z") == T0
    assert parse_time("2026-12-05T04:00:00+01:00") == T0
    with pytest.raises(ValueError):
        parse_time("yesterday")


def test_summary_groups_by_category_and_program_with_time_range() -> None:
    letters = [
        letter(0, line(program_id="a"), at=T0),
        letter(1, line(program_id="a"), at=T0 + timedelta(minutes=5)),
        letter(2, b"{bad", reason="not JSON", at=T0 + timedelta(minutes=1)),
        letter(3, line(program_id="a"), category="clickhouse_refused", reason="ClickHouse refused"),
    ]
    groups = summarize(letters, replayed=lambda x: x.ref == "0:1")
    assert [(g.category, g.program, g.letters, g.replayed) for g in groups] == [
        ("invalid_event", "a", 2, 1), ("clickhouse_refused", "a", 1, 0),
        ("invalid_event", None, 1, 0)]
    assert (groups[0].first, groups[0].last) == (T0, T0 + timedelta(minutes=5))
    assert groups[0].example == "field 'user_id' is missing"


def test_excerpt_is_one_short_line() -> None:
    assert excerpt(b"a\nb") == "a\\nb"
    assert len(excerpt(b"x" * 500, 40)) == 40
