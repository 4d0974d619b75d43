"""What `sluice verify` costs at 10M events: ``python -m bench.verify_cost [events]``.

Fills a fresh embedded ClickHouse (chDB) with the tallies 10M events leave in an hour
(10 programs, 4 partitions; a gateway flushing every 5 s, the sink writing a batch every
0.25 s: one tally row per (program, partition) of each), plus the 10M rows of ``events``
for comparison, with INSERT ... SELECT from numbers(). Then times verify's own queries
(services.verify.read_cells over the hour, and locate for one gap) and, for comparison,
the query verify does NOT run: counting ``events`` FINAL per program and minute.
"""

from __future__ import annotations

import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from services.shared.clickhouse import Store
from services.shared.settings import Settings
from services.verify import Gap, compare, locate, read_cells

PROGRAMS, PARTITIONS, MINUTES = 10, 4, 60
START = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


def fill(store: Store, events: int) -> None:
    per_cell = events // (PROGRAMS * PARTITIONS * MINUTES)
    cells = PROGRAMS * PARTITIONS * MINUTES
    base = "toDateTime('2026-12-01 10:00:00', 'UTC')"
    for kind, per_minute in (("acked", 12), ("stored", 240)):
        store.command(
            "INSERT INTO event_tallies SELECT concat('p', toString(c % 10)) AS program_id, "
            f"{base} + 60 * intDiv(c, 40) AS minute, '{kind}', intDiv(c % 40, 10) AS partition, "
            f"toString(number % {per_minute}) AS id, "
            f"{per_cell} DIV {per_minute} + if(number % {per_minute} < {per_cell} % {per_minute}, "
            "1, 0) AS events, 0, number, number, now64(3) "
            f"FROM (SELECT number, intDiv(number, {per_minute}) AS c FROM numbers({cells * per_minute}))")
    store.command(
        "INSERT INTO events (program_id, event_id, user_id, event_timestamp, event_type, "
        "asset_id, labels, received_at, queue_updates, process_user_actions) "
        "SELECT concat('p', toString(number % 10)), generateUUIDv4(), "
        "concat('u', toString(number % 100000)), "
        f"{base} + intDiv(number, {max(1, events // 3600)}), 'view', "
        "concat('a', toString(number % 5000)), ['x'], "
        f"{base} + intDiv(number, {max(1, events // 3600)}), true, true FROM numbers({events})")


def timed(store: Store, sql: str, table: str, params: dict[str, object] | None = None,
          ) -> tuple[float, str]:
    """The query's time, and the size of what it scans: the table's rows and compressed
    bytes (chDB's query summary does not count rows read)."""
    began = time.perf_counter()
    store.client.query(sql, parameters=params or {})
    took = time.perf_counter() - began
    [size] = store.query("SELECT sum(rows) AS r, sum(data_compressed_bytes) AS b, "
                         "sum(data_uncompressed_bytes) AS u FROM system.parts "
                         "WHERE active AND table = {t:String}", {"t": table})
    return took, (f"{table}: {size['r']} rows, {int(size['b']) / 1e6:.1f} MB compressed "
                  f"({int(size['u']) / 1e6:.1f} MB uncompressed)")


def main() -> None:
    events = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000_000
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Settings(data_dir=Path(tmp), kafka_bootstrap="127.0.0.1:1"))
        began = time.perf_counter()
        fill(store, events)
        rows = store.query("SELECT count() AS n FROM event_tallies")[0]["n"]
        print(f"filled {events} events and {rows} tally rows in {time.perf_counter() - began:.1f} s")
        store.command("OPTIMIZE TABLE event_tallies FINAL")  # as after background merges
        until = START + timedelta(minutes=MINUTES)
        for attempt in range(3):
            t0 = time.perf_counter()
            cells = read_cells(store, START, until)
            report = compare(cells, None, since=START, until=until)
            t1 = time.perf_counter()
            gaps = [Gap("missing", f"p{i % 10}", START + timedelta(minutes=i % 60), i % 4, 1)
                    for i in range(100)]
            locate(store, gaps)
            print(f"run {attempt + 1}: the counts {t1 - t0:.3f} s ({len(cells)} cells, acked "
                  f"{report.total.acked}, stored {report.total.stored}); locating 100 gaps "
                  f"{time.perf_counter() - t1:.3f} s")
        from services.verify import _CELLS, _GROUPS

        took, what = timed(store, _CELLS + _GROUPS, "event_tallies", {"since": START, "until": until})
        print(f"verify's aggregate: {took:.3f} s, {what}")
        took, what = timed(store, "SELECT program_id, toStartOfMinute(received_at) AS m, "
                           "count() FROM events FINAL GROUP BY program_id, m", "events")
        print(f"for comparison, counting events FINAL per program and minute: {took:.3f} s, {what}")
        store.close()


if __name__ == "__main__":
    main()
