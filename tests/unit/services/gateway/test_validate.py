from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta, timezone

import msgspec
import orjson
import pytest
from fastapi.exceptions import RequestValidationError

from services.gateway.validate import new_event_ids, parse_event_list


def body(*events: dict) -> bytes:
    return orjson.dumps({"events": list(events)})


GOOD = {"user_id": "u", "event_timestamp": "2026-01-02T03:04:05+02:00", "event_type": "view",
        "asset_id": "a", "labels": ["x"]}


def test_good_event_parses_with_an_aware_datetime() -> None:
    [event] = parse_event_list(body(GOOD))
    assert event.event_timestamp == datetime(2026, 1, 2, 1, 4, 5, tzinfo=UTC)
    assert event.event_timestamp.utcoffset() == timedelta(hours=2)
    assert event.labels == ["x"] and event.user_id == "u"


def test_unknown_fields_are_ignored() -> None:
    [event] = parse_event_list(body(GOOD | {"extra": 1, "received_at": 5}))
    assert msgspec.structs.asdict(event) == msgspec.structs.asdict(parse_event_list(body(GOOD))[0])


def test_pydantics_path_gives_the_same_events_as_msgspecs() -> None:
    """A timestamp msgspec refuses but pydantic accepts (no seconds) takes the slow path;
    both paths give ApiEvents with aware timestamps."""
    [fast] = parse_event_list(body(GOOD | {"event_timestamp": "2026-01-02T03:04:00"}))
    [slow] = parse_event_list(body(GOOD | {"event_timestamp": "2026-01-02T03:04"}))
    assert type(fast) is type(slow)
    assert fast.event_timestamp == slow.event_timestamp == datetime(2026, 1, 2, 3, 4, tzinfo=UTC)


def test_errors_name_every_bad_field_in_fastapi_shape() -> None:
    with pytest.raises(RequestValidationError) as info:
        parse_event_list(body(GOOD, GOOD | {"user_id": 5, "labels": [None]}))
    errors = info.value.errors()
    assert [e["loc"] for e in errors] == [
        ["body", "events", 1, "user_id"], ["body", "events", 1, "labels", 0]]
    assert all(set(e) == {"loc", "msg", "type"} for e in errors)


def test_timestamp_outside_clickhouse_range_is_refused() -> None:
    with pytest.raises(RequestValidationError) as info:
        parse_event_list(body(GOOD | {"event_timestamp": "2400-01-01T00:00:00Z"}))
    assert "1900" in info.value.errors()[0]["msg"]


def test_naive_timestamp_means_utc() -> None:
    [event] = parse_event_list(body(GOOD | {"event_timestamp": "2026-01-02T03:04:05"}))
    assert event.event_timestamp == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_event_ids_are_distinct_version_4_uuids() -> None:
    ids = new_event_ids(500)
    assert len(set(ids)) == 500
    for s in ids:
        parsed = uuid.UUID(s)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        assert str(parsed) == s
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", s)


def test_offsets_survive_to_the_wire() -> None:
    from services.shared.events import encode

    tz = timezone(timedelta(hours=-5))
    wire = orjson.loads(encode({"t": datetime(2026, 1, 1, 12, tzinfo=tz), "n": datetime(2026, 1, 1)}))
    assert wire == {"t": "2026-01-01T12:00:00-05:00", "n": "2026-01-01T00:00:00Z"}


@pytest.mark.parametrize("ts", ["2026-01-02T03:04:05Z", "2026-01-02T03:04:05.000120+02:00",
                                "2026-01-02T03:04:05", "2026-01-02T03:04:05.5-05:30"])
def test_actionhubs_wire_lines_are_what_the_dialects_path_writes(ts: str) -> None:
    """ActionHub's Structs (msgspec) and the dialects' dicts (orjson) become the same bytes."""
    from services.gateway.ingest import _api_lines, _canonical_lines

    raw = GOOD | {"event_timestamp": ts, "labels": ["ünï", "a\"b\n"]}
    [event] = parse_event_list(body(raw))
    as_dict = msgspec.structs.asdict(event)
    tail = b',"program_id":"p"}'
    labels = {"a": ["shoes", "red"]}.get
    [(user, fast)] = _api_lines([event], ["id-1"], lambda a: labels(a) or [], tail, "p\x1fs\x1f")
    del as_dict["event_id"]  # None: the client gave none
    as_dict["event_id"] = "id-1"  # as a dialect that made up the client's id gives it
    [(_, slow)] = _canonical_lines([as_dict], lambda a: labels(a) or [], tail, "p\x1fs\x1f")
    assert user == "u" and fast == slow
    assert orjson.loads(fast) == {**raw, "event_timestamp": orjson.loads(orjson.dumps(
        as_dict["event_timestamp"], option=orjson.OPT_UTC_Z)), "event_id": "id-1",
        "asset_labels": ["shoes", "red"], "program_id": "p"}


def test_a_client_event_id_gives_the_same_event_id_on_both_paths_and_on_a_retry() -> None:
    """ActionHub's optional event_id: carried as client_event_id, and the event_id derived
    from (program, dialect, id) is the one the dialects' path derives: a retry collapses."""
    from services.gateway.ingest import _api_lines, _canonical_lines

    tail = b',"program_id":"p"}'
    lines = []
    for server_id in ("id-1", "id-2"):  # the retry gets other fresh ids from the server
        [event] = parse_event_list(body(GOOD | {"event_id": "click-42"}))
        [(_, fast)] = _api_lines([event], [server_id], lambda a: [], tail, "p\x1factionhub\x1f")
        lines.append(orjson.loads(fast))
    as_dict = GOOD | {"client_event_id": "click-42", "labels": list(GOOD["labels"])}
    [(_, slow)] = _canonical_lines([as_dict], lambda a: [], tail, "p\x1factionhub\x1f")
    first, retry = lines
    assert first["client_event_id"] == retry["client_event_id"] == "click-42"
    assert first["event_id"] == retry["event_id"] == orjson.loads(slow)["event_id"]
    assert first["event_id"] not in ("id-1", "id-2")
    other = parse_event_list(body(GOOD | {"event_id": "click-43"}))
    [(_, line)] = _api_lines(other, ["id-4"], lambda a: [], tail, "p\x1factionhub\x1f")
    assert orjson.loads(line)["event_id"] != first["event_id"]


def test_the_dialects_path_gives_each_event_its_own_event_id() -> None:
    """A client's id -> the derived event_id; a made-up one's event_id kept; the others
    fresh random ones, each its own, wherever they stand in the request."""
    from services.gateway.ingest import _canonical_lines, client_event_uuid

    events = [GOOD | {"n": 0}, GOOD | {"event_id": "kept", "client_event_id": "made-up"},
              GOOD | {"client_event_id": "c-1"}, GOOD | {"n": 3}, GOOD | {"n": 4}]
    lines = [orjson.loads(line) for _, line in _canonical_lines(
        events, lambda a: [], b',"program_id":"p"}', "p\x1fs\x1f")]
    ids = [line["event_id"] for line in lines]
    assert ids[1] == "kept" and ids[2] == client_event_uuid("p\x1fs\x1fc-1")
    fresh = [uuid.UUID(ids[i]) for i in (0, 3, 4)]
    assert [u.version for u in fresh] == [4, 4, 4] and len(set(ids)) == 5


def test_a_null_event_id_is_no_id() -> None:
    [event] = parse_event_list(body(GOOD | {"event_id": None}))
    assert event == parse_event_list(body(GOOD))[0] and event.event_id is None


@pytest.mark.parametrize("bad", [5, "", "x" * 257, ["a"]])
def test_a_bad_event_id_is_refused_naming_it(bad: object) -> None:
    with pytest.raises(RequestValidationError) as info:
        parse_event_list(body(GOOD | {"event_id": bad}))
    assert any(e["loc"][-1] == "event_id" for e in info.value.errors()), info.value.errors()


@pytest.mark.parametrize("name", ["", "p\x1factionhub\x1fclick-42", "ünï €" * 30, "x" * 600])
def test_client_event_uuid_is_uuid5_of_the_namespace(name: str) -> None:
    import uuid

    from services.gateway.ingest import CLIENT_ID_NAMESPACE, client_event_uuid

    assert client_event_uuid(name) == str(uuid.uuid5(CLIENT_ID_NAMESPACE, name))


def test_a_forked_child_draws_random_bytes_of_its_own() -> None:
    """uvicorn's workers are forked after the pool was filled: their ids must differ."""
    import os

    from services.gateway.validate import _RANDOM

    _RANDOM.take(16)  # the parent's pool is filled before the fork
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next bytes, to the parent, then out without cleanup
        os.write(write, _RANDOM.take(16))
        os._exit(0)
    os.close(write)
    child = os.read(read, 16)
    os.waitpid(pid, 0)
    assert len(child) == 16 and child != _RANDOM.take(16)


def test_a_forked_child_hands_out_ready_ids_of_its_own() -> None:
    """The ready-made ids too (a single event's): a child never repeats its parent's."""
    import os

    from services.gateway.validate import made_up_ids, new_event_ids

    new_event_ids(1)  # the parent's ready ids are made before the fork
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, ",".join(new_event_ids(3) + list(made_up_ids())).encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 4096).decode().split(",")
    os.waitpid(pid, 0)
    parent = new_event_ids(3) + list(made_up_ids())
    assert len(child) == 5 and not set(child) & set(parent)
    assert not {i[15:] for i in child} & {i[15:] for i in parent}
