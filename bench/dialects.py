"""Every dialect through the gateway: events/s of one ``sluice gateway`` process per dialect.

One gateway process on its own Tansu (open: no keys file, so nothing is signed) takes, one
dialect at a time, that dialect's largest valid request under ``hey -c 4``: ActionHub 1000
events, Personalize PutEvents 10, retail 100 (an array), UserFlux 50 (a batch), CrowdPower
100 (a bulk), PostHog 100 (posthog-python's batch of ``flush_at``), Segment 100 (a
``/v1/batch``; the token and write key in the body name the program). Each body is first
checked to get the dialect's success status.

The gateway runs with ``SLUICE_QUEUE_UPDATES_DEFAULT=true``: the dialects other than
ActionHub have no ``queue_updates`` knob and use that setting (Personalize always answers
at the broker's ack), and its default (false) would wait for agents, of which the bench
runs none here. So every figure is "answered once the broker holds every event".

``python -m bench.dialects`` (or ``python -m bench.run --only dialects``) runs this section
alone on its own broker.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bench.gateway import GatewayProcess, HeyResult, hey
from bench.payload import LABELS, PROGRAM, TYPES, api_body
from bench.procs import cpu_seconds_by_pid, foreign_cpu_s, peak_rss_mib
from services.shared.broker import free_port
from services.shared.kafka import ensure_topics
from services.shared.settings import Settings

CLIENTS = 4
QUEUE_UPDATES_ENV = {"SLUICE_QUEUE_UPDATES_DEFAULT": "true"}
T_S = 1_795_000_000  # 2026-11-19T...Z: event times, epoch seconds
USERS = 10_000


def _rnd(seed: int) -> random.Random:
    return random.Random(seed)


def actionhub_body(seed: int = 11) -> bytes:
    return api_body(seed=seed)


def personalize_body(seed: int = 12, n: int = 10) -> bytes:
    """PutEvents of one session: ``n`` events with the optional fields an SDK client sends."""
    rnd = _rnd(seed)
    return orjson.dumps({
        "trackingId": PROGRAM, "sessionId": f"session-{rnd.randrange(USERS)}",
        "userId": f"user-{rnd.randrange(USERS)}",
        "eventList": [{
            "eventId": f"evt-{seed}-{i}", "eventType": rnd.choice(TYPES),
            "sentAt": T_S + rnd.random() * 86_400, "itemId": f"sku-{rnd.randrange(50_000)}",
            "eventValue": round(rnd.uniform(1, 100), 2),
            "properties": orjson.dumps({"numberOfRatings": str(rnd.randrange(100)),
                                        "label": rnd.choice(LABELS)}).decode(),
        } for i in range(n)],
    })


def retail_body(seed: int = 13, n: int = 100) -> bytes:
    """An array of ``n`` typed events: sales, views and cart additions of varied customers."""
    rnd = _rnd(seed)
    events = []
    for _ in range(n):
        kind = rnd.choice(("EventSale", "EventProductViewed", "EventAddedToCart"))
        event: dict[str, object] = {
            "type": kind, "customerCode": f"user-{rnd.randrange(USERS)}",
            "productCode": f"sku-{rnd.randrange(50_000)}",
            "timestamp": f"2026-11-{rnd.randint(1, 28):02d}T{rnd.randint(0, 23):02d}:"
            f"{rnd.randint(0, 59):02d}:{rnd.randint(0, 59):02d}.{rnd.randrange(1000):03d}Z",
        }
        if kind != "EventProductViewed":
            event["quantity"] = float(rnd.randint(1, 5))
        if kind == "EventSale":
            event |= {"price": round(rnd.uniform(5, 500), 2), "currency": "EUR",
                      "orderCode": f"order-{rnd.randrange(10**6)}"}
        events.append(event)
    return orjson.dumps(events)


def userflux_body(seed: int = 14, n: int = 50) -> bytes:
    """A batch of ``n`` events, a quarter of them from anonymous visitors."""
    rnd = _rnd(seed)
    return orjson.dumps({"events": [{
        "userId": None if rnd.random() < 0.25 else f"user-{rnd.randrange(USERS)}",
        "anonymousId": f"anon-{rnd.randrange(USERS)}",
        "name": rnd.choice(("page_view", "checkout_started", "signup", "search")),
        "timestamp": T_S * 1000 + rnd.randrange(86_400_000),
        "properties": {"plan": rnd.choice(("free", "pro")), "seats": rnd.randint(1, 9),
                       "tags": rnd.sample(LABELS, 2)},
    } for _ in range(n)]})


def crowdpower_body(seed: int = 15, n: int = 100) -> bytes:
    """A bulk of ``n`` events of one customer (CrowdPower's bulk names one user)."""
    rnd = _rnd(seed)
    user = rnd.randrange(USERS)
    return orjson.dumps({"user_id": f"user-{user}", "email": f"user-{user}@example.com",
                         "events": [{
                             "action": rnd.choice(("upgraded_plan", "login", "invited_user")),
                             "properties": {"plan_name": rnd.choice(("pro", "team")),
                                            "seats": rnd.randint(1, 9)},
                             "created_at": T_S + rnd.randrange(86_400),
                             "update_session": rnd.random() < 0.5,
                         } for _ in range(n)]})


def posthog_body(seed: int = 16, n: int = 100) -> bytes:
    """posthog-python's batch of ``n`` events: product views with an asset and labels."""
    rnd = _rnd(seed)
    return orjson.dumps({"api_key": PROGRAM, "batch": [{
        "event": rnd.choice(("product viewed", "$pageview", "added to cart")),
        "distinct_id": f"user-{rnd.randrange(USERS)}",
        "uuid": str(uuid.UUID(int=rnd.getrandbits(128), version=4)),
        "timestamp": f"2026-11-{rnd.randint(1, 28):02d}T{rnd.randint(0, 23):02d}:00:00+00:00",
        "properties": {"asset_id": f"sku-{rnd.randrange(50_000)}",
                       "labels": rnd.sample(LABELS, 2), "$lib": "posthog-python"},
    } for _ in range(n)]})


def segment_body(seed: int = 17, n: int = 100) -> bytes:
    """A ``/v1/batch`` of ``n`` track calls, as segment-analytics-python sends them."""
    rnd = _rnd(seed)
    return orjson.dumps({"writeKey": PROGRAM, "batch": [{
        "type": "track", "userId": f"user-{rnd.randrange(USERS)}", "anonymousId": None,
        "event": rnd.choice(("Product Viewed", "Product Added")),
        "messageId": str(uuid.UUID(int=rnd.getrandbits(128), version=4)),
        "timestamp": f"2026-11-{rnd.randint(1, 28):02d}T{rnd.randint(0, 23):02d}:00:00+00:00",
        "properties": {"product_id": f"sku-{rnd.randrange(50_000)}",
                       "category": rnd.choice(LABELS), "price": rnd.randint(1, 99)},
        "context": {"library": {"name": "analytics-python", "version": "2.4.0"}},
        "integrations": {},
    } for _ in range(n)]})


@dataclass(frozen=True)
class Dialect:
    name: str
    path: str
    events_per_request: int
    success: int  # the status the vendor answers a good request with
    body: Callable[[], bytes]


DIALECTS = (
    Dialect("ActionHub", "/events", 1000, 200, actionhub_body),
    Dialect("Personalize PutEvents", "/compat/personalize/events", 10, 200, personalize_body),
    Dialect("Retail", "/compat/retail/events", 100, 200, retail_body),
    Dialect("UserFlux batch", "/compat/userflux/event/ingest/batch", 50, 204, userflux_body),
    Dialect("CrowdPower bulk", "/compat/crowdpower/events/bulk", 100, 200, crowdpower_body),
    Dialect("PostHog batch", "/compat/posthog/batch/", 100, 200, posthog_body),
    Dialect("Segment batch", "/compat/segment/v1/batch", 100, 200, segment_body),
)


@dataclass
class DialectResult:
    name: str
    path: str
    events_per_request: int
    success_status: int
    hey: HeyResult = field(repr=False)

    @property
    def ok(self) -> int:
        return self.hey.status.get(self.success_status, 0)

    @property
    def not_ok(self) -> int:
        return (sum(n for code, n in self.hey.status.items() if code != self.success_status)
                + sum(self.hey.errors.values()))

    @property
    def ok_per_s(self) -> float:
        return self.ok / self.hey.seconds if self.hey.seconds else 0.0

    @property
    def events_per_s(self) -> float:
        return self.ok_per_s * self.events_per_request

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "path": self.path,
                "events_per_request": self.events_per_request,
                "success_status": self.success_status, "events_per_s": round(self.events_per_s),
                "success_requests_per_s": round(self.ok_per_s, 1), "p50_ms": self.hey.p50_ms,
                "p99_ms": self.hey.p99_ms, "p99_is_max": self.hey.p99_is_max,
                "non_success": self.not_ok, "status": self.hey.status,
                "errors": self.hey.errors, "seconds": self.hey.seconds}


def post_once(url: str, path: str, body: bytes) -> tuple[int, bytes]:
    req = urllib.request.Request(f"{url}{path}", data=body, method="POST", headers={
        "content-type": "application/json", "program-id": PROGRAM})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def run_dialects(bootstrap: str, workdir: Path, seconds: int = 5,
                 warmup_s: int = 1) -> tuple[list[DialectResult], float]:
    """One gateway on ``bootstrap``; each dialect checked, warmed ``warmup_s``, then
    ``hey -z seconds -c 4``. Returns the results and the gateway's peak RSS (MiB)."""
    workdir = workdir / "dialects"  # its own gateway.log
    workdir.mkdir(exist_ok=True)
    settings = Settings(kafka_bootstrap=bootstrap)
    ensure_topics(settings)  # events, DLQ, assets, user-state: what the gateway follows
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")} | QUEUE_UPDATES_ENV
    gw = GatewayProcess(bootstrap, settings.topic_events, free_port(), workdir, env=env)
    results = []
    try:
        gw.wait_ready()
        for d in DIALECTS:
            body = d.body()
            status, text = post_once(gw.url, d.path, body)
            if status != d.success:
                raise RuntimeError(f"{d.name}: POST {d.path} answered {status}, not "
                                   f"{d.success}: {text[:500]!r}")
            body_file = workdir / f"{d.name.split()[0].lower()}.json"
            body_file.write_bytes(body)
            if warmup_s:
                hey(gw.url, body_file, warmup_s, CLIENTS, path=d.path)
            results.append(DialectResult(d.name, d.path, d.events_per_request, d.success,
                                         hey(gw.url, body_file, seconds, CLIENTS, path=d.path)))
        peak = peak_rss_mib(gw.pid)
    finally:
        gw.stop()
    return results, peak


def run_alone(seconds: int) -> dict[str, Any]:
    """This section alone: its own Tansu, the table, ``bench/out/dialects.json``."""
    from bench.report import dialects_table  # bench.run and bench.report import this module
    from bench.run import OUT, log, tansu, wide_console

    cpu_before = cpu_seconds_by_pid()
    peaks: dict[str, float] = {}
    with (tempfile.TemporaryDirectory(prefix="sluice-bench-") as tmp,
          tansu(Path(tmp), "dialects", peaks) as boot):
        log.log(f"8. dialects: one gateway, each dialect {seconds}s under hey -c {CLIENTS}")
        results, peak = run_dialects(boot, Path(tmp), seconds)
    foreign = foreign_cpu_s(cpu_before)
    note = (f"[yellow]Other processes used {foreign:.0f} CPU-s meanwhile: figures are "
            "contended.[/]" if foreign >= 1 else "")
    wide_console().print(dialects_table(results, seconds, peak, note))
    out = {"seconds": seconds, "env": QUEUE_UPDATES_ENV, "gateway_peak_rss_mib": peak,
           "tansu_peak_rss_mib": peaks["dialects"], "foreign_cpu_s": foreign,
           "dialects": [r.as_dict() for r in results]}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "dialects.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    log.print(f"results: {OUT / 'dialects.json'}")
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dialect-seconds", type=int, default=5, help="length of each dialect's load")
    return run_alone(ap.parse_args(argv).dialect_seconds)


if __name__ == "__main__":
    main()
