"""Section 10: user state at scale. A million users held by the agents, none by gateways.

One ``sluice agents`` worker applies ``users`` users (one event each, pre-filled as the
gateway publishes 1000-event requests) into its RocksDB store. Then:

- the worker's RSS and its store's bytes on disk, per user;
- a ``sluice gateway`` started afterwards: seconds to ``/readyz`` 200, and its RSS (it keeps
  the asset catalog, not the users);
- reads from 50 connections (wrk, a random user of the million per request): label weights,
  then recommendations (ranked by the gateway over a catalog of ``CATALOG`` assets);
- the worker SIGKILLed and restarted on its own store: seconds from the new process to
  the first right read through the gateway (its partitions served again).

    .venv/bin/python -m bench.run --only state [--state-users 10000000]

Prints one JSON object (bench/out/state.json with --only).
"""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from bench.agents import AgentsProcess, bench_settings, env_for
from bench.gateway import GatewayProcess
from bench.payload import LABELS, PROGRAM
from bench.procs import peak_rss_mib
from bench.state_store import prefill, rss_mib, wait_stats
from services.embedded_processes import EMBEDDED_SESSION_TIMEOUT_S
from services.shared.broker import EmbeddedBroker, free_port
from services.shared.kafka import ensure_topics
from streams.slots import store_bytes

READERS = 50
CATALOG = 5_000  # assets sku-0.. (the pre-filled events name sku-0..49999: some are known)
OUT = Path(__file__).parent / "out"

# reads a second per reader in the paced runs: weights 50 x 20 = 1,000/s; recommendations
# (ranked by the gateway: ~0.45 ms of its CPU each over this catalog) 50 x 5 = 250/s
PACED_RATES = {"label-weights": 20, "recommendations": 5}
WRK_SCRIPT = """
wrk.headers["program-id"] = "%(program)s"
math.randomseed(%(seed)d)
request = function()
  return wrk.format("GET", "/users/user-" .. math.random(0, %(last)d) .. "/%(what)s")
end
%(delay)s
"""


def put_catalog(base: str) -> None:
    for first in range(0, CATALOG, 1000):
        assets = [{"asset_id": f"sku-{a}", "labels": [LABELS[a % len(LABELS)],
                                                      LABELS[(a * 7 + 1) % len(LABELS)]]}
                  for a in range(first, min(first + 1000, CATALOG))]
        request = urllib.request.Request(
            f"{base}/assets", data=orjson.dumps({"assets": assets}), method="PUT",
            headers={"content-type": "application/json", "program-id": PROGRAM})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200


def read(base: str, user: int) -> int:
    request = urllib.request.Request(f"{base}/users/user-{user}/label-weights",
                                     headers={"program-id": PROGRAM})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            events = orjson.loads(response.read())["events"]
            return 200 if events == 1 else -1  # -1: answered, but not the user's state
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return 0


def wrk(base: str, what: str, users: int, seconds: int, workdir: Path,
        paced: bool = False) -> dict[str, Any]:
    """``READERS`` connections reading random users: back to back (the most it serves), or
    ``paced``: each reader waits 1/PACED_RATES[what] s (jittered) between reads (latency at
    a known load; wrk's latency excludes the wait)."""
    script = workdir / f"{what}.lua"
    wait_ms = 1000 // PACED_RATES[what]
    delay = (f"delay = function() return math.random({wait_ms // 2}, {wait_ms * 3 // 2}) end"
             if paced else "")
    script.write_text(WRK_SCRIPT % {"program": PROGRAM, "seed": random.randrange(10**6),
                                    "last": users - 1, "what": what, "delay": delay})
    done = subprocess.run(
        ["wrk", "-t2", f"-c{READERS}", f"-d{seconds}s", "--latency", "-s", str(script), base],
        capture_output=True, text=True, timeout=seconds + 60, check=True)
    out = done.stdout

    def ms(label: str) -> float:
        match = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
        if match is None:
            return float("nan")
        value, unit = float(match[1]), match[2]
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    requests = re.search(r"(\d+) requests in", out)
    return {"requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1]),  # type: ignore[index]
            "requests": int(requests[1]) if requests else 0,
            "non_2xx": int(non_2xx[1]) if non_2xx else 0,
            "p50_ms": ms("50"), "p99_ms": ms("99")}


def run(bootstrap: str, workdir: Path, users: int, seconds: int) -> dict[str, Any]:
    settings = bench_settings(bootstrap, workdir, "state")
    settings.agents_session_timeout_s = EMBEDDED_SESSION_TIMEOUT_S  # as `sluice up` on Tansu
    ensure_topics(settings)
    t0 = time.perf_counter()
    messages = prefill(settings, users, 1)
    out: dict[str, Any] = {"users": users, "messages": messages,
                           "prefill_s": round(time.perf_counter() - t0, 1)}
    started = time.perf_counter()
    worker = AgentsProcess(settings, workdir)
    gateway: GatewayProcess | None = None
    try:
        wait_stats(worker, lambda s: s["messages"] >= messages, 3600)
        disk = store_bytes(settings)
        out["agents"] = {"apply_s": round(time.perf_counter() - started, 1),
                         "users_per_s": round(users / (time.perf_counter() - started)),
                         "rss_mib": round(rss_mib(worker.pid)),
                         "peak_rss_mib": round(peak_rss_mib(worker.pid)),
                         "disk_mib": round(disk / 2**20, 1),
                         "disk_bytes_per_user": round(disk / users)}
        started = time.perf_counter()
        gateway = GatewayProcess(bootstrap, settings.topic_events, settings.http_port, workdir,
                                 env=env_for(settings))
        gateway.wait_ready()
        out["gateway"] = {"ready_s": round(time.perf_counter() - started, 2),
                          "rss_mib": round(rss_mib(gateway.pid))}
        put_catalog(gateway.url)
        assert read(gateway.url, users - 1) == 200, "the last user is not readable"
        out["reads"] = {}
        for what in ("label-weights", "recommendations"):
            wrk(gateway.url, what, users, 2, workdir)  # warm-up: connections, caches
            out["reads"][what] = wrk(gateway.url, what, users, seconds, workdir)
            out["reads"][f"{what}, paced"] = wrk(gateway.url, what, users, seconds, workdir,
                                                 paced=True)
        out["gateway"]["rss_mib_after_reads"] = round(rss_mib(gateway.pid))
        out["gateway"]["peak_rss_mib"] = round(peak_rss_mib(gateway.pid))
        out["agents"]["rss_mib_after_reads"] = round(rss_mib(worker.pid))
        time.sleep(3)  # Faust commits source offsets every 2.8 s: a restart then replays none
        worker.process.send_signal(signal.SIGKILL)
        worker.process.wait(30)
        started = time.perf_counter()
        worker = AgentsProcess(settings, workdir)
        probes = random.sample(range(users), 20)
        while read(gateway.url, probes[0]) != 200:
            if time.perf_counter() - started > 600:
                raise RuntimeError(f"not serving 600 s after the restart: {worker.log_tail()}")
            time.sleep(0.05)
        serving_s = time.perf_counter() - started
        wrong = [u for u in probes if read(gateway.url, u) != 200]
        stats = worker.stats() or {}
        out["restart_after_sigkill"] = {
            "serving_s": round(serving_s, 2), "probes_wrong": len(wrong),
            "changelog_recovered": stats.get("changelog_recovered"),
            "rss_mib": round(rss_mib(worker.pid))}
    finally:
        worker.stop()
        if gateway is not None:
            gateway.stop()
    return out


def run_alone(users: int, seconds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sluice-state-") as tmp:
        workdir = Path(tmp)
        broker = EmbeddedBroker(port=free_port(), log_path=workdir / "tansu.log").start()
        try:
            result = run(broker.bootstrap, workdir, users, seconds)
        finally:
            broker.stop()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "state.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    Console(width=160).print(state_table(result))
    return result


def state_table(r: dict[str, Any]) -> Table:
    """Section 10's rows next to issue 14's targets."""
    table = Table(title=f"10. user state at scale: {r['users']:,} users, one agents worker")
    for column in ("row", "measured", "target"):
        table.add_column(column)
    agents, gateway, reads = r["agents"], r["gateway"], r["reads"]
    restart = r["restart_after_sigkill"]
    table.add_row("agents worker RSS after the backlog (peak; after reads)",
                  f"{agents['rss_mib']} MiB ({agents['peak_rss_mib']}; "
                  f"{agents['rss_mib_after_reads']} MiB)", "<= 300 MB")
    table.add_row("store on disk", f"{agents['disk_mib']} MiB, "
                  f"{agents['disk_bytes_per_user']} B/user", "")
    table.add_row("a gateway started afterwards: ready", f"{gateway['ready_s']} s", "<= 3 s")
    table.add_row("that gateway's RSS (after reads)",
                  f"{gateway['rss_mib']} MiB ({gateway['rss_mib_after_reads']} MiB)", "<= 150 MB")
    for what, row in reads.items():
        base = what.removesuffix(", paced")
        readers = (f"{READERS} readers x {PACED_RATES[base]}/s" if what.endswith("paced")
                   else f"{READERS} readers back to back")
        table.add_row(f"{base}, {readers}",
                      f"{row['requests_per_s']:,.0f} req/s, p50/p99 {row['p50_ms']:.1f}/"
                      f"{row['p99_ms']:.1f} ms, non-2xx {row['non_2xx']}", "p99 < 20 ms")
    for paced in ("", ", paced"):  # issue 21: ranking may cost a read no more than that
        weights, recs = reads.get(f"label-weights{paced}"), reads.get(f"recommendations{paced}")
        if weights and recs:
            table.add_row(f"recommendations p99 / label-weights p99{paced}",
                          f"{recs['p99_ms'] / weights['p99_ms']:.1f}x", "<= 3x")
    table.add_row("worker SIGKILLed, restarted: reads right again",
                  f"{restart['serving_s']} s ({restart['probes_wrong']} of 20 probes wrong)",
                  "<= 10 s")
    return table
