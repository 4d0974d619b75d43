"""The Faust app as the agents worker builds it (no broker needed to build it)."""

from pathlib import Path

from services.shared.settings import Settings
from streams.app import create_app


def test_the_agents_datadir_lives_under_the_data_dir_even_when_it_does_not_exist_yet(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)  # Faust's default would be ./<app id>-data here
    monkeypatch.setattr("streams.app.Publisher", lambda _settings: None)  # no broker here
    data_dir = tmp_path / "fresh" / "data"
    app = create_app(Settings(data_dir=data_dir, agents_app_id="agents-test"))
    assert Path(app.conf.datadir) == data_dir / "agents" / "agents-test" / "0"
    assert Path(app.conf.datadir).is_dir()  # Faust itself makes only the last level
    assert not (tmp_path / "agents-test-data").exists()


def test_the_table_is_in_rocksdb_by_default_with_standbys_and_memory_as_settings(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr("streams.app.Publisher", lambda _settings: None)
    app = create_app(Settings(data_dir=tmp_path, agents_app_id="a"))
    store = app.tables["user-state"].data
    assert str(app.conf.store) == "rocksdb:"
    assert app.conf.table_standby_replicas == 0
    assert store.partition_path(3) == tmp_path / "agents/a/0/v1/tables/user-state-3.db"
    # one budget for all the worker's partitions (Faust's default: 2 GiB of cache each)
    assert store.rocksdb_options.cache.get_usage() == 0
    assert store.rocksdb_options.memtables.get_buffer_size() == 32 * 1024 * 1024

    app = create_app(Settings(data_dir=tmp_path, agents_app_id="b", agents_store="memory",
                              agents_standby_replicas=1))
    assert str(app.conf.store) == "memory:"
    assert app.conf.table_standby_replicas == 1
