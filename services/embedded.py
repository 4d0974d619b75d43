"""``sluice up``: the whole pipeline on one machine, for a laptop or a demo.

Tansu (unless SLUICE_KAFKA_BOOTSTRAP names a cluster), the topics, ClickHouse (embedded
chDB under ./data unless SLUICE_CLICKHOUSE_URL names a server), user state and catalog
rebuilt from ClickHouse, the stream agents (a Faust worker process), the sink on a
thread, and the gateway on the main thread. chDB admits one process per path, so the gateway's reads
share the sink's Store. Shutdown order keeps every acknowledged event: gateway (flushes
its producer) -> sink (drains the topic into ClickHouse) -> agents -> broker.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import uvicorn
from rich.console import Console

from services.gateway.app import create_app
from services.shared.broker import EmbeddedBroker
from services.shared.clickhouse import Store
from services.shared.gc_tuning import tune_gc
from services.shared.kafka import ensure_topics
from services.shared.settings import Settings
from services.sink.consume import Sink
from streams.rebuild import rebuild_state

log = logging.getLogger(__name__)


def run_embedded(settings: Settings) -> None:
    console = Console(stderr=True)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    broker = None
    if not settings.kafka_bootstrap:
        broker = EmbeddedBroker(
            settings.embedded_broker_host, settings.embedded_broker_port,
            log_path=settings.data_dir / "tansu.log",
        ).start()
    try:
        ensure_topics(settings)
        store = Store(settings)
        # The broker starts empty: bring back what ClickHouse holds before going live.
        rebuilt = rebuild_state(settings, store, show_progress=True)
        if rebuilt.events or rebuilt.assets:
            console.print(f"restored {rebuilt.users} users ({rebuilt.events} events) and "
                          f"{rebuilt.assets} assets from ClickHouse")
        agents = start_agents(settings)
        sink = Sink(settings, store)
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(settings, store), host=settings.http_host, port=settings.http_port,
                log_level="warning", access_log=False,
            )
        )

        def sink_main() -> None:
            try:
                sink.run()
            except Exception:
                log.exception("the sink failed; stopping")
                server.should_exit = True

        sink_thread = threading.Thread(target=sink_main, name="sink")
        sink_thread.start()
        base = f"http://{settings.http_host}:{settings.http_port}"
        console.print("[bold]Sluice is up[/]  (Ctrl-C stops it, flushing what was accepted)")
        console.print(f"  gateway     {base}   docs {base}/docs")
        broker_kind = "embedded Tansu, in memory" if broker else "external"
        console.print(f"  kafka       {settings.bootstrap}   ({broker_kind})")
        console.print(f"  clickhouse  {settings.clickhouse_dsn}")
        console.print(f"  sink        group {settings.sink_group} -> tables events, assets")
        console.print(f"  agents      pid {agents.pid}, stats http://{settings.http_host}:"
                      f"{settings.agents_web_port}/stats, log {settings.data_dir / 'agents.log'}")
        wait_for_agents(settings, agents, console)
        # uvicorn re-raises the signal that stopped it once it is done: make that a no-op
        # so the drain below runs instead of the process dying on SIGTERM.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: None)
        tune_gc(settings.gc_young_threshold)  # the rebuild's garbage is gone; freeze the rest
        server.run()
        console.print("stopping: draining the sink into ClickHouse...")
        sink.stop()
        sink_thread.join()
        agents.terminate()
        try:
            agents.wait(15)
        except subprocess.TimeoutExpired:
            agents.kill()
        console.print(f"stopped; the sink wrote {sink.rows_written} rows this run")
        store.close()
    finally:
        if broker:
            broker.stop()


def wait_for_agents(settings: Settings, agents: subprocess.Popen[bytes], console: Console,
                    timeout_s: float = 60.0) -> None:
    """Open the gateway once the worker owns its partitions (its group join takes a few
    seconds), so the first ``queue_updates=false`` POST does not wait for the join."""
    if settings.agents_web_port == 0:
        return
    deadline = time.monotonic() + timeout_s
    with console.status("agents: joining their consumer group..."):
        while time.monotonic() < deadline and agents.poll() is None:
            if (owned_partitions(settings) or 0) > 0:
                return
            time.sleep(0.1)
    console.print("[yellow]the agents own no partitions yet: queue_updates=false requests wait "
                  f"for them (see {settings.data_dir / 'agents.log'})[/]")


def owned_partitions(settings: Settings) -> int | None:
    """Source partitions the worker serving ``settings.agents_web_port`` owns now; None
    while its stats page is not up."""
    url = f"http://{settings.http_host}:{settings.agents_web_port}/stats"
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return int(json.load(response)["partitions"])
    except (OSError, ValueError, KeyError):
        return None


def start_agents(settings: Settings) -> subprocess.Popen[bytes]:
    """The Faust worker in its own process (Faust owns its event loop and signals)."""
    env = os.environ | {"SLUICE_KAFKA_BOOTSTRAP": settings.bootstrap}
    with open(settings.data_dir / "agents.log", "ab") as log_file:  # the child keeps its copy
        return subprocess.Popen(
            [sys.executable, "-m", "services.cli", "agents"], env=env,
            stdout=log_file, stderr=subprocess.STDOUT,
        )
