"""Store per topology: the schema applied (single) or only checked (the others), and the
settings of each insert, with a dedup token where replicas keep a dedup log."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest

from services.shared import clickhouse
from services.shared.clickhouse import Store, dedup_token, insert_settings
from services.shared.migrations import TOPOLOGIES, SchemaError
from services.shared.settings import Settings

SERVER = "http://default:pw@ch:8123/default"
CLUSTERS = {"replicated": "c", "sharded": "c"}


class FakeClient:
    """A ClickHouse server that has no ledger yet and records inserts."""

    def __init__(self) -> None:
        self.inserts: list[dict[str, Any]] = []
        self.closed = False

    def command(self, sql: str) -> int:
        assert sql.startswith("EXISTS TABLE"), f"a check must not change the schema: {sql}"
        return 0

    def raw_insert(self, table: str, insert_block: bytes, fmt: str, settings: dict[str, Any]) -> None:
        self.inserts.append(settings)

    def close(self) -> None:
        self.closed = True


def _server(topology: str, monkeypatch: pytest.MonkeyPatch, checked: bool = True) -> tuple[Settings, FakeClient]:
    client = FakeClient()
    monkeypatch.setattr(clickhouse, "connect", lambda dsn: client)
    if checked:  # the schema is current
        monkeypatch.setattr(clickhouse, "prepare_schema", lambda client, settings: [])
    settings = Settings(clickhouse_url=SERVER, clickhouse_topology=topology,
                        clickhouse_cluster=CLUSTERS.get(topology))
    return settings, client


def test_every_insert_setting_exists_in_clickhouse(tmp_path: Path) -> None:
    """A misspelt setting is refused by the server; chDB knows ClickHouse 26's names."""
    client = clickhouse_connect.get_client(dsn=f"chdb://{tmp_path}")
    try:
        names = {r[0] for r in client.query("SELECT name FROM system.settings").result_rows}
    finally:
        client.close()
    for topology in TOPOLOGIES:
        assert set(insert_settings(topology)) <= names, topology
    assert "insert_deduplication_token" in names


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_insert_settings_per_topology(topology: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings, client = _server(topology, monkeypatch)
    store = Store(settings)
    store.insert_json_rows("events", b'{"a":1}\n{"a":2}')
    store.insert_json_rows("events", b'{"a":1}\n{"a":2}')  # a retry of the same insert
    store.insert_json_rows("events", b'{"a":1}')  # half of it, to isolate a bad row
    first, retry, half = client.inserts
    assert first["async_insert"] == 0
    assert ("distributed_foreground_insert" in first) == (topology == "sharded")
    if topology == "single":  # a plain MergeTree keeps no dedup log: exactly as before
        assert "insert_deduplication_token" not in first
    else:
        assert first["insert_deduplication_token"] == retry["insert_deduplication_token"]
        assert half["insert_deduplication_token"] != first["insert_deduplication_token"]


def test_the_token_names_the_table_and_the_bytes() -> None:
    assert dedup_token("events", b"x") != dedup_token("assets", b"x")
    assert dedup_token("events", b"x") == dedup_token("events", b"x") != dedup_token("events", b"y")


@pytest.mark.parametrize("topology", ["replicated", "sharded", "cloud"])
def test_production_topologies_refuse_to_open_behind_and_change_nothing(
        topology: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings, client = _server(topology, monkeypatch, checked=False)
    with pytest.raises(SchemaError, match="lacks migrations 0001_events, 0002_") as failed:
        Store(settings)
    assert "`sluice migrate`" in str(failed.value)
    assert client.closed


def test_embedded_chdb_is_single_only(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, clickhouse_topology="sharded", clickhouse_cluster="c")
    with pytest.raises(SchemaError, match="needs a ClickHouse server"):
        Store(settings)
    assert not (tmp_path / "clickhouse").exists()  # refused before opening anything


def test_the_embedded_default_migrates_itself_and_reopens_without_work(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    store = Store(settings)
    try:
        store.insert_json_rows("assets", b'{"program_id":"p","asset_id":"a","labels":["x"],'
                               b'"attributes":"{}","updated_at":"2026-01-01T00:00:00Z","deleted":0}')
        recorded = store.query("SELECT name, applied_at FROM sluice_migrations ORDER BY name")
    finally:
        store.close()
    assert len(recorded) == len(list(settings.ddl_dir.glob("*.sql")))
    store = Store(settings)
    try:
        assert store.query("SELECT name, applied_at FROM sluice_migrations ORDER BY name") == recorded
        assert store.query("SELECT count() AS n FROM assets FINAL") == [{"n": 1}]
    finally:
        store.close()
