"""A worker's reads of a partition it does not serve (streams.reads.OwnedReads.copy): only
from a copy that holds the changelog partition's last record."""

import asyncio
from pathlib import Path

import pytest
from faust.types import TP

from services.shared.settings import Settings
from streams.app import create_app
from streams.reads import Moved, OwnedReads
from streams.store import LocalStates


class Ends:
    """The changelog's end offset as the broker would answer it (None: no answer)."""

    def __init__(self) -> None:
        self.end: int | None = 0
        self.asked = 0

    async def end_of(self, topic: str, partition: int) -> int | None:
        self.asked += 1
        return self.end


def test_a_copy_answers_only_while_it_holds_the_changelogs_last_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asyncio.run(_copies(tmp_path, monkeypatch))


async def _copies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(data_dir=tmp_path, agents_app_id="agents-test")
    monkeypatch.setattr("streams.app.Publisher", lambda _settings: None)  # no broker here
    app = create_app(settings)
    states = LocalStates(app.tables["user-state"], settings)
    reads = OwnedReads(app, states, settings)
    ends = Ends()
    monkeypatch.setattr(reads.ends, "end", ends.end_of)
    states.commit([(1, b"shop\x00u1", b"v1", True)], [(1, 41)])
    ends.end = 42  # the copy holds offset 41, the last record...
    with pytest.raises(Moved):  # ...but it may be a recovery's, part-way
        await reads.copy(1, b"shop\x00u1")
    standby_ends = app.tables.recovery.standby_highwaters  # type: ignore[attr-defined]
    standby_ends[TP(settings.topic_user_state, 1)] = 45  # a standby, not caught up yet
    with pytest.raises(Moved):
        await reads.copy(1, b"shop\x00u1")
    standby_ends[TP(settings.topic_user_state, 1)] = 41  # a standby that caught up
    assert await reads.copy(1, b"shop\x00u1") == b"v1"
    del standby_ends[TP(settings.topic_user_state, 1)]
    reads.was_serving = frozenset({1})  # served until the rebalance began
    assert await reads.copy(1, b"shop\x00u1") == b"v1"
    assert await reads.copy(1, b"shop\x00nobody") is None  # a complete copy: no such user
    for end in (43, None):  # the new owner wrote since, or the broker did not answer
        ends.end = end
        with pytest.raises(Moved):
            await reads.copy(1, b"shop\x00u1")
    with pytest.raises(Moved):
        await reads.copy(2, b"shop\x00u2")  # no copy of partition 2 here
    reads.serving = frozenset({1})  # the owner: its own store, the broker not asked
    asked = ends.asked
    assert await reads.copy(1, b"shop\x00u1") == b"v1" and ends.asked == asked


def test_what_was_served_when_a_rebalance_began_survives_a_rebalance_that_begins_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(data_dir=tmp_path, agents_app_id="agents-test")
    monkeypatch.setattr("streams.app.Publisher", lambda _settings: None)
    app = create_app(settings)
    reads = OwnedReads(app, LocalStates(app.tables["user-state"], settings), settings)
    reads.serving = frozenset({1, 2})
    reads._on_revoked(app, signal=None)
    assert (reads.serving, reads.was_serving) == (frozenset(), frozenset({1, 2}))
    reads._on_revoked(app, signal=None)  # again, before recovery ended: nothing served since
    assert reads.was_serving == frozenset({1, 2})


def test_owned_partitions_are_the_source_topics_not_fausts_leader_topics() -> None:
    """The group leader's assignor also holds partition 0 of Faust's ``__assignor-__leader``
    topic: counted, it made the leader serve (and answer reads of) a partition 0 it did not
    own."""
    from types import SimpleNamespace

    from streams.reads import owned_partitions

    actives = {TP("events", 2), TP("events", 3), TP("app-__assignor-__leader", 0),
               TP("app-user-state-changelog", 2)}
    app = SimpleNamespace(assignor=SimpleNamespace(assigned_actives=lambda: actives))
    assert owned_partitions(app, "events") == {2, 3}  # type: ignore[arg-type]
