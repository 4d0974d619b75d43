"""Sink throughput against the ceiling it sits on: a raw ClickHouse insert of the same rows.

The raw insert is what the sink does at best (one JSONEachRow insert per 50,000 rows),
minus Kafka and the per-message checks, so sink/raw says how much the sink's own work
costs. Both run in this process on one chDB Store (chDB allows one process per path):
raw rows go to a second table with the same DDL. The raw insert is timed before and
after the sink, and the sink is compared with both together: this box's speed drifts.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path

from confluent_kafka import Producer

from bench.payload import Messages, event_count, wire_batches, wire_headers
from bench.procs import peak_rss_mib, reset_peak_rss
from services.shared.clickhouse import Store
from services.shared.kafka import ensure_topics, produce_waiting, producer_config
from services.shared.settings import Settings
from services.sink.consume import Sink

RAW_TABLE = "events_raw"
CHUNK = 50_000


@dataclass
class SinkResult:
    rows: int
    raw_insert_s: tuple[float, float]  # all N rows, before and after the sink ran
    prefill_s: float
    sink_total_s: float  # sink thread start -> count reached N (includes the group join)
    sink_first_rows_s: float  # start -> first rows visible (group join + first batch)
    sink_steady_s: float  # first batch visible -> last full batch visible
    sink_steady_rows: int  # rows inserted in that span
    sink_batches: list[int]  # rows each insert added, as seen by the count
    bench_peak_rss_mib: float

    @property
    def raw_rows_per_s(self) -> float:
        """Both raw passes together: the baseline from before and after the sink."""
        return 2 * self.rows / sum(self.raw_insert_s)

    @property
    def sink_rows_per_s(self) -> float:
        """Rows/s from the first to the last full batch: the sink's rate, neither the group
        join's wait nor the batch timer the last, partial batch waits on (1 s by default)."""
        return self.sink_steady_rows / self.sink_steady_s if self.sink_steady_s else 0.0

    @property
    def ratio(self) -> float:
        return self.sink_rows_per_s / self.raw_rows_per_s

    def as_dict(self) -> dict[str, object]:
        return asdict(self) | {
            "raw_rows_per_s": round(self.raw_rows_per_s),
            "raw_rows_per_s_before_after": [round(self.rows / s) for s in self.raw_insert_s],
            "sink_rows_per_s": round(self.sink_rows_per_s),
            "sink_rows_per_s_incl_group_join": round(self.rows / self.sink_total_s),
            "sink_over_raw": round(self.ratio, 3),
        }


def _create_raw_table(store: Store) -> None:
    """A copy of ``events`` as the migrations left it: same columns, engine, sorting key."""
    store.client.command(f"CREATE TABLE {RAW_TABLE} AS events")


def _count(store: Store, table: str = "events") -> int:
    return int(store.query(f"SELECT count() AS n FROM {table}")[0]["n"])


def raw_inserts(store: Store, n: int, prefill: tuple[Producer, Settings] | None = None
                ) -> tuple[float, float]:
    """Time the raw insert of ``n`` wire rows, ~50,000 rows per insert, into a fresh copy
    of ``events``; with ``prefill``, first produce each chunk's messages to the sink's topic
    (flushed). Chunk by chunk, so the bench never holds all N rows and nothing else runs
    while an insert is timed. Returns (insert seconds, produce seconds)."""
    _create_raw_table(store)
    chunk: Messages = []
    insert_s = produce_s = 0.0

    def one_chunk() -> tuple[float, float]:
        t0 = time.perf_counter()
        if prefill is not None:
            producer, settings = prefill
            headers = wire_headers()  # the gateway's: the sink trusts such lines
            for key, value, partition in chunk:
                produce_waiting(producer, settings.topic_events, value, key, headers, partition)
            if producer.flush(60):
                raise RuntimeError("prefill: the broker did not ack every event")
        t1 = time.perf_counter()
        store.insert_json_rows(RAW_TABLE, b"\n".join(value for _, value, _ in chunk))  # = rows
        return t1 - t0, time.perf_counter() - t1

    rows = 0
    for batch in wire_batches(n):
        chunk.extend(batch)
        rows += event_count(batch)
        if rows >= CHUNK:
            p, i = one_chunk()
            produce_s, insert_s, chunk, rows = produce_s + p, insert_s + i, [], 0
    if chunk:
        p, i = one_chunk()
        produce_s, insert_s = produce_s + p, insert_s + i
    if (raw := _count(store, RAW_TABLE)) != n:
        raise RuntimeError(f"raw insert holds {raw} rows, expected {n}")
    store.client.command(f"DROP TABLE {RAW_TABLE} SYNC")
    return insert_s, produce_s


def run_sink_bench(bootstrap: str, workdir: Path, n: int, timeout_s: float = 300.0) -> SinkResult:
    tag = uuid.uuid4().hex[:8]
    settings = Settings(
        kafka_bootstrap=bootstrap, clickhouse_url=None, data_dir=workdir / "sink-data",
        topic_events=f"bench-sink-{tag}", topic_dlq=f"bench-sink-{tag}.dlq",
        sink_group=f"bench-sink-{tag}",
    )
    ensure_topics(settings)
    store = Store(settings)
    try:
        insert_s, prefill_s = raw_inserts(store, n, (Producer(producer_config(settings)), settings))
        reset_peak_rss()
        sink = Sink(settings, store)
        thread = threading.Thread(target=sink.run, name="bench-sink", daemon=True)
        start = time.perf_counter()
        thread.start()
        # Progress from the sink's own counter (set after each insert returns), not from
        # SELECT count(): a query every few ms would take the Store's lock the sink's
        # inserts need, and slow what it measures. The table is checked once at the end.
        steps = [(start, 0)]  # (when the count changed, count)
        while steps[-1][1] < n:
            if time.perf_counter() - start > timeout_s or not thread.is_alive():
                raise RuntimeError(f"sink stopped at {steps[-1][1]}/{n} rows")
            time.sleep(0.005)
            if (count := sink.rows_written) != steps[-1][1]:
                steps.append((time.perf_counter(), count))
        peak = peak_rss_mib()
        sink.stop()
        thread.join(60)
        if (stored := _count(store)) != n:
            raise RuntimeError(f"the sink reported {n} rows but the table holds {stored}")
        # The same again after the sink: this box's speed drifts by 20% within a minute,
        # so the baseline brackets what it is compared with.
        insert_after_s, _ = raw_inserts(store, n)
    finally:
        store.close()
    return _result(n, (insert_s, insert_after_s), prefill_s, steps, peak,
                   settings.sink_batch_rows)


def _result(n: int, insert_s: tuple[float, float], prefill_s: float, steps: list[tuple[float, int]],
            peak: float, batch_rows: int) -> SinkResult:
    """The steady span ends with the last batch cut by size (at least ``batch_rows``
    rows): a smaller tail batch, however nearly full, waited on the batch timer."""
    batches = [b[1] - a[1] for a, b in pairwise(steps)]
    full = [i for i, rows in enumerate(batches, start=1) if rows >= batch_rows]
    last = full[-1] if len(full) >= 2 else len(steps) - 1
    return SinkResult(
        rows=n, raw_insert_s=insert_s, prefill_s=prefill_s,
        sink_total_s=steps[-1][0] - steps[0][0], sink_first_rows_s=steps[1][0] - steps[0][0],
        sink_steady_s=steps[last][0] - steps[1][0], sink_steady_rows=steps[last][1] - steps[1][1],
        sink_batches=batches, bench_peak_rss_mib=peak,
    )
