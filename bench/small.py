"""Section 9, small requests, as SDKs send them: 1 and 10 events per POST from 50
connections, each against the HTTP floor measured in the same run (a bare ASGI app on
the same server: ``bench.floor``). ``python -m bench.small`` runs it alone.

Targets (issue 13): 1-event requests at >= 0.3 of the floor; 10-event requests
>= 30,000 events/s. Issue 24 holds PostHog's and Segment's single-event rows to the same
0.3 (the SDKs send one event a request where an app captures as it goes).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from rich.table import Table

from bench.agents import gateway_and_agents
from bench.dialects import (
    crowdpower_body,
    personalize_body,
    post_once,
    posthog_body,
    retail_body,
    segment_body,
    userflux_body,
)
from bench.gateway import GatewayProcess, HeyResult, hey
from bench.payload import api_body
from bench.procs import cpu_seconds_by_pid, foreign_cpu_s, stop_process
from services.shared.broker import free_port
from services.shared.kafka import client_config, ensure_topics
from services.shared.settings import Settings

CLIENTS = 50
AGENTS_CATCH_UP_TARGET_S = 2.0
FLOOR_SHARE_TARGET = 0.3
# the single-event rows held to it besides ActionHub's: the SDK dialects (issue 24)
FLOOR_SHARE_DIALECTS = ("PostHog ", "Segment ")
TEN_EVENTS_TARGET = 30_000


def _single_bodies() -> list[tuple[str, str, int, bytes]]:
    """(name, path, success status, body) of each vendor dialect's single-event request."""
    crowd = orjson.loads(crowdpower_body(n=1))
    return [
        ("Personalize PutEvents, 1 event", "/compat/personalize/events", 200,
         personalize_body(n=1)),
        ("Retail, 1 event", "/compat/retail/events", 200,
         orjson.dumps(orjson.loads(retail_body(n=1))[0])),
        ("UserFlux /event/ingest", "/compat/userflux/event/ingest", 204,
         orjson.dumps(orjson.loads(userflux_body(n=1))["events"][0])),
        ("CrowdPower /events", "/compat/crowdpower/events", 200,
         orjson.dumps({"user_id": crowd["user_id"], "email": crowd["email"]}
                      | crowd["events"][0])),
        # as posthog-js captures one event (the token in the event; no uuid: every request
        # is a new event, not a retry) and as Segment's /v1/track takes one call
        ("PostHog /e/, 1 event", "/compat/posthog/e/", 200,
         orjson.dumps({k: v for k, v in orjson.loads(posthog_body(n=1))["batch"][0].items()
                       if k != "uuid"} | {"api_key": "bench"})),
        ("Segment /v1/track", "/compat/segment/v1/track", 200,
         orjson.dumps({k: v for k, v in orjson.loads(segment_body(n=1))["batch"][0].items()
                       if k not in ("messageId", "type")} | {"writeKey": "bench"})),
    ]


@dataclass
class SmallResult:
    name: str
    events_per_request: int
    hey: HeyResult
    success: int = 200

    @property
    def ok(self) -> int:
        return self.hey.status.get(self.success, 0)

    @property
    def not_ok(self) -> int:
        return sum(self.hey.status.values()) + sum(self.hey.errors.values()) - self.ok

    @property
    def events_per_s(self) -> float:
        return self.events_per_request * self.ok / self.hey.seconds if self.hey.seconds else 0.0

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "events_per_request": self.events_per_request,
                "events_per_s": round(self.events_per_s), "success_status": self.success,
                "ok": self.ok, "not_ok": self.not_ok} | self.hey.as_dict()


def serve_floor(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    with open(workdir / "floor.log", "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "bench.floor:app", "--port", str(port),
             "--log-level", "warning", "--no-access-log"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(urllib.request.Request(
                f"http://127.0.0.1:{port}/", data=b"{}", method="POST"), timeout=1).close()
            return proc
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    stop_process(proc, 5)
    raise RuntimeError("the floor app did not answer")


def run_small(bootstrap: str, workdir: Path, seconds: int,
              dialect_seconds: int = 5) -> list[SmallResult]:
    """The floor, then the gateway (answering at the broker's ack) with 1 and 10 events,
    then each vendor dialect's single-event route (``dialect_seconds`` each)."""
    workdir = workdir / "small"
    workdir.mkdir(exist_ok=True)
    results = []
    port = free_port()
    floor = serve_floor(port, workdir)
    one = workdir / "one.json"
    one.write_bytes(api_body(seed=3, n=1))
    try:
        hey(f"http://127.0.0.1:{port}", one, 2, CLIENTS, path="/")
        results.append(SmallResult("bare ASGI app (floor)", 1,
                                   hey(f"http://127.0.0.1:{port}", one, seconds, CLIENTS, path="/")))
    finally:
        stop_process(floor, 5)
    for n in (1, 10):
        with _gateway_of_its_own(bootstrap, workdir, f"events-{n}") as gw:
            body = workdir / f"body-{n}.json"
            body.write_bytes(api_body(seed=4 + n, n=n))
            hey(gw.url, body, 2, CLIENTS)
            results.append(SmallResult(f"POST /events, {n} event{'s' * (n > 1)}", n,
                                       hey(gw.url, body, seconds, CLIENTS)))
    for name, path, success, single in _single_bodies():
        row = path.strip("/").replace("/", "-")
        with _gateway_of_its_own(bootstrap, workdir, row) as gw:
            status, text = post_once(gw.url, path, single)
            if status != success:
                raise RuntimeError(f"{name}: POST {path} answered {status}: {text[:300]!r}")
            body = workdir / f"single-{row}.json"
            body.write_bytes(single)
            hey(gw.url, body, 1, CLIENTS, path=path)
            results.append(SmallResult(name, 1, hey(gw.url, body, dialect_seconds, CLIENTS,
                                                    path=path), success))
    return results


@contextmanager
def _gateway_of_its_own(bootstrap: str, workdir: Path, row: str) -> Iterator[GatewayProcess]:
    """A gateway publishing to an events topic of its own, deleted after its row. Tansu keeps
    every message in memory, and its CPU a request grew with what it held (6.3 -> 9.6 us
    over 45 s of single events, the gateway's 68 -> 73 us): on one shared topic each row
    paid for the rows before it, and the last (Segment's) read 0.29 where it reads 0.32 first."""
    settings = Settings(kafka_bootstrap=bootstrap, topic_events=f"small-{row}")
    ensure_topics(settings)
    rowdir = workdir / row
    rowdir.mkdir(exist_ok=True)
    gw = GatewayProcess(bootstrap, settings.topic_events, free_port(), rowdir)
    try:
        gw.wait_ready()
        yield gw
    finally:
        gw.stop()
        admin = AdminClient(client_config(settings))  # type: ignore[arg-type]
        topics = [settings.topic_events, settings.topic_tallies]
        for future in admin.delete_topics(topics, operation_timeout=10).values():
            future.result(timeout=15)


@dataclass
class LagResult:
    """A minute (``seconds``) of single-event load with the agents consuming meanwhile:
    how far behind they were when it stopped, and how long they took to catch up."""

    seconds: int
    hey: HeyResult
    messages: int  # on the events topic at the end (the group commit's, not requests)
    behind_at_end: int  # messages the agents had not applied when the load stopped
    caught_up_s: float  # from the end of the load to every message applied (-1: never)

    def as_dict(self) -> dict[str, object]:
        return {"seconds": self.seconds, "messages": self.messages,
                "behind_at_end": self.behind_at_end, "caught_up_s": round(self.caught_up_s, 2),
                "target_s": AGENTS_CATCH_UP_TARGET_S} | self.hey.as_dict()


def _topic_messages(reader: Consumer, topic: str) -> int:
    meta = reader.list_topics(topic, timeout=5).topics[topic]
    return sum(reader.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1]
               for p in meta.partitions)


def run_agents_lag(bootstrap: str, workdir: Path, seconds: int) -> LagResult:
    """1-event POSTs from 50 connections at the gateway's full rate for ``seconds``, with
    an agents worker applying them; then the time until it applied every message (its
    /stats count against the topic's end offsets)."""
    workdir = workdir / "lag"
    workdir.mkdir(exist_ok=True)
    settings, worker, gw = gateway_and_agents(bootstrap, workdir, "lag")
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-lag-reader"})
    try:
        worker.wait_serving()
        gw.wait_ready()
        body = workdir / "one.json"
        body.write_bytes(api_body(seed=21, n=1))
        result = hey(gw.url, body, seconds, CLIENTS)
        ended = time.monotonic()
        applied = (worker.stats() or {}).get("messages", 0)
        end = _topic_messages(reader, settings.topic_events)
        behind, caught_up = max(0, end - applied), -1.0  # Tansu's end offsets may trail
        while time.monotonic() - ended < 60:
            end = max(end, _topic_messages(reader, settings.topic_events))
            if (worker.stats() or {}).get("messages", 0) >= end:
                caught_up = time.monotonic() - ended
                break
            time.sleep(0.05)
        return LagResult(seconds, result, end, behind, caught_up)
    finally:
        reader.close()
        gw.stop()
        worker.stop()


def small_table(results: list[SmallResult], seconds: int, note: str = "",
                lag: LagResult | None = None) -> Table:
    floor = results[0].hey.requests_per_s if results else 0.0
    t = Table(title=f"9  Small requests (hey -c {CLIENTS}, {seconds} s each (dialects 5 s), "
              "1 gateway worker, queue_updates=true; dialects at their default ack)",
              caption=f"x floor = requests/s over the bare ASGI app's in the same run; targets: "
              f"1 event (ActionHub, PostHog, Segment) >= {FLOOR_SHARE_TARGET} x floor, 10 events "
              f">= {TEN_EVENTS_TARGET:,} events/s." + (" " + note if note else ""))
    for name in ("load", "req/s", "events/s", "x floor", "p50 / p99 ms", "not ok", "target"):
        t.add_column(name, justify="left" if name == "load" else "right")
    for r in results:
        verdict = ""
        if r.name.startswith(("POST /events, 1 ", *FLOOR_SHARE_DIALECTS)):
            verdict = "PASS" if r.hey.requests_per_s >= FLOOR_SHARE_TARGET * floor else "miss"
        elif r.events_per_request == 10:
            verdict = "PASS" if r.events_per_s >= TEN_EVENTS_TARGET else "miss"
        t.add_row(r.name, f"{r.hey.requests_per_s:,.0f}", f"{r.events_per_s:,.0f}",
                  f"{r.hey.requests_per_s / floor:.2f}" if floor else "",
                  f"{r.hey.p50_ms:.1f} / {r.hey.p99_ms:.1f}", str(r.not_ok), verdict)
    if lag is not None:
        caught = (f"caught up {lag.caught_up_s:.2f} s" if lag.caught_up_s >= 0
                  else "not caught up in 60 s")
        ok = 0 <= lag.caught_up_s <= AGENTS_CATCH_UP_TARGET_S
        t.add_row(f"POST /events, 1 event, {lag.seconds} s with the agents applying: "
                  f"{lag.messages:,} messages, {lag.behind_at_end:,} not applied at the end",
                  f"{lag.hey.requests_per_s:,.0f}", f"{lag.hey.requests_per_s:,.0f}",
                  f"{lag.hey.requests_per_s / floor:.2f}" if floor else "",
                  f"{lag.hey.p50_ms:.1f} / {lag.hey.p99_ms:.1f}", str(lag.hey.not_ok),
                  f"{'PASS' if ok else 'miss'}: {caught}")
    return t


def run_alone(seconds: int, lag_seconds: int) -> dict[str, Any]:
    from bench.run import OUT, log, tansu, wide_console

    cpu_before = cpu_seconds_by_pid()
    peaks: dict[str, float] = {}
    with (tempfile.TemporaryDirectory(prefix="sluice-bench-") as tmp,
          tansu(Path(tmp), "small", peaks) as boot):
        log.log(f"9. small requests: floor, then 1 and 10 events, hey -c {CLIENTS}")
        results = run_small(boot, Path(tmp), seconds)
        log.log(f"9. then {lag_seconds} s of 1-event POSTs with an agents worker applying them")
        lag = run_agents_lag(boot, Path(tmp), lag_seconds)
    foreign = foreign_cpu_s(cpu_before)
    note = (f"Other processes used {foreign:.0f} CPU-s meanwhile: figures are contended."
            if foreign >= 1 else "")
    wide_console().print(small_table(results, seconds, note, lag))
    out = {"seconds": seconds, "foreign_cpu_s": foreign, "runs": [r.as_dict() for r in results],
           "agents_lag": lag.as_dict()}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "small.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=int, default=10, help="length of each load")
    ap.add_argument("--lag-seconds", type=int, default=60,
                    help="length of the single-event load the agents must keep up with")
    args = ap.parse_args(argv)
    return run_alone(args.seconds, args.lag_seconds)


if __name__ == "__main__":
    main()
