"""Embedded ClickHouse's memory on `sluice up`'s /metrics: read from chDB itself."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from services.shared.clickhouse import Store
from services.shared.clickhouse_memory import ClickHouseMemory
from services.shared.settings import Settings


def test_chdb_memory_tracked_and_primary_keys_grow_with_what_it_holds(tmp_path: Path) -> None:
    store = Store(Settings(data_dir=tmp_path))
    try:
        def sampled() -> dict[str, float]:
            [family] = ClickHouseMemory(store).collect()
            return {s.labels["what"]: s.value for s in family.samples}

        before = sampled()
        store.command("CREATE TABLE t (a UInt64, s String) ENGINE = MergeTree ORDER BY a")
        store.command("INSERT INTO t SELECT number, toString(number) FROM numbers(2000000)")
        assert store.query("SELECT count() AS n FROM t WHERE a % 7 = 1")[0]["n"] == 285715
        after = sampled()
        assert after["tracked"] > 0 and "mark_cache" in after, after
        assert after["primary_keys"] > before["primary_keys"], (before, after)
        registry = CollectorRegistry()  # and it renders as a labelled gauge
        registry.register(ClickHouseMemory(store))
        assert b'sluice_clickhouse_memory_bytes{what="tracked"}' in generate_latest(registry)
    finally:
        store.close()


def test_a_store_that_cannot_answer_gives_no_sample_and_no_error() -> None:
    class Broken:
        def query(self, sql: str) -> list[dict[str, object]]:
            raise RuntimeError("closed")

    assert list(ClickHouseMemory(Broken()).collect()) == []
