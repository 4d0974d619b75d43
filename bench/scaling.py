"""Section 11: agents workers scaled out under a load one worker cannot hold, and reads
while partitions move.

A ``sluice gateway`` and one ``sluice agents`` worker on fresh topics (3 s sessions, as
``sluice up`` gives its worker). A producer writes the gateway's own messages (100 users x
10 events per 1000-event request, see payload.py) straight to the events topic:

1. ``burst_s`` at ``burst_rate`` (more than one worker holds on this box): the one worker's
   applied events/s is its capacity (C1);
2. from then on ``overload`` x C1 events/s (one worker falls behind), and two more
   workers join: the seconds until the group's lag is back under ``drained_messages``
   (the drain time) and the group's events/s once all three run (C3);
3. with the load still on, one of the new workers is SIGKILLed, then the other gets SIGTERM.

Then the same at MODERATE_SHARE of one worker's capacity (``run_both``): on 2 cores the
overload leaves standbys no CPU to keep up with, which decides how reads fare in step 3.

Throughout, ``READERS`` closed-loop clients read label weights of users spread over the
partitions through the gateway: per phase, reads failed, the longest run of failed reads
(from the first failed read's start to the next good read's start) and the slowest read.
The workers run with one standby replica, as the compose and Kubernetes manifests run
them: a standby's copy answers for an owner that was SIGKILLed (streams/reads.py).

    .venv/bin/python -m bench.run --only scaling

On 2 cores the three workers, the gateway, the producer and the broker share the same CPUs:
C3 is what this box gives, not what three machines would.
"""

from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from rich.table import Table

from bench.agents import USER_POOL, AgentsProcess, env_for
from bench.gateway import GatewayProcess
from bench.payload import PROGRAM, event_count, users_body, wire_batch, wire_headers
from bench.procs import stop_process
from services.embedded_processes import EMBEDDED_SESSION_TIMEOUT_S
from services.shared.broker import free_port
from services.shared.kafka import ensure_topics, produce_waiting, producer_config
from services.shared.lag import group_lag, offsets_reader
from services.shared.settings import Settings

READERS = 8
STANDBY_REPLICAS = 1  # as the compose and Kubernetes manifests run several workers
MODERATE_SHARE = 0.4  # the second run's load, of one worker's capacity
USERS_PER_REQUEST = 100
DISTINCT_REQUESTS = 50


class Load(threading.Thread):
    """The gateway's messages to the events topic at ``rate`` events/s (None: full speed)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(name="load", daemon=True)
        self.settings = settings
        self.rate: float | None = None
        self.events = 0
        self.stop_flag = threading.Event()
        self.requests = [wire_batch(users_body(seed, USERS_PER_REQUEST, USER_POOL))
                         for seed in range(DISTINCT_REQUESTS)]
        self.events_per_request = event_count(self.requests[0])

    def run(self) -> None:
        producer = Producer(producer_config(self.settings))
        headers = wire_headers()
        started, sent, i, rate = time.monotonic(), 0, 0, self.rate
        while not self.stop_flag.is_set():
            if self.rate != rate:  # a new rate: paced from now on
                started, sent, rate = time.monotonic(), 0, self.rate
            if self.rate is not None:
                ahead = sent / self.rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(min(ahead, 0.05))
                    continue
            for key, value, partition in self.requests[i % len(self.requests)]:
                produce_waiting(producer, self.settings.topic_events, value, key, headers,
                                partition)
            producer.poll(0)
            i += 1
            sent += self.events_per_request
            self.events += self.events_per_request
        producer.flush(30)

    def set_rate(self, rate: float) -> None:
        self.rate = rate  # read by the thread at its next request (restarts its clock)


@dataclass
class Reads:
    """One reader's reads: (start, ok, seconds it took) each."""

    log: list[tuple[float, bool, float]] = field(default_factory=list)

    def gaps(self, since: float, until: float) -> tuple[int, int, float, float]:
        """(reads, failed, longest run of failure in seconds, slowest read in seconds)
        within [since, until): a read that waits long and then succeeds is no failure, but
        the reader waited as long."""
        reads = failed = 0
        longest, run_start, slowest = 0.0, None, 0.0
        for at, ok, took in self.log:
            if not since <= at < until:
                continue
            reads += 1
            slowest = max(slowest, took)
            if ok:
                if run_start is not None:
                    longest = max(longest, at - run_start)
                run_start = None
            else:
                failed += 1
                run_start = at if run_start is None else run_start
        if run_start is not None:
            longest = max(longest, until - run_start)
        return reads, failed, longest, slowest


def reader(url: str, user: str, out: Reads, stop: threading.Event) -> None:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    while not stop.is_set():
        at = time.monotonic()
        try:
            conn.request("GET", f"/users/{user}/label-weights", headers={"program-id": PROGRAM})
            response = conn.getresponse()
            response.read()
            ok = response.status == 200
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
            ok = False
        out.log.append((at, ok, time.monotonic() - at))
        time.sleep(0.02)


def lag_of(settings: Settings, reader_consumer: Any) -> int:
    return sum(p.lag for p in group_lag(reader_consumer, settings.agents_app_id,
                                        [settings.topic_events], timeout_s=5))


def applied(workers: list[AgentsProcess], last: dict[int, int]) -> int:
    """Messages applied by every worker so far; ``last`` keeps each worker's last answer
    (by pid), which stands for one that no longer answers (killed)."""
    for worker in workers:
        try:
            stats = worker.stats()
        except RuntimeError:  # exited
            stats = None
        if stats:
            last[worker.pid] = stats["messages"]
    return sum(last.get(worker.pid, 0) for worker in workers)


def run(bootstrap: str, workdir: Path, burst_s: float = 6.0, burst_rate: float = 150_000,
        overload: float = 1.3,
        drain_cap_s: float = 120.0, drained_messages: int = 200) -> dict[str, Any]:
    workdir = workdir / "scaling"
    workdir.mkdir(exist_ok=True)
    base = Settings(kafka_bootstrap=bootstrap)
    tag = f"bench-scale-{int(time.time())}"
    settings = base.model_copy(update={
        "data_dir": workdir / "data", "topic_events": f"{tag}-events",
        "topic_dlq": f"{tag}-events.dlq", "topic_assets": f"{tag}-assets",
        "agents_app_id": f"{tag}-agents", "agents_web_port": free_port(),
        "http_port": free_port(), "agents_session_timeout_s": EMBEDDED_SESSION_TIMEOUT_S,
        "agents_standby_replicas": STANDBY_REPLICAS})
    ensure_topics(settings)
    first = AgentsProcess(settings, workdir)
    gw = GatewayProcess(bootstrap, settings.topic_events, settings.http_port, workdir,
                        env=env_for(settings))
    workers = [first]
    stop = threading.Event()
    reads = [Reads() for _ in range(READERS)]
    threads: list[threading.Thread] = []
    load = Load(settings)
    offsets = offsets_reader(settings, settings.agents_app_id)
    r: dict[str, Any] = {"readers": READERS, "overload": overload}
    marks: dict[str, float] = {}
    seen: dict[int, int] = {}  # worker pid -> messages it last said it applied
    try:
        first.wait_serving()
        gw.wait_ready()
        deadline = time.monotonic() + 60
        while not (first.stats() or {}).get("serving"):  # joined the group, owns partitions
            if time.monotonic() > deadline:
                raise RuntimeError(f"the agents worker never served: {first.log_tail()}")
            time.sleep(0.2)
        for i in range(READERS):
            t = threading.Thread(target=reader, args=(gw.url, f"user-{i * 997}", reads[i], stop),
                                 daemon=True)
            t.start()
            threads.append(t)
        events_per_message = load.events_per_request / len(load.requests[0])
        # 1. more than one worker holds: what it applies is its capacity
        load.set_rate(burst_rate)
        load.start()
        time.sleep(2)  # the first batches: group join and fetch warm-up
        t0, m0 = time.monotonic(), applied(workers, seen)
        time.sleep(burst_s)
        c1 = (applied(workers, seen) - m0) * events_per_message / (time.monotonic() - t0)
        r["one_worker_events_per_s"] = round(c1)
        # 2. a load it cannot hold; two workers join
        load.set_rate(overload * c1)
        r["load_events_per_s"] = round(overload * c1)
        time.sleep(5)
        marks["join"] = time.monotonic()
        r["lag_at_join_messages"] = lag_of(settings, offsets)
        for _ in range(2):
            worker = AgentsProcess(settings.model_copy(update={"agents_web_port": free_port()}),
                                   workdir)
            workers.append(worker)
        for worker in workers[1:]:
            worker.wait_serving()
        drained_at = None
        peak_lag = r["lag_at_join_messages"]
        while time.monotonic() - marks["join"] < drain_cap_s:
            lag = lag_of(settings, offsets)
            peak_lag = max(peak_lag, lag)
            if lag <= drained_messages and time.monotonic() - marks["join"] > 5:
                drained_at = time.monotonic()
                break
            time.sleep(0.5)
        r["peak_lag_messages"] = peak_lag
        r["drain_s"] = round(drained_at - marks["join"], 1) if drained_at else None
        t0, m0 = time.monotonic(), applied(workers, seen)
        time.sleep(5)
        r["three_workers_events_per_s"] = round(
            (applied(workers, seen) - m0) * events_per_message / (time.monotonic() - t0))
        r["messages_per_worker"] = [(w.stats() or {}).get("messages") for w in workers]
        r["produced_events"] = load.events
        # 3. a SIGKILL and a SIGTERM under the load
        marks["kill"] = time.monotonic()
        workers[1].process.kill()
        time.sleep(10)
        marks["term"] = time.monotonic()
        stop_process(workers[2].process, 20)
        time.sleep(10)
        marks["end"] = time.monotonic()
    finally:
        stop.set()
        load.stop_flag.set()
        for t in threads:
            t.join(15)
        offsets.close()
        gw.stop()
        for worker in workers:
            worker.stop()
    phases = {"join (1 -> 3 workers)": ("join", "kill"), "one SIGKILLed": ("kill", "term"),
              "one SIGTERMed": ("term", "end")}
    r["reads"] = {}
    for name, (a, b) in phases.items():
        per_reader = [x.gaps(marks[a], marks[b]) for x in reads]
        r["reads"][name] = {"reads": sum(p[0] for p in per_reader),
                            "failed": sum(p[1] for p in per_reader),
                            "longest_failed_s": round(max(p[2] for p in per_reader), 2),
                            "slowest_read_s": round(max(p[3] for p in per_reader), 2)}
    return r


def run_both(bootstrap: str, workdir: Path) -> dict[str, Any]:
    """The overload run, then the same moves at MODERATE_SHARE of one worker's capacity (a
    load the standbys keep up with on this box), whose reads are under ``moderate``."""
    result = run(bootstrap, workdir)
    moderate = run(bootstrap, workdir, overload=MODERATE_SHARE, drain_cap_s=30.0)
    result["moderate"] = {"share": MODERATE_SHARE, "load_events_per_s": moderate[
        "load_events_per_s"], "reads": moderate["reads"]}
    return result


def scaling_table(r: dict[str, Any]) -> Table:
    table = Table(title="11. agents scaled 1 -> 3 under a load one worker cannot hold "
                        f"(2 cores shared by all; {STANDBY_REPLICAS} standby replica), "
                        f"{r['readers']} readers through the gateway")
    table.add_column("what")
    table.add_column("measured", justify="right")
    table.add_column("target")
    table.add_row("one worker, saturated", f"{r['one_worker_events_per_s']:,} events/s", "")
    table.add_row("load while scaling", f"{r['load_events_per_s']:,} events/s "
                  f"({r['overload']}x one worker)", "")
    table.add_row("lag when two workers join / peak",
                  f"{r['lag_at_join_messages']:,} / {r['peak_lag_messages']:,} messages", "")
    drain = "not within the cap" if r["drain_s"] is None else f"{r['drain_s']} s"
    table.add_row("join -> lag drained", drain, "")
    table.add_row("three workers", f"{r['three_workers_events_per_s']:,} events/s", "")
    runs = [("", r["reads"])]
    if "moderate" in r:
        moderate = r["moderate"]
        load = (f" at {moderate['share']}x one worker "
                f"({moderate['load_events_per_s']:,} events/s)")
        runs.append((load, moderate["reads"]))
    for load, reads in runs:
        for name, row in reads.items():
            table.add_row(f"reads{load}, {name}", f"{row['failed']} of {row['reads']} failed, "
                          f"longest failed run {row['longest_failed_s']} s, slowest read "
                          f"{row.get('slowest_read_s', '?')} s", "<= 3 s")
    return table


def run_alone() -> dict[str, Any]:
    import json
    import tempfile

    from rich.console import Console

    from services.shared.broker import EmbeddedBroker

    with tempfile.TemporaryDirectory(prefix="sluice-scaling-") as tmp:
        workdir = Path(tmp)
        broker = EmbeddedBroker(port=free_port(), log_path=workdir / "tansu.log").start()
        try:
            result = run_both(broker.bootstrap, workdir)
        finally:
            broker.stop()
    out = Path(__file__).parent / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "scaling.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    Console(width=160).print(scaling_table(result))
    return result
