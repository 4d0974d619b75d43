"""Rolls of the embedded broker with a million users in state (issue 23; not in make bench:
about seven minutes).

`sluice up` (its own process, free ports) gets one event for each of ``--users`` users
(1000-event requests of 1000 distinct users, flat out), then ``--rate`` such requests a
second, cycling over the users, until ``--rolls`` rolls of its broker have happened or
``--limit`` seconds passed. Reported: each roll's length and how long waits for user state
were held (sluice up's log), every answer's status, the slowest request, each role's peak
RSS (sampled every 0.5 s), and, once the consumers caught up, whether a sample of users
counts exactly the events acked for them.

    python -m bench.roll_users [--users 1000000] [--rate 25] [--bound-mb 768]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.payload import PROGRAM
from bench.soak import ROLLED, Stack, drained

BLOCK = 1000  # users per request, one event each
CLIENTS = 3


def block_body(block: int) -> bytes:
    return orjson.dumps({"events": [
        {"user_id": f"u{block * BLOCK + i}", "event_timestamp": "2026-12-01T10:00:00Z",
         "event_type": "click", "asset_id": f"sku-{i}", "labels": ["shoes"]}
        for i in range(BLOCK)]})


class Load:
    """CLIENTS threads posting the blocks in turn: flat out, then ``rate`` requests/s."""

    def __init__(self, url: str, blocks: int) -> None:
        self.url, self.blocks = url, blocks
        self.sent = 0
        self.acked: Counter[int] = Counter()  # block -> requests answered 200
        self.answers: Counter[int] = Counter()
        self.seconds: list[float] = []
        self.rate = 0.0
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, name=f"client-{i}")
                         for i in range(CLIENTS)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def join(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join()

    def _next(self) -> int:
        with self._lock:
            block, self.sent = self.sent % self.blocks, self.sent + 1
            return block

    def _client(self) -> None:
        headers = {"program-id": PROGRAM, "content-type": "application/json"}
        paced_from: float | None = None
        k = 0
        with httpx.Client(base_url=self.url, headers=headers, timeout=60) as http:
            while not self.stop.is_set():
                if self.rate:
                    paced_from = paced_from or time.monotonic()
                    k += 1
                    time.sleep(max(0.0, paced_from + k * CLIENTS / self.rate - time.monotonic()))
                block = self._next()
                began = time.monotonic()
                response = http.post("/events?queue_updates=true", content=block_body(block))
                self.seconds.append(time.monotonic() - began)
                self.answers[response.status_code] += 1
                if response.status_code == 200:
                    self.acked[block] += 1
                else:  # backpressure: as a client would
                    time.sleep(float(response.headers.get("retry-after", "1")))


def run(workdir: Path, users: int, rate: float, bound_mb: int, rolls: int,
        limit_s: float) -> dict[str, Any]:
    stack = Stack(workdir, env={"SLUICE_EMBEDDED_BROKER_MAX_MB": str(bound_mb)})
    peak: dict[str, float] = {}
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            for role, mib in stack.rss_mib().items():
                peak[role] = max(peak.get(role, 0.0), mib)
            sampling.wait(0.5)

    try:
        stack.wait_ready()
        sampler = threading.Thread(target=sample, name="rss")
        sampler.start()
        load = Load(stack.url, users // BLOCK)
        began = time.monotonic()
        load.start()
        while load.sent < load.blocks and time.monotonic() - began < limit_s:
            time.sleep(0.2)
        populated_s = time.monotonic() - began
        load.rate = rate
        while time.monotonic() - began < limit_s:
            time.sleep(2)
            if stack.metrics().get("sluice_embedded_broker_rolls_total", 0) >= rolls:
                break
        load.join()
        drained(stack)
        rnd = random.Random(1)
        sample_users = [(block, i) for block in rnd.sample(range(load.blocks), 20)
                        for i in rnd.sample(range(BLOCK), 5)]
        with httpx.Client(base_url=stack.url, headers={"program-id": PROGRAM}, timeout=30) as http:
            wrong = sum(http.get(f"/users/u{block * BLOCK + i}/label-weights").json()["events"]
                        != load.acked[block] for block, i in sample_users)
        sampling.set()
        sampler.join()
    finally:
        sampling.set()
        stack.stop()
    seconds = sorted(load.seconds)
    return {
        "users": users, "rate_requests_per_s": rate, "bound_mb": bound_mb,
        "populated_s": round(populated_s, 1),
        "rolls": [{"took_s": float(m.group(1)), "waits_held_s": float(m.group(2))}
                  for m in ROLLED.finditer(stack.log.read_text(errors="replace"))],
        "answers": dict(load.answers), "p99_s": round(seconds[int(0.99 * len(seconds))], 3),
        "slowest_s": round(seconds[-1], 3), "sampled_users": len(sample_users),
        "sampled_users_wrong": wrong, "peak_rss_mib": {k: round(v) for k, v in peak.items()},
        "roll_log": roll_log(stack.log, workdir / "data" / "agents.log"),
    }


STEP = re.compile(r"rolling the|prepared the next|roll: |rolled the|agents: loaded|told to recover")


def roll_log(*logs: Path) -> list[str]:
    """Each roll's steps, timed, from `sluice up`'s log and the agents' (where its 20 s go)."""
    lines = [line for log in logs if log.exists()
             for line in log.read_text(errors="replace").splitlines() if STEP.search(line)]
    return sorted(line[:200] for line in lines)  # both logs open with the time


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from bench.run import OUT

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--rate", type=float, default=25.0, help="1000-event requests a second")
    ap.add_argument("--bound-mb", type=int, default=768, help="SLUICE_EMBEDDED_BROKER_MAX_MB")
    ap.add_argument("--rolls", type=int, default=2)
    ap.add_argument("--limit", type=float, default=600.0, help="seconds of load at most")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sluice-roll-users-") as tmp:
        out = run(Path(tmp), args.users, args.rate, args.bound_mb, args.rolls, args.limit)
    print(json.dumps(out, indent=2))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "roll_users.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
