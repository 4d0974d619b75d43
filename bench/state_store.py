"""The agents' table store: memory:// against rocksdb://, on one worker.

For each store: a fresh events topic is pre-filled with the gateway's own messages for
``users`` distinct users (``events_per_user`` each, 1000-event requests); one ``sluice
agents`` worker applies them all. Then: its RSS (now and peak) and the bytes under
``SLUICE_DATA_DIR``; a restart (SIGTERM, then SIGKILL) timed from the new process to the
moment it applied a probe event produced right after it started ("serving"), with the
changelog records it read to recover (its ``/stats``).

    .venv/bin/python -m bench.state_store [--users 200000] [--events-per-user 5] [--client-ids]

``--client-ids``: every event carries a client event id (ActionHub's ``event_id``), so each
record keeps the ids it saw within SLUICE_DEDUP_WINDOW_S: run with and without to see what
deduplicating retries costs per user.

Prints one JSON object per store. No HTTP load: the events are produced directly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import tempfile
import time
from pathlib import Path

import orjson
from confluent_kafka import Producer

from bench.agents import AgentsProcess, bench_settings
from bench.payload import LABELS, TYPES, wire_batch, wire_headers
from bench.procs import peak_rss_mib
from services.shared.broker import EmbeddedBroker, free_port
from services.shared.kafka import ensure_topics, produce_waiting, producer_config
from services.shared.settings import Settings
from streams.slots import store_bytes


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


CLIENT_IDS = False  # --client-ids: each event with its own client event id


def body(first_user: int, users: int, per_user: int) -> bytes:
    events = [
        {"user_id": f"user-{u}", "event_timestamp": f"2026-11-{1 + (u + i) % 28:02d}T10:00:00Z",
         "event_type": TYPES[(u + i) % len(TYPES)], "asset_id": f"sku-{(u * 7 + i) % 50_000}",
         "labels": [LABELS[(u + i) % len(LABELS)], LABELS[(u * 3 + i) % len(LABELS)]]}
        | ({"event_id": f"e-{u}-{i}"} if CLIENT_IDS else {})
        for i in range(per_user) for u in range(first_user, first_user + users)
    ]
    return orjson.dumps({"events": events})


def prefill(settings: Settings, users: int, per_user: int) -> int:
    """Every user's events, as the gateway publishes 1000-event requests; returns messages."""
    producer = Producer(producer_config(settings))
    headers = wire_headers()
    per_request = max(1, 1000 // per_user)
    messages = 0
    with asyncio.Runner() as runner:
        for first in range(0, users, per_request):
            for key, value, partition in wire_batch(
                    body(first, min(per_request, users - first), per_user), runner=runner):
                produce_waiting(producer, settings.topic_events, value, key, headers, partition)
                messages += 1
            producer.poll(0)
    if producer.flush(60):
        raise RuntimeError("prefill: the broker did not ack every message")
    return messages


def probe(settings: Settings, n: int) -> None:
    """One event of a new user, as the gateway would publish it."""
    producer = Producer(producer_config(settings))
    for key, value, partition in wire_batch(body(10**9 + n, 1, 1)):
        produce_waiting(producer, settings.topic_events, value, key, wire_headers(), partition)
    producer.flush(10)


def wait_stats(worker: AgentsProcess, done: object, timeout_s: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stats = worker.stats()
        if stats is not None and done(stats):  # type: ignore[operator]
            return stats
        time.sleep(0.02)
    raise RuntimeError(f"not done in {timeout_s}s: {worker.log_tail()}")


def restart(settings: Settings, workdir: Path, worker: AgentsProcess, sig: signal.Signals,
            n: int) -> tuple[AgentsProcess, dict[str, object]]:
    worker.process.send_signal(sig)
    worker.process.wait(60)
    start = time.perf_counter()
    worker = AgentsProcess(settings, workdir)
    worker.wait_serving()
    up_s = time.perf_counter() - start
    probe(settings, n)
    stats = wait_stats(worker, lambda s: s["users_written"] >= 1, 300)
    return worker, {
        "signal": sig.name, "page_up_s": round(up_s, 2),
        "serving_s": round(time.perf_counter() - start, 2),
        "changelog_recovered": stats["changelog_recovered"],
        "source_messages_replayed": stats["messages"] - 1,
        "rss_mib": round(rss_mib(worker.pid)), "peak_rss_mib": round(peak_rss_mib(worker.pid)),
    }


def run(bootstrap: str, workdir: Path, store: str, users: int, per_user: int) -> dict[str, object]:
    settings = bench_settings(bootstrap, workdir, f"store-{store}")
    settings.agents_store = store  # type: ignore[assignment]
    ensure_topics(settings)
    t0 = time.perf_counter()
    messages = prefill(settings, users, per_user)
    out: dict[str, object] = {"store": store, "client_ids": CLIENT_IDS, "users": users,
                              "events": users * per_user,
                              "messages": messages, "prefill_s": round(time.perf_counter() - t0, 1)}
    start = time.perf_counter()
    worker = AgentsProcess(settings, workdir)
    try:
        stats = wait_stats(worker, lambda s: s["messages"] >= messages, 900)
        out |= {"apply_s": round(time.perf_counter() - start, 1),
                "users_written": stats["users_written"],
                "rss_mib": round(rss_mib(worker.pid)),
                "peak_rss_mib": round(peak_rss_mib(worker.pid)),
                "disk_mib": round(store_bytes(settings) / 2**20, 1)}
        time.sleep(3)  # let Faust commit the source offsets (commit_interval 2.8 s)
        worker, out["restart_sigterm"] = restart(settings, workdir, worker, signal.SIGTERM, 1)
        worker, out["restart_sigkill"] = restart(settings, workdir, worker, signal.SIGKILL, 2)
        out["disk_mib_after"] = round(store_bytes(settings) / 2**20, 1)
    finally:
        worker.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--events-per-user", type=int, default=5)
    parser.add_argument("--stores", default="memory,rocksdb")
    parser.add_argument("--client-ids", action="store_true",
                        help="every event with a client event id (the dedup window's cost)")
    args = parser.parse_args()
    global CLIENT_IDS
    CLIENT_IDS = args.client_ids
    with tempfile.TemporaryDirectory(prefix="sluice-store-") as tmp:
        workdir = Path(tmp)
        broker = EmbeddedBroker(port=free_port(), log_path=workdir / "tansu.log").start()
        try:
            for store in args.stores.split(","):
                print(json.dumps(run(broker.bootstrap, workdir, store, args.users,
                                     args.events_per_user)), flush=True)
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
