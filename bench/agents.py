"""The stream agents: one ``sluice agents`` worker's throughput, and end-to-end freshness.

Throughput: a fresh events topic is pre-filled with the gateway's own messages (one per
partition per request, see payload.py), then ONE worker process starts on it with a fresh app
id and is timed through its ``GET /stats`` page (``messages``, ``users_written``) from
the first batch it reports to the last message (or a time cap). Messages are per
(request, partition), so the events per message (exact, from the payload) turn messages/s
into events/s.

Freshness: a ``sluice gateway`` process and one agents worker on one broker. Fresh users'
10 events are POSTed with ``queue_updates=true`` on an open-loop schedule (jittered, so
POSTs do not line up with the worker's fetch cycle as a closed loop would), and each
user's label weights are polled until the gateway's view (which follows the agents'
changelog) counts them: HTTP 200 -> state readable. Then the ack latency of
``queue_updates=false`` POSTs on the same schedule, whose 200 waits for the state.

On Tansu, an aiokafka fetch is answered when its max wait ends, not when data arrives;
Faust hard-codes ``fetch_max_wait_ms=1500`` in its aiokafka driver, which the agents
bound to ``SLUICE_AGENTS_FETCH_MAX_WAIT_MS`` (50 ms; see streams/app.py), so an update
waits for at most that much of the worker's current fetch. A real Kafka broker answers a
waiting fetch as soon as data arrives.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Producer

from bench.gateway import GatewayProcess
from bench.payload import PROGRAM, Messages, event_count, users_body, wire_batch, wire_headers
from bench.procs import log_tail, peak_rss_mib, stop_process
from services.shared.broker import free_port
from services.shared.kafka import ensure_topics, produce_waiting, producer_config
from services.shared.settings import Settings

USER_POOL = 10_000  # users each request draws its users from
MIX_USERS = 100  # users per 1000-event request in the realistic mix: 10 events per message
WORST_USERS = 1000  # every event from another user: 1 event per message
DISTINCT_REQUESTS = 50  # distinct requests built (through the gateway's ingest), then cycled


def env_for(settings: Settings) -> dict[str, str]:
    """The SLUICE_* environment that makes a child process use ``settings``
    (as tests/integration/conftest.py does for its worker processes)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")} | settings.environment()


def bench_settings(bootstrap: str, workdir: Path, prefix: str, **more: Any) -> Settings:
    """Fresh topics and app id (= consumer group and changelog topic) on ``bootstrap``;
    ``more``: other settings (TLS, in section 12)."""
    tag = f"{prefix}-{uuid.uuid4().hex[:8]}"
    return Settings(
        kafka_bootstrap=bootstrap, data_dir=workdir / f"{tag}-data",
        topic_events=f"{tag}-events", topic_dlq=f"{tag}-events.dlq", topic_assets=f"{tag}-assets",
        agents_app_id=f"{tag}-agents", agents_web_port=free_port(), http_port=free_port(),
        **more,
    )


class AgentsProcess:
    """``.venv/bin/sluice agents`` with ``settings`` as its environment, in ``workdir``
    (its user-state store is under ``settings.data_dir/agents``)."""

    def __init__(self, settings: Settings, workdir: Path) -> None:
        self.url = f"http://127.0.0.1:{settings.agents_web_port}"
        self.log_path = workdir / f"{settings.agents_app_id}.log"
        sluice = Path(sys.executable).parent / "sluice"
        with open(self.log_path, "wb") as out:
            self.process = subprocess.Popen(
                [str(sluice), "agents"], env=env_for(settings), cwd=workdir, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def stats(self) -> dict[str, int] | None:
        """``{"messages": n, "users_written": m}``, or None while the page is not up."""
        if self.process.poll() is not None:
            raise RuntimeError(f"agents exited {self.process.returncode}: {self.log_tail()}")
        try:
            with urllib.request.urlopen(f"{self.url}/stats", timeout=2) as resp:
                return json.loads(resp.read())  # type: ignore[no-any-return]
        except (urllib.error.URLError, OSError):
            return None

    def wait_serving(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.stats() is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"agents not serving /stats in {timeout_s}s: {self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self, n: int = 2000) -> str:
        return log_tail(self.log_path, n)

    def stop(self) -> None:
        stop_process(self.process, 20)


# -- throughput ----------------------------------------------------------------------------
@dataclass
class AgentsResult:
    users_per_request: int
    events_per_message: float
    events: int
    messages: int
    prefill_s: float
    startup_s: float  # worker start -> first batch reported (process, Faust, group join)
    steady_s: float  # first batch reported -> all messages (or the time limit)
    steady_messages: int  # messages processed in that span
    steady_users_written: int
    processed: int  # messages processed in all (== messages unless the time limit hit)
    timed_out: bool
    steps: list[tuple[float, int, int]] = field(repr=False)  # (s since start, messages, users)
    peak_rss_mib: float = float("nan")

    @property
    def messages_per_s(self) -> float:
        return self.steady_messages / self.steady_s if self.steady_s else 0.0

    @property
    def events_per_s(self) -> float:
        return self.messages_per_s * self.events_per_message

    @property
    def users_written_per_s(self) -> float:
        return self.steady_users_written / self.steady_s if self.steady_s else 0.0

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["steps"] = len(self.steps)  # how many times /stats showed progress
        return out | {"events_per_s": round(self.events_per_s),
                      "messages_per_s": round(self.messages_per_s),
                      "users_written_per_s": round(self.users_written_per_s)}


def prefill(settings: Settings, n_events: int, users_per_request: int) -> tuple[int, int, float]:
    """``n_events`` in 1000-event requests of ``users_per_request`` users each, as the
    gateway publishes them (its headers included); returns (messages, events, seconds)."""
    requests = [wire_batch(users_body(seed, users_per_request, USER_POOL))
                for seed in range(DISTINCT_REQUESTS)]
    headers = wire_headers()
    producer = Producer(producer_config(settings))
    messages = events = 0
    start = time.perf_counter()
    i = 0
    while events < n_events:
        batch: Messages = requests[i % len(requests)]
        for key, value, partition in batch:
            produce_waiting(producer, settings.topic_events, value, key, headers, partition)
        producer.poll(0)
        messages, events, i = messages + len(batch), events + event_count(batch), i + 1
    if producer.flush(60):
        raise RuntimeError("prefill: the broker did not ack every message")
    return messages, events, time.perf_counter() - start


def run_throughput(bootstrap: str, workdir: Path, n_events: int, users_per_request: int,
                   limit_s: float = 15.0, startup_timeout_s: float = 90.0,
                   **more: Any) -> AgentsResult:
    """Pre-fill, then one worker from offset 0; polled every 20 ms. Stops at the last
    message, or ``limit_s`` after the first batch (the rate is then of what it did)."""
    settings = bench_settings(bootstrap, workdir, f"bench-agents-{users_per_request}u", **more)
    ensure_topics(settings)
    messages, events, prefill_s = prefill(settings, n_events, users_per_request)
    worker = AgentsProcess(settings, workdir)
    start = time.perf_counter()
    try:
        steps: list[tuple[float, int, int]] = [(0.0, 0, 0)]
        first_at: float | None = None
        while steps[-1][1] < messages:
            now = time.perf_counter() - start
            if first_at is None and now > startup_timeout_s:
                raise RuntimeError(f"agents processed nothing in {startup_timeout_s}s: "
                                   f"{worker.log_tail()}")
            if first_at is not None and now - first_at > limit_s:
                break
            time.sleep(0.02)
            stats = worker.stats()
            if stats and stats["messages"] != steps[-1][1]:
                steps.append((time.perf_counter() - start, stats["messages"], stats["users_written"]))
                first_at = steps[-1][0] if first_at is None else first_at
        peak = peak_rss_mib(worker.pid)
    finally:
        worker.stop()
    assert first_at is not None
    first, last = steps[1], steps[-1]
    return AgentsResult(
        users_per_request=users_per_request, events_per_message=events / messages,
        events=events, messages=messages, prefill_s=prefill_s, startup_s=first[0],
        steady_s=last[0] - first[0], steady_messages=last[1] - first[1],
        steady_users_written=last[2] - first[2], processed=last[1],
        timed_out=last[1] < messages, steps=steps, peak_rss_mib=peak,
    )


# -- freshness -----------------------------------------------------------------------------
@dataclass
class FreshnessResult:
    events_per_post: int
    interval_ms: float  # mean gap between POST starts (open loop, jittered)
    fresh_ms: list[float] = field(repr=False)  # queue_updates=true: 200 -> state readable
    true_ack_ms: list[float] = field(repr=False)  # queue_updates=true: POST -> 200
    sync_ack_ms: list[float] = field(repr=False)  # queue_updates=false: POST -> 200
    gets: int = 0  # label-weights GETs the freshness checks took
    errors: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return asdict(self) | {
            "fresh_ms": summary(self.fresh_ms), "true_ack_ms": summary(self.true_ack_ms),
            "sync_ack_ms": summary(self.sync_ack_ms), "errors": self.errors[:10],
        }


def pct(values: list[float], q: int) -> float:
    """The q-th percentile (1..99) of ``values``, interpolated; NaN if empty."""
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50": round(pct(values, 50), 2), "p99": round(pct(values, 99), 2),
            "max": round(max(values, default=float("nan")), 2)}


class _Client:
    """One keep-alive HTTP/1.1 connection to the gateway."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=30)

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        headers = {"program-id": PROGRAM}
        if body is not None:
            headers["content-type"] = "application/json"
        self.conn.request(method, path, body=body, headers=headers)
        resp = self.conn.getresponse()
        return resp.status, resp.read()

    def post(self, user: str, n: int, queue_updates: bool) -> float:
        """POST ``n`` events of ``user``; returns ms to the 200 (raises on anything else)."""
        t0 = time.perf_counter()
        status, text = self.request(
            "POST", f"/events?queue_updates={str(queue_updates).lower()}", _body(user, n))
        if status != 200:
            raise RuntimeError(f"POST answered {status}: {text[:300]!r}")
        return (time.perf_counter() - t0) * 1000

    def events_of(self, user: str) -> int:
        status, text = self.request("GET", f"/users/{user}/label-weights")
        return int(orjson.loads(text)["events"]) if status == 200 else -1

    def close(self) -> None:
        self.conn.close()


def _body(user: str, n: int) -> bytes:
    now = time.time()
    return orjson.dumps({"events": [
        {"user_id": user, "event_type": ("view", "click", "purchase")[i % 3],
         "event_timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now - i)) + "Z",
         "asset_id": f"sku-{i}", "labels": ["red", "shoes"] if i % 2 else ["blue"]}
        for i in range(n)]})


def _gaps(n: int, interval_s: float, seed: int = 0) -> list[float]:
    """Open-loop arrivals: gaps uniform in [0.5, 1.5] x interval, so no POST lines up with
    a periodic step of the pipeline (a closed loop would always start right after one)."""
    rnd = random.Random(seed)
    return [interval_s * rnd.uniform(0.5, 1.5) for _ in range(n)]


def measure_freshness(client: _Client, users: list[str], n: int, interval_s: float,
                      poll_s: float, timeout_s: float = 10.0) -> tuple[list[float], list[float], int]:
    """POST ``users`` one by one (``?queue_updates=true``) on an open-loop schedule; between
    POSTs, GET the label weights of the oldest user not yet seen every ``poll_s``, and on a
    hit the next oldest at once (updates land in source order, so a younger user is never
    due before an older one: one GET per poll, whatever the number in flight).
    Returns (ms POST -> 200, ms 200 -> weights count the events, GETs made)."""
    acks: list[float] = []
    fresh: list[float] = []
    waiting: deque[tuple[str, float]] = deque()  # (user, when its 200 came), oldest first
    gets = 0
    todo = deque(users)
    gaps = deque(_gaps(len(users), interval_s))
    next_post = time.perf_counter()
    while todo or waiting:
        now = time.perf_counter()
        if todo and now >= next_post:
            user = todo.popleft()
            acks.append(client.post(user, n, queue_updates=True))
            waiting.append((user, time.perf_counter()))
            next_post = now + gaps.popleft()
            continue
        if waiting:
            user, acked = waiting[0]
            gets += 1
            if client.events_of(user) >= n:
                fresh.append((time.perf_counter() - acked) * 1000)
                waiting.popleft()
                continue
            if time.perf_counter() - acked > timeout_s:
                raise RuntimeError(f"user {user}: not updated {timeout_s}s after its 200")
        pause = poll_s if waiting else next_post - time.perf_counter()
        if todo:
            pause = min(pause, next_post - time.perf_counter())
        time.sleep(max(pause, 0.0))
    return acks, fresh, gets


def measure_sync_acks(url: str, users: list[str], n: int, interval_s: float,
                      threads: int = 32) -> tuple[list[float], list[str]]:
    """``?queue_updates=false`` POSTs started on the same open-loop schedule, each on a
    thread's own keep-alive connection (a POST waits for the agents, so several overlap)."""
    local = threading.local()
    starts, at = [], time.perf_counter() + 0.1
    for gap in _gaps(len(users), interval_s, seed=1):
        starts.append(at)
        at += gap

    def one(user: str, start: float) -> float:
        if not hasattr(local, "client"):
            local.client = _Client(url)
        time.sleep(max(0.0, start - time.perf_counter()))
        return local.client.post(user, n, queue_updates=False)  # type: ignore[no-any-return]

    acks, errors = [], []
    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(one, u, s) for u, s in zip(users, starts)]:
            try:
                acks.append(future.result())
            except (RuntimeError, OSError, http.client.HTTPException) as exc:
                errors.append(str(exc)[:300])
    return acks, errors


def gateway_and_agents(bootstrap: str, workdir: Path, prefix: str,
                       ) -> tuple[Settings, AgentsProcess, GatewayProcess]:
    """A gateway and one agents worker started on fresh topics (``bench_settings``); the
    caller waits for them and stops them."""
    settings = bench_settings(bootstrap, workdir, prefix)
    ensure_topics(settings)
    worker = AgentsProcess(settings, workdir)
    gw = GatewayProcess(bootstrap, settings.topic_events, settings.http_port, workdir,
                        env=env_for(settings))
    return settings, worker, gw


def run_freshness(bootstrap: str, workdir: Path, iterations: int, events_per_post: int = 10,
                  interval_s: float = 0.06, poll_s: float = 0.002,
                  warmup: int = 3) -> tuple[FreshnessResult, float, float]:
    """A gateway and one agents worker on fresh topics; returns the result and the peak RSS
    of both processes (MiB)."""
    workdir = workdir / "freshness"  # its own gateway.log
    workdir.mkdir(exist_ok=True)
    _, worker, gw = gateway_and_agents(bootstrap, workdir, "bench-fresh")
    client: _Client | None = None
    result = FreshnessResult(events_per_post, interval_s * 1000, [], [], [])
    run = uuid.uuid4().hex[:6]
    try:
        worker.wait_serving()
        gw.wait_ready()
        client = _Client(gw.url)
        t0 = time.perf_counter()  # warm-up: the first update also waits for the group join
        measure_freshness(client, [f"warm-{run}-{i}" for i in range(warmup)], events_per_post,
                          1.0, poll_s, timeout_s=60)
        t1 = time.perf_counter()
        result.true_ack_ms, result.fresh_ms, result.gets = measure_freshness(
            client, [f"fresh-{run}-{i}" for i in range(iterations)], events_per_post,
            interval_s, poll_s)
        t2 = time.perf_counter()
        result.sync_ack_ms, result.errors = measure_sync_acks(
            gw.url, [f"sync-{run}-{i}" for i in range(iterations)], events_per_post, interval_s)
        result.seconds = {"warmup": t1 - t0, "freshness": t2 - t1,
                          "sync_acks": time.perf_counter() - t2}
        gw_peak, agents_peak = peak_rss_mib(gw.pid), peak_rss_mib(worker.pid)
    finally:
        if client is not None:
            client.close()
        gw.stop()
        worker.stop()
    return result, gw_peak, agents_peak
