"""An erasure among the agents' source messages: the user's record is forgotten (weights,
sessions, counts, client ids), a tombstone when nothing follows it, a new user's record when
events do; replays change nothing; the store drops the key, on commit and on recovery."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest
from faust.types import TP

from services.shared.erasures import Erasure
from services.shared.events import message_key
from services.shared.ranking import ModelConfig, label_weights
from services.shared.settings import Settings
from services.shared.users import UserRecord
from streams.app import create_app
from streams.store import LocalStates
from streams.update import apply_messages, erased, events_in, split_by_user

ANN = message_key("p", "ann")


@dataclass
class Msg:
    partition: int
    offset: int
    value: bytes


def line(user: str, label: str, client_id: str | None = None) -> bytes:
    event = {"program_id": "p", "user_id": user, "event_timestamp": "2026-11-20T10:00:00Z",
             "event_type": "purchase", "asset_id": f"a-{label}", "labels": [label],
             "process_user_actions": True, "update_session": True,
             "event_id": "0000000a-0000-4000-8000-000000000001" if client_id else
             "0000000b-0000-4000-8000-000000000002",
             "received_at": "2026-11-20T10:00:00Z", "source": "posthog"}
    if client_id:
        event["client_event_id"] = client_id
    return orjson.dumps(event)


def wipe(offset: int, user: str = "ann") -> Msg:
    return Msg(0, offset, Erasure.new("p", user).encode())


def run(record: UserRecord, messages: list[Msg]) -> tuple[bool, bool]:
    entries = split_by_user(messages)[ANN]
    entries.sort(key=lambda e: e.offset)
    changed = apply_messages(record, entries, lambda _p: ModelConfig())
    return changed, erased(record, entries)


def test_an_erasure_forgets_everything_and_is_a_tombstone_when_nothing_follows() -> None:
    record = UserRecord("p", "ann")
    assert run(record, [Msg(0, 1, line("ann", "x", "c1")), Msg(0, 2, line("ann", "y"))]) == (
        True, False)
    assert record.events == 2 and record.sessions == 1 and record.seen
    split = split_by_user([Msg(0, 3, line("bob", "z")), wipe(4)])
    assert [(e.offset, e.erase, e.actions) for e in split[ANN]] == [(4, True, [])]
    assert len(split[message_key("p", "bob")][0].actions) == 1  # other users: as ever
    assert run(record, [wipe(4)]) == (True, True)
    assert record == UserRecord("p", "ann", partition=0, offset=4)  # nothing of the user left
    assert record.encode() == UserRecord("p", "ann", partition=0, offset=4).encode()
    assert events_in(wipe(5).value) == 1  # (the agent's metric leaves erasures out)


def test_events_after_the_erasure_are_a_new_users_even_a_retried_client_id() -> None:
    record = UserRecord("p", "ann")
    run(record, [Msg(0, 1, line("ann", "x", "c1")), Msg(0, 2, line("ann", "x", "c1"))])
    assert record.events == 1  # the retry counted once
    changed, tombstone = run(record, [Msg(0, 3, line("ann", "old")), wipe(4),
                                      Msg(0, 5, line("ann", "x", "c1"))])
    assert (changed, tombstone) == (True, False)
    assert record.events == 1 and record.sessions == 1  # c1 again: new user, counts once
    assert [label for label, _ in label_weights(record.state)] == ["x"]
    assert (record.partition, record.offset) == (0, 5)
    # a replay of all of it (crash before the commit) changes nothing
    assert run(record, [Msg(0, 3, line("ann", "old")), wipe(4),
                        Msg(0, 5, line("ann", "x", "c1"))]) == (False, False)
    assert record.events == 1


def test_a_malformed_erasure_is_skipped_like_a_malformed_event() -> None:
    split = split_by_user([Msg(0, 1, b'{"sluice_erasure":1,"program_id":"p"}'),
                           Msg(0, 2, line("ann", "x"))])
    assert [(e.offset, e.erase) for e in split[ANN]] == [(2, False)]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, agents_app_id="agents-test")


@pytest.mark.parametrize("kind", ["rocksdb", "memory"])
def test_a_tombstone_removes_the_user_from_the_store_and_its_count(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    settings.agents_store = kind
    monkeypatch.setattr("streams.app.Publisher", lambda _settings: None)  # no broker here
    table = create_app(settings).tables["user-state"]
    states = LocalStates(table, settings)
    states.commit([(0, b"a", b"1", True), (0, b"b", b"1", True)], [(0, 3), (0, 4)])
    states.commit([(0, b"a", None, False), (0, b"never", None, False)], [(0, 5), (0, 6)])
    assert (states.get(0, b"a"), states.get(0, b"b"), states.get(0, b"never")) == (None, b"1", None)
    assert states.users([0]) == 1
    if kind == "memory":
        return
    changelog = table.changelog_topic.get_topic_name()  # type: ignore[attr-defined]
    assert table.data.persisted_offset(TP(changelog, 0)) == 6  # type: ignore[attr-defined]

    def record(offset: int, key: bytes, value: bytes | None) -> SimpleNamespace:
        return SimpleNamespace(message=SimpleNamespace(partition=0, offset=offset, key=key,
                                                       value=value))

    # recovery reads the changelog: a record, then its tombstone: the tombstone wins
    table.apply_changelog_batch([record(7, b"c", b"1"), record(8, b"b", None),  # type: ignore[attr-defined]
                                 record(9, b"c", None)])
    assert (states.get(0, b"b"), states.get(0, b"c")) == (None, None)
    assert states.users([0]) == 0
