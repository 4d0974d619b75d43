"""User erasure's time with 1M events stored (issue 25).

1. ClickHouse alone (the sink's part, services.sink.erase): 1M synthetic rows in an
   embedded chDB ``events`` table (10,000 users x 100 events, inserted in 20 blocks of
   50,000 rows, as the sink's batches make parts), then the sink's erasure of one user
   (count, lightweight DELETE, ``erasures`` row), against a mutation (``ALTER TABLE
   DELETE``, mutations_sync=1) for comparison; and a read of a user after it.
2. End to end: Tansu, the sink, a gateway and one ``sluice agents`` worker on a chDB that
   holds the same 1M rows; a user with events in ClickHouse and in the agents' state is
   erased with ``DELETE /users/{id}``: the time to the broker's ack (the 202), and to
   ``GET /users/{id}/erasure/{receipt}`` saying ``done`` (polled every 20 ms).

    .venv/bin/python -m bench.erasure [--rows 1000000] [--rounds 5]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.agents import AgentsProcess, bench_settings
from services.shared.broker import EmbeddedBroker, free_port
from services.shared.clickhouse import Store
from services.shared.erasures import Erasure
from services.shared.kafka import ensure_topics
from services.shared.settings import Settings
from services.sink.erase import Erasures

USERS = 10_000
BLOCK = 50_000


def fill(store: Store, rows: int) -> float:
    """``rows`` synthetic events of USERS users (u0..), BLOCK rows an insert; seconds."""
    began = time.perf_counter()
    for start in range(0, rows, BLOCK):
        store.command(
            "INSERT INTO events (program_id, event_id, user_id, event_timestamp, event_type, "
            "asset_id, labels, asset_labels, received_at, queue_updates, process_user_actions) "
            "SELECT 'shop', generateUUIDv4(), concat('u', toString(number % "
            f"{USERS})), toDateTime64('2026-11-01 00:00:00', 6, 'UTC') + toIntervalSecond(number), "
            "'view', concat('sku-', toString(number % 500)), ['sale'], ['shoes', 'red'], "
            "now64(6), true, true "
            f"FROM numbers({start}, {min(BLOCK, rows - start)}) "
            f"SETTINGS max_insert_block_size={BLOCK}, min_insert_block_size_rows={BLOCK}")
    return time.perf_counter() - began


def clickhouse_part(workdir: Path, rows: int, rounds: int) -> dict[str, Any]:
    settings = Settings(data_dir=workdir / "ch-only", kafka_bootstrap="127.0.0.1:1")
    store = Store(settings)
    try:
        filled_s = fill(store, rows)
        parts = store.query("SELECT count() AS n FROM system.parts WHERE table = 'events' "
                            "AND active")[0]["n"]
        eraser = Erasures(settings, store)
        eraser.markers = None  # ClickHouse's part only (no broker here)
        lightweight, deleted = [], []
        for i in range(rounds):
            began = time.perf_counter()
            deleted.append(eraser.erase([(Erasure.new("shop", f"u{i}"), 0, i)]))
            lightweight.append(time.perf_counter() - began)
        mutation = []
        for i in range(rounds, rounds + min(rounds, 3)):
            began = time.perf_counter()
            store.command(f"ALTER TABLE events DELETE WHERE program_id = 'shop' AND user_id = "
                          f"'u{i}' SETTINGS mutations_sync = 1")
            mutation.append(time.perf_counter() - began)
        began = time.perf_counter()
        kept = len(store.user_events("shop", f"u{USERS - 1}", 1000))
        read_s = time.perf_counter() - began
        gone = len(store.user_events("shop", "u0", 1000))
        left = store.query("SELECT count() AS n FROM events FINAL")[0]["n"]
    finally:
        store.close()
    return {"rows": rows, "parts": parts, "fill_s": round(filled_s, 2),
            "rows_deleted_per_user": deleted,
            "erase_s": [round(x, 4) for x in lightweight],
            "erase_median_s": round(statistics.median(lightweight), 4),
            "mutation_s": [round(x, 4) for x in mutation],
            "read_after_s": round(read_s, 4), "kept_user_rows": kept, "erased_user_rows": gone,
            "rows_left": left}


def end_to_end(workdir: Path, rows: int, rounds: int) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from services.gateway.app import create_app
    from services.sink.consume import Sink

    broker = EmbeddedBroker(port=free_port(), log_path=workdir / "tansu.log").start()
    settings = bench_settings(broker.bootstrap, workdir, "erasure", sink_batch_seconds=0.2,
                              queue_updates_default=False)
    agents: AgentsProcess | None = None
    try:
        ensure_topics(settings)
        store = Store(settings)
        fill(store, rows)
        agents = AgentsProcess(settings, workdir)
        agents.wait_serving()
        sink = Sink(settings, store)
        thread = threading.Thread(target=sink.run, name="bench-sink")
        thread.start()
        acked, done = [], []
        try:
            with TestClient(create_app(settings, store)) as client:
                h = {"program-id": "shop"}
                for i in range(rounds):
                    user = f"target{i}"
                    events = [{"user_id": user, "event_timestamp": "2026-11-20T10:00:00Z",
                               "event_type": "view", "asset_id": f"sku-{j}", "labels": ["x"]}
                              for j in range(20)]
                    posted = client.post("/events?wait=user", json={"events": events}, headers=h)
                    assert posted.status_code == 200, posted.text
                    while len(store.user_events("shop", user, 100)) < 20:
                        time.sleep(0.05)
                    began = time.perf_counter()
                    response = client.delete(f"/users/{user}", headers=h)
                    acked.append(time.perf_counter() - began)
                    assert response.status_code == 202, response.text
                    url = response.json()["status_url"]
                    while client.get(url, headers=h).json()["status"] != "done":
                        time.sleep(0.02)
                    done.append(time.perf_counter() - began)
                    weights = client.get(f"/users/{user}/label-weights", headers=h).json()
                    assert weights["events"] == 0 and not store.user_events("shop", user, 10)
        finally:
            sink.stop()
            thread.join(60)
            store.close()
    finally:
        if agents is not None:
            agents.stop()
        broker.stop()
    return {"ack_s": [round(x, 4) for x in acked], "done_s": [round(x, 3) for x in done],
            "done_median_s": round(statistics.median(done), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sluice-erasure-") as tmp:
        workdir = Path(tmp)
        out = {"clickhouse": clickhouse_part(workdir, args.rows, args.rounds),
               "end_to_end": end_to_end(workdir, args.rows, args.rounds)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
