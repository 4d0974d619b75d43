"""What embedded ClickHouse (chDB) holds in `sluice up`'s own memory, on /metrics.

chDB runs inside `sluice up`, so its memory is part of that process' RSS, and an hour of
load grew that RSS by tens of MiB with nothing in Python's heap to show for it (docs/
benchmarks.md, the soak). ClickHouse counts what its allocator holds (``MemoryTracking``)
and what its caches hold (marks, uncompressed blocks) in ``system.metrics``, and the
primary keys it keeps in memory in ``system.parts``: read at scrape time, so a growing RSS
can be told apart from a growing ClickHouse. Only for the embedded store: a ClickHouse
server's memory is its own process' (its own /metrics).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Protocol

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

log = logging.getLogger(__name__)

# system.metrics name -> this metric's ``what`` label
METRICS = {"MemoryTracking": "tracked", "MarkCacheBytes": "mark_cache",
           "UncompressedCacheBytes": "uncompressed_cache",
           "PrimaryIndexCacheBytes": "primary_index_cache",
           "QueryCacheBytes": "query_cache"}


class Queryable(Protocol):
    def query(self, sql: str) -> list[dict[str, object]]: ...


class ClickHouseMemory(Collector):
    def __init__(self, store: Queryable) -> None:
        self.store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "sluice_clickhouse_memory_bytes", "Embedded ClickHouse (chDB, inside sluice up): "
            "bytes its allocator tracks (tracked), its caches hold, and the parts' primary "
            "keys in memory (primary_keys); read at scrape time.", labels=["what"])
        try:
            names = ", ".join(f"'{name}'" for name in METRICS)
            rows = self.store.query(f"SELECT metric, value FROM system.metrics "
                                    f"WHERE metric IN ({names})")
            keys = self.store.query("SELECT sum(primary_key_bytes_in_memory_allocated) AS b "
                                    "FROM system.parts WHERE active")
        except Exception as exc:  # noqa: BLE001 - a scrape must not fail for this
            log.debug("chDB memory not read: %s", exc)
            return
        for row in rows:
            family.add_metric([METRICS[str(row["metric"])]], _number(row["value"]))
        family.add_metric(["primary_keys"], _number(keys[0]["b"]) if keys else 0.0)
        yield family


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def register(store: Queryable) -> None:
    """Once per process (a restart of the broker keeps the Store)."""
    REGISTRY.register(ClickHouseMemory(store))
