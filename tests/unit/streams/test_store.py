"""The agents' local store (streams.store) on a real RocksDB, without a broker."""

from pathlib import Path
from types import SimpleNamespace

import pytest
from faust.types import TP

from services.shared.settings import Settings
from streams.app import create_app
from streams.slots import Slot, app_dir, reset_local_state, store_bytes
from streams.store import LocalStates


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, agents_app_id="agents-test")


def test_each_worker_claims_its_own_slot_and_a_released_one_is_claimed_again(
    settings: Settings,
) -> None:
    first, second = Slot.claim(settings), Slot.claim(settings)
    assert (first.path.name, second.path.name) == ("0", "1")
    assert first.path.parent == app_dir(settings) == settings.data_dir / "agents" / "agents-test"
    first.release()  # the worker of slot 0 died: its restart gets its own store back
    again = Slot.claim(settings)
    assert again.path == first.path
    again.release()
    second.release()


def test_a_rolls_next_worker_never_takes_the_store_its_predecessor_left(
    settings: Settings,
) -> None:
    """The roll reads the old worker's store once it stopped (streams.slots.stored_users);
    the next worker, started meanwhile, must neither take it nor its offsets."""
    old = Slot.claim(settings)
    (old.path / "x").write_bytes(b"old")
    old.release()  # the old worker is killed before the next one claims a slot
    fresh = Slot.claim(settings, fresh=True)
    assert fresh.path != old.path and list(fresh.path.iterdir()) == [fresh.path / ".lock"]
    fresh.release()


def test_reset_removes_only_the_stores_no_live_worker_holds(settings: Settings) -> None:
    held, free = Slot.claim(settings), Slot.claim(settings)
    (free.path / "x").write_bytes(b"1" * 100)
    free.release()
    assert store_bytes(settings) == 100
    assert reset_local_state(settings) == 1
    assert held.path.is_dir() and not free.path.exists()
    held.release()
    assert reset_local_state(settings) == 1 and store_bytes(settings) == 0


def _states(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> tuple[LocalStates, object]:
    monkeypatch.setattr("streams.app.Publisher", lambda _settings: None)  # no broker here
    app = create_app(settings)
    table = app.tables["user-state"]
    return LocalStates(table, settings), table


def test_a_commit_writes_the_records_and_the_changelog_offset_faust_recovers_from(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    states, table = _states(settings, monkeypatch)
    assert states.get(1, b"shop\x00u1") is None
    states.commit([(1, b"shop\x00u1", b"v1", True), (2, b"shop\x00u2", b"v2", True),
                   (1, b"shop\x00u3", b"v3", True)], [(1, 40), (2, 7), (1, 41)])
    assert states.get(1, b"shop\x00u1") == b"v1" and states.get(2, b"shop\x00u2") == b"v2"
    assert states.get(2, b"shop\x00u1") is None  # each user is in its partition's database
    changelog = table.changelog_topic.get_topic_name()  # type: ignore[attr-defined]
    store = table.data  # type: ignore[attr-defined]
    assert store.persisted_offset(TP(changelog, 1)) == 41
    assert store.persisted_offset(TP(changelog, 2)) == 7
    assert store.persisted_offset(TP(changelog, 0)) is None  # nothing: recover it all
    assert states.users([1, 2]) == 3
    assert store.rocksdb_options.memtables.get_usage() > 0  # charged to the worker's budget
    states.commit([(1, b"shop\x00u1", b"v1'", False)], [(1, 42)])  # an update: no new user
    assert states.users([1, 2]) == 3 and states.get(1, b"shop\x00u1") == b"v1'"
    assert store.persisted_offset(TP(changelog, 1)) == 42


def test_recovered_records_land_with_their_offset_and_count_each_user_once(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    states, table = _states(settings, monkeypatch)
    states.commit([(0, b"a", b"1", True)], [(0, 3)])

    def record(offset: int, key: bytes, value: bytes) -> SimpleNamespace:
        return SimpleNamespace(message=SimpleNamespace(partition=0, offset=offset, key=key,
                                                       value=value))

    # Faust's recovery: through the table, as it calls it (a known user, a new one twice)
    table.apply_changelog_batch([record(4, b"a", b"2"), record(5, b"b", b"1"),  # type: ignore[attr-defined]
                                 record(6, b"b", b"2")])
    changelog = table.changelog_topic.get_topic_name()  # type: ignore[attr-defined]
    assert table.data.persisted_offset(TP(changelog, 0)) == 6  # type: ignore[attr-defined]
    assert (states.get(0, b"a"), states.get(0, b"b")) == (b"2", b"2")
    assert states.users([0]) == 2
    assert store_bytes(settings) > 0


def test_memory_keeps_records_without_offsets(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.agents_store = "memory"
    states, table = _states(settings, monkeypatch)
    states.commit([(1, b"k", b"v", True)], [(1, 5)])
    assert states.get(1, b"k") == b"v" and states.users([1]) == 1
    changelog = table.changelog_topic.get_topic_name()  # type: ignore[attr-defined]
    assert table.data.persisted_offset(TP(changelog, 1)) is None  # type: ignore[attr-defined]


def test_a_partition_lost_at_an_assignment_stays_readable_and_comes_back_without_a_wait(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Faust drops a lost partition's database at an assignment; its copy stays readable
    (reads while the partition moves) and is Faust's own handle again if it comes back."""
    states, table = _states(settings, monkeypatch)
    states.commit([(1, b"shop\x00u1", b"v1", True)], [(1, 41)])
    store = table.data  # type: ignore[attr-defined]
    changelog = table.changelog_topic.get_topic_name()  # type: ignore[attr-defined]
    held = store._dbs[1]
    store.revoke_partitions(table, {TP(changelog, 1)})  # as Faust's on_rebalance calls it
    assert 1 not in store._dbs
    assert states.copy_offset(1) == 41 and states.copy_get(1, b"shop\x00u1") == b"v1"
    assert states.copy_offset(3) is None  # never held here: no copy
    assert store._db_for_partition(1) is held  # back: the same handle, no lock to wait for
    assert states.copy_offset(1) == 41 and not states.kept
    store.revoke_partitions(table, set())  # the next assignment: what was kept is let go
    assert states.kept == {}


def test_a_stopping_worker_keeps_its_copies_readable_after_faust_stops_the_table(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    states, table = _states(settings, monkeypatch)
    states.commit([(2, b"shop\x00u2", b"v2", True)], [(2, 9)])
    asyncio.run(table.data.stop())  # type: ignore[attr-defined]
    assert table.data._dbs == {}  # type: ignore[attr-defined]
    assert states.copy_offset(2) == 9 and states.copy_get(2, b"shop\x00u2") == b"v2"
