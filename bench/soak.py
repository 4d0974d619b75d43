"""Section 13, soak: `sluice up` (the embedded default, as users run it) held for minutes
to hours at a fixed share of the capacity it measured on itself.

Every other figure of make bench lasts seconds; what fails over hours is what grows: a
role's memory, the embedded broker's (Tansu keeps every event in memory), lag that
creeps up, freshness that slowly worsens. So: 15 s flat out (hey -c 4, 1000-event
requests of 100 users, queue_updates=true) measure the stack's capacity as the slowest
of what the gateway acked, the sink stored and the agents applied; after the lag has
drained, hey holds ``share`` of it for ``minutes``. Each second: every role's RSS
(`sluice up` = gateway + sink + chDB; the agents worker; Tansu) and the roles' /metrics.
Each minute: events acked/stored/applied per second, non-2xx answers, state freshness
p50/p99 (from the histogram's buckets: an upper bound), the largest lag seen, RSS, the
embedded broker's rolls (services.broker_roll: a counter reset by a roll's new agents
worker counts on from 0). The verdict says, per series, whether it is flat after warm-up:
the slope fitted to the per-second samples, projected over an hour, under 10% of its level
(or under 20 MiB). After the load, once the consumers caught up: the run's totals, the
events applied taken from the users' own state (their record's count, exact across rolls).

    python -m bench.soak --minutes 10 [--share 0.5]   (or make bench; --only soak)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
from prometheus_client.parser import text_string_to_metric_families
from rich.table import Table

from bench.gateway import hey
from bench.payload import PROGRAM, users_body
from bench.procs import log_tail, stop_process
from services.shared.broker import free_port
from services.shared.settings import Settings

CLIENTS = 4
USERS_PER_REQUEST = 100
EVENTS_PER_REQUEST = 1000
WARMUP_MIN = 2  # minutes left out of the verdict (first minute's allocations, JIT of caches)
FLAT_SHARE_PER_HOUR = 0.10
FLAT_MIB_PER_HOUR = 20.0


def scrape(url: str) -> dict[str, Any]:
    """name -> value summed over labels; histogram buckets as name -> {le: count}; lag as
    sluice_consumer_lag:<group> -> messages; chDB's memory as chdb:<what> -> bytes."""
    try:
        text = httpx.get(url, timeout=2).text
    except httpx.HTTPError:
        return {}
    out: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "sluice_state_freshness_seconds_bucket":
                buckets = out.setdefault("freshness", {})
                buckets[float(s.labels["le"])] = buckets.get(float(s.labels["le"]), 0) + s.value
            elif s.name == "sluice_consumer_lag":
                key = f"lag:{s.labels.get('group', '?')}"
                out[key] = out.get(key, 0.0) + s.value
            elif s.name == "sluice_clickhouse_memory_bytes":  # parts of one another: apart
                out[f"chdb:{s.labels.get('what', '?')}"] = s.value
            elif s.name == "sluice_http_requests_total" and s.labels.get("status", "")[:1] != "2":
                out["non_2xx"] = out.get("non_2xx", 0.0) + s.value
            else:
                out[s.name] = out.get(s.name, 0.0) + s.value
    return out


def quantile(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
    """The ``q`` quantile of what a histogram counted between two scrapes: the upper bound
    of the bucket it falls in (None when nothing was counted)."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]  # cumulative, per bucket
    if not counts or counts[-1] <= 0:
        return None
    for bound, n in zip(bounds, counts, strict=True):
        if n >= q * counts[-1]:
            return bound
    return bounds[-1]


@dataclass
class Stack:
    """`sluice up` in a process of its own, on free ports, in ``workdir``."""

    workdir: Path
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.http, self.agents_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")} | {
            "SLUICE_DATA_DIR": str(self.workdir / "data"), "SLUICE_HTTP_PORT": str(self.http),
            "SLUICE_EMBEDDED_BROKER_PORT": str(free_port()),
            "SLUICE_AGENTS_WEB_PORT": str(self.agents_port)} | self.env
        self.log = self.workdir / "up.log"
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "services.cli", "up"],
                                            env=env, stdout=out, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.http}"

    def wait_ready(self, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sluice up exited: {log_tail(self.log)}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"sluice up not ready in {timeout_s}s: {log_tail(self.log)}")

    def rss_mib(self) -> dict[str, float]:
        """Resident memory of `sluice up` itself and of each child (tansu, agents)."""
        out: dict[str, float] = {}
        try:
            me = psutil.Process(self.process.pid)
            out["up"] = me.memory_info().rss / 2**20
            for child in me.children():
                kind = "tansu" if "tansu" in " ".join(child.cmdline()) else "agents"
                out[kind] = out.get(kind, 0.0) + child.memory_info().rss / 2**20
        except psutil.Error:
            pass
        return out

    def metrics(self) -> dict[str, Any]:
        gateway = scrape(f"{self.url}/metrics")
        if gateway:  # a labelled counter shows only once counted: 0 until the first roll
            gateway.setdefault("sluice_embedded_broker_rolls_total", 0.0)
        agents = scrape(f"http://127.0.0.1:{self.agents_port}/metrics")
        # every process exports every sluice_* family (zeros where it is not that role)
        return gateway | {k: v for k, v in agents.items()
                          if k not in gateway or k.startswith(("sluice_agents", "freshness"))}

    def state_events(self, users: list[str]) -> int:
        """Events applied to these users' state, as the agents hold it (their record's count:
        exact across rolls and restarts, unlike a worker's own counter)."""
        with httpx.Client(base_url=self.url, headers={"program-id": PROGRAM}, timeout=30) as http:
            return sum(http.get(f"/users/{user}/label-weights").json()["events"] for user in users)

    def stop(self) -> None:
        stop_process(self.process, 90)


def capacity(stack: Stack, body: Path) -> dict[str, float]:
    """Events/s the stack acks, stores and applies flat out for 15 s (hey -c 4)."""
    before, began = stack.metrics(), time.monotonic()
    hey(stack.url, body, 15, CLIENTS)
    after, elapsed = stack.metrics(), time.monotonic() - began
    rate = {name: (after.get(sample, 0.0) - before.get(sample, 0.0)) / elapsed
            for name, sample in (("acked", "sluice_events_accepted_total"),
                                 ("stored", "sluice_sink_rows_total"),
                                 ("applied", "sluice_agents_events_total"))}
    return rate | {"capacity": min(rate.values())}


def drained(stack: Stack, timeout_s: float = 300) -> float:
    """Seconds until neither group lags (after the capacity run)."""
    began = time.monotonic()
    while time.monotonic() - began < timeout_s:
        m = stack.metrics()
        lags = [v for k, v in m.items() if k.startswith("lag:")]
        if lags and max(lags) == 0:
            break
        time.sleep(1)
    return time.monotonic() - began


def run(workdir: Path, minutes: float, share: float) -> dict[str, Any]:
    body = workdir / "soak-body.json"
    body.write_bytes(users_body(13, USERS_PER_REQUEST, pool=10_000, n=EVENTS_PER_REQUEST))
    users = sorted({e["user_id"] for e in json.loads(body.read_bytes())["events"]})
    stack = Stack(workdir)
    try:
        stack.wait_ready()
        cap = capacity(stack, body)
        drain_s = drained(stack)
        applied_before = stack.state_events(users)
        rate = share * cap["capacity"]
        if rate <= 0:
            raise RuntimeError(f"no capacity measured: {cap}")
        per_client = rate / EVENTS_PER_REQUEST / CLIENTS
        samples: list[dict[str, Any]] = []
        stop = threading.Event()

        def sample() -> None:
            began = time.monotonic()
            while not stop.is_set():
                samples.append({"t": time.monotonic() - began, "rss": stack.rss_mib(),
                                "m": stack.metrics()})
                stop.wait(max(0.0, len(samples) - (time.monotonic() - began)))

        sampler = threading.Thread(target=sample, name="soak-sampler")
        sampler.start()
        try:
            load = hey(stack.url, body, int(minutes * 60), CLIENTS, per_client)
        finally:
            stop.set()
            sampler.join()
        # one more sample once the consumers have caught up: the totals then compare
        drained(stack, timeout_s=120)
        time.sleep(2)
        samples.append({"t": samples[-1]["t"] + 1 if samples else 0.0, "rss": stack.rss_mib(),
                        "m": stack.metrics(), "drained": True})
        in_state = stack.state_events(users) - applied_before
    finally:
        stack.stop()
    waits = roll_waits(stack.log.read_text(errors="replace"))
    rows = per_minute(samples)
    return {"minutes": minutes, "share": share, "capacity_events_per_s": cap,
            "drain_after_capacity_s": round(drain_s, 1), "target_events_per_s": round(rate),
            "hey": load.as_dict() | {"events_per_s": round(load.ok * EVENTS_PER_REQUEST
                                                           / max(load.seconds, 1e-9)),
                                     "slowest_s": slowest_s(load.raw)},
            "minutes_table": rows, "verdict": verdict(samples),
            "totals": totals(samples) | {"in_state": in_state, "roll_waits_s": waits}}


# services.broker_roll's line per roll: its length, and how long waits for user state held
ROLLED = re.compile(r"rolled the embedded broker in ([\d.]+) s.*?waits for user state held "
                    r"([\d.]+) s")


def roll_waits(log_text: str) -> list[float]:
    """Per roll, how long ``queue_updates=false`` / ``wait=user`` requests were held (from
    sluice up's log: services.broker_roll's line)."""
    return [float(m.group(2)) for m in ROLLED.finditer(log_text)]


def totals(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """What the whole run acked, stored and applied, and what the broker's rolls did."""
    last: dict[str, Any] = next((s["m"] for s in reversed(samples) if s["m"]), {})
    rolls = last.get("sluice_embedded_broker_rolls_total", 0)
    took = last.get("sluice_embedded_broker_roll_seconds_sum", 0.0)
    return {"acked": int(increase(samples, "sluice_events_accepted_total")),
            "stored": int(increase(samples, "sluice_sink_rows_total")),
            "applied": int(increase(samples, "sluice_agents_events_total")),
            "rolls": int(rolls), "roll_mean_s": round(took / rolls, 1) if rolls else None,
            "tansu_max_mib": max((s["rss"].get("tansu", 0.0) for s in samples), default=0.0),
            "broker_max_mb": Settings().embedded_broker_max_mb}


def slowest_s(hey_output: str) -> float | None:
    """hey's slowest request (before 2026-12-06, one that came during a roll of the broker
    waited for part of it)."""
    found = re.search(r"Slowest:\s+([\d.]+) secs", hey_output)
    return float(found.group(1)) if found else None


def increase(samples: list[dict[str, Any]], name: str) -> float:
    """What counter ``name`` counted over ``samples``, as Prometheus' increase(): a counter
    that went down was reset (an agents worker restarted by a roll of the broker), and a
    scrape that did not answer (a roll's gap) is skipped."""
    total = 0.0
    last: float | None = None
    for s in samples:
        value = s["m"].get(name)
        if value is None:
            continue
        if last is not None:
            total += value - last if value >= last else value
        last = value
    return total


def per_minute(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    timed = [s for s in samples if not s.get("drained")]
    for minute in range(int(timed[-1]["t"] // 60) + 1 if timed else 0):
        window = [s for s in timed if minute * 60 <= s["t"] < (minute + 1) * 60]
        if len(window) < 2:
            continue
        answered = [s for s in window if s["m"]] or window
        last = answered[-1]["m"]
        # what the run counted until the minute's end less what it had counted before it:
        # a change at the minute's edge, or across a scrape that did not answer, counts
        earlier = [s for s in timed if s["t"] < minute * 60]
        upto = earlier + window
        span = window[-1]["t"] - (earlier or window)[-1 if earlier else 0]["t"]

        def counted(name: str, a: list[dict[str, Any]] = earlier,
                    b: list[dict[str, Any]] = upto) -> float:
            return increase(b, name) - increase(a, name)

        def rate(name: str, dt: float = span) -> float:
            return counted(name) / dt if dt else 0.0

        # the agents' histogram starts again with each worker: the newest worker's share
        fresh = [s["m"]["freshness"] for s in answered if "freshness" in s["m"]] or [{}]
        fresh_a, fresh_b = fresh[0], fresh[-1]
        if any(sum(b.values()) < sum(a.values()) for a, b in pairwise(fresh)):
            fresh_a = {}
        rows.append({
            "minute": minute + 1,
            "acked_per_s": round(rate("sluice_events_accepted_total")),
            "stored_per_s": round(rate("sluice_sink_rows_total")),
            "applied_per_s": round(rate("sluice_agents_events_total")),
            "non_2xx": int(counted("non_2xx")),
            "rolls": int(counted("sluice_embedded_broker_rolls_total")),
            "freshness_p50_s": quantile(fresh_a, fresh_b, 0.5),
            "freshness_p99_s": quantile(fresh_a, fresh_b, 0.99),
            "lag_max": {k[4:]: int(max(s["m"].get(k, 0) for s in window))
                        for k in sorted(last) if k.startswith("lag:")},
            "rss_mib": {k: round(v, 1) for k, v in window[-1]["rss"].items()},
            # what of `sluice up`'s RSS embedded ClickHouse's allocator holds
            "chdb_tracked_mib": round(last.get("chdb:tracked", 0.0) / 2**20, 1),
            "backpressure": bool(max(s["m"].get("sluice_gateway_backpressure", 0)
                                     for s in window)),
        })
    return rows


def verdict(samples: list[dict[str, Any]]) -> dict[str, dict[str, float | bool]]:
    """Per RSS series: MiB per hour fitted after warm-up, and whether that is flat."""
    after = [s for s in samples if s["t"] >= WARMUP_MIN * 60] or samples
    out: dict[str, dict[str, float | bool]] = {}
    for role in sorted({k for s in after for k in s["rss"]}):
        points = [(s["t"], s["rss"][role]) for s in after if role in s["rss"]]
        if len(points) < 10:
            continue
        t, v = np.array(points).T
        slope_h = float(np.polyfit(t, v, 1)[0]) * 3600
        level = float(v.mean())
        flat = abs(slope_h) < max(FLAT_MIB_PER_HOUR, FLAT_SHARE_PER_HOUR * level)
        out[f"rss {role}"] = {"mib": round(level, 1), "mib_per_hour": round(slope_h, 1),
                              "flat": flat}
    return out


def soak_table(r: dict[str, Any]) -> Table:
    cap = r["capacity_events_per_s"]
    t = Table(title=(
        f"13. Soak: sluice up for {r['minutes']} min at {r['share']:.0%} of its capacity "
        f"({r['target_events_per_s']:,} of {cap['capacity']:,.0f} events/s: acked "
        f"{cap['acked']:,.0f}, stored {cap['stored']:,.0f}, applied {cap['applied']:,.0f} "
        f"flat out), hey -c {CLIENTS}, {EVENTS_PER_REQUEST}-event requests"))
    for column in ("min", "acked/s", "stored/s", "applied/s", "non-2xx", "fresh p50/p99 s",
                   "lag max (msgs)", "RSS up / agents / tansu MiB", "chDB tracked MiB",
                   "broker rolls", "refusing"):
        t.add_column(column, justify="right")
    for row in r["minutes_table"]:
        rss = row["rss_mib"]
        t.add_row(str(row["minute"]), f"{row['acked_per_s']:,}", f"{row['stored_per_s']:,}",
                  f"{row['applied_per_s']:,}", str(row["non_2xx"]),
                  f"{row['freshness_p50_s']} / {row['freshness_p99_s']}",
                  " ".join(f"{k}:{v:,}" for k, v in row["lag_max"].items()),
                  f"{rss.get('up', 0):.0f} / {rss.get('agents', 0):.0f} / "
                  f"{rss.get('tansu', 0):.0f}", f"{row.get('chdb_tracked_mib', 0):.0f}",
                  str(row.get("rolls", 0) or ""),
                  "yes" if row["backpressure"] else "")
    verdicts = "; ".join(f"{name} {v['mib']} MiB, {v['mib_per_hour']:+} MiB/h "
                         f"({'flat' if v['flat'] else 'GROWS'})" for name, v in r["verdict"].items())
    total = r["totals"]
    waits = total.get("roll_waits_s") or [0.0]
    rolls = (f"{total['rolls']} rolls, {total['roll_mean_s']} s each on average, the two "
             "brokers' RSS summed meanwhile; waits for user state held "
             f"{min(waits)}-{max(waits)} s a roll" if total["rolls"] else "no roll")
    t.caption = (f"After {WARMUP_MIN} min of warm-up: {verdicts}. Tansu at most "
                 f"{total['tansu_max_mib']:,.0f} MiB (bound {total['broker_max_mb']:,} MiB; "
                 f"{rolls}). Over the run: acked {total['acked']:,}, stored "
                 f"{total['stored']:,}, applied {total.get('in_state', total['applied']):,} "
                 "events (users' state). Freshness from the "
                 f"histogram's buckets (upper bounds). hey answered {r['hey']['status']} over "
                 f"{r['hey']['seconds']:.0f} s (slowest {r['hey'].get('slowest_s', '?')} s).")
    return t


def run_alone(minutes: float, share: float) -> dict[str, Any]:
    from bench.run import OUT, log, wide_console

    with tempfile.TemporaryDirectory(prefix="sluice-soak-") as tmp:
        log.log(f"13. soak: sluice up, capacity for 15 s, then {share:.0%} of it for "
                f"{minutes} min")
        out = run(Path(tmp), minutes, share)
    wide_console().print(soak_table(out))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "soak.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--share", type=float, default=0.5, help="of the measured capacity")
    args = ap.parse_args(argv)
    return run_alone(args.minutes, args.share)


if __name__ == "__main__":
    main()
