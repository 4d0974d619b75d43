"""``make bench``: start the embedded stack, measure one load at a time, print the tables.

Each section gets its own fresh Tansu (in-memory storage grows with what it holds, so a
shared broker would carry one section's data into the next one's figures). Results also
go to ``bench/out/results.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console

from bench import (
    agents,
    dialects,
    gateway,
    producers,
    report,
    scaling,
    sink,
    small,
    soak,
    tls,
    user_reads,
)
from bench.payload import api_body, users_body
from bench.procs import cpu_seconds_by_pid, foreign_cpu_s, new_topic, peak_rss_mib
from services.shared.broker import EmbeddedBroker, free_port
from services.shared.kafka import ensure_topics
from services.shared.settings import Settings

OUT = Path(__file__).resolve().parent / "out"
log = Console(stderr=True)


def wide_console() -> Console:
    return Console(width=max(Console().width, 132))


@contextmanager
def tansu(workdir: Path, phase: str, peaks: dict[str, float]) -> Iterator[str]:
    """A fresh embedded broker; its peak RSS is recorded under ``phase`` before it stops."""
    broker = EmbeddedBroker(port=free_port(), log_path=workdir / f"tansu-{phase}.log").start()
    assert broker.process is not None
    try:
        yield broker.bootstrap
    finally:
        gc.collect()  # close clients of this phase while their broker is still up
        peaks[phase] = peak_rss_mib(broker.process.pid)
        broker.stop()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=int, default=10, help="length of each timed load")
    ap.add_argument("--sink-events", type=int, default=500_000)
    ap.add_argument("--agents-events", type=int, default=300_000,
                    help="events pre-filled for each agents throughput run (capped at --seconds)")
    ap.add_argument("--fresh-posts", type=int, default=200,
                    help="10-event POSTs for freshness, and as many for queue_updates=false")
    ap.add_argument("--dialect-seconds", type=int, default=5,
                    help="length of each dialect's load (section 8)")
    ap.add_argument("--lag-seconds", type=int, default=60,
                    help="single-event load the agents must keep up with (section 9)")
    ap.add_argument("--state-users", type=int, default=1_000_000,
                    help="users the agents hold in section 10 (10000000: the 10M run, ~long)")
    ap.add_argument("--soak-minutes", type=float, default=10.0,
                    help="how long section 13 holds sluice up under load (60: the hour in docs/benchmarks.md)")
    ap.add_argument("--soak-share", type=float, default=0.5,
                    help="the share of its measured capacity the soak holds")
    ap.add_argument("--only", choices=["dialects", "small", "state", "scaling", "tls", "soak"],
                    help="run one section alone (results in bench/out/<section>.json)")
    args = ap.parse_args(argv)
    if args.only == "dialects":
        return dialects.run_alone(args.dialect_seconds)
    if args.only == "small":
        return small.run_alone(args.seconds, args.lag_seconds)
    if args.only == "state":
        return user_reads.run_alone(args.state_users, args.seconds)
    if args.only == "scaling":
        return scaling.run_alone()
    if args.only == "tls":
        return tls.run_alone(args.seconds, args.agents_events)
    if args.only == "soak":
        return soak.run_alone(args.soak_minutes, args.soak_share)
    started = time.perf_counter()
    cpu_before = cpu_seconds_by_pid()
    tansu_peaks: dict[str, float] = {}
    r: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                                     "platform": platform.platform()}}
    with tempfile.TemporaryDirectory(prefix="sluice-bench-") as tmp:
        work = Path(tmp)
        with tansu(work, "producers", tansu_peaks) as boot:
            batches = producers.sample_batches()
            log.log(f"1. raw producers, {args.seconds}s each")
            conf = producers.confluent_ceiling(boot, new_topic(boot, "raw-ck"), batches,
                                               args.seconds)
            aio = producers.aiokafka_ceiling(boot, new_topic(boot, "raw-aio"), batches,
                                             args.seconds)
            del batches
        with tansu(work, "gateway", tansu_peaks) as boot:
            body = work / "body.json"
            body.write_bytes(api_body(seed=1))
            topics = Settings(kafka_bootstrap=boot)
            ensure_topics(topics)  # events, DLQ, assets, user-state: what the gateway follows
            gw = gateway.GatewayProcess(boot, topics.topic_events, free_port(), work)
            try:
                gw.wait_ready()
                log.log(f"2. gateway under hey -c 4 for {args.seconds}s (after 2s warm-up)")
                gateway.hey(gw.url, body, 2, 4)
                full = gateway.hey(gw.url, body, args.seconds, 4)
                gw_peak = peak_rss_mib(gw.pid)
                per_client = full.requests_per_s / 2 / 2
                log.log(f"3. half load: hey -c 2 -q {per_client:.1f} for {args.seconds}s")
                half = gateway.hey(gw.url, body, args.seconds, 2, per_client)
                if full.not_ok or half.not_ok:
                    full.sample_failure = (f"one POST after the load: {gw.post(body.read_bytes())}"
                                           f"\ngateway log tail:\n{gw.log_tail()}")
                # the same, with the realistic mix: 100 users x 10 events per request
                mix_body = work / "body-mix.json"
                mix_body.write_bytes(users_body(1, agents.MIX_USERS, agents.USER_POOL))
                log.log(f"2. gateway, {agents.MIX_USERS} users per request, hey -c 4 and half")
                gateway.hey(gw.url, mix_body, 2, 4)
                mix_full = gateway.hey(gw.url, mix_body, args.seconds, 4)
                mix_half = gateway.hey(gw.url, mix_body, args.seconds, 2,
                                       mix_full.requests_per_s / 2 / 2)
            finally:
                gw.stop()
            # scale-out on one box: a second worker process takes the other core
            gw2 = gateway.GatewayProcess(boot, topics.topic_events, free_port(), work, workers=2)
            try:
                gw2.wait_ready()
                log.log(f"2. gateway, 2 workers, under hey -c 8 for {args.seconds}s")
                gateway.hey(gw2.url, body, 2, 8)
                full2 = gateway.hey(gw2.url, body, args.seconds, 8)
            finally:
                gw2.stop()
        with tansu(work, "sink", tansu_peaks) as boot:
            log.log(f"4. sink: prefill + raw insert of {args.sink_events:,} events, then the sink")
            sunk = sink.run_sink_bench(boot, work, args.sink_events)
        agent_runs = {}
        for users in (agents.MIX_USERS, agents.WORST_USERS):
            with tansu(work, f"agents-{users}u", tansu_peaks) as boot:
                log.log(f"6. agents: one worker on {args.agents_events:,} pre-filled events, "
                        f"{users} users per request (at most {args.seconds}s)")
                agent_runs[users] = agents.run_throughput(boot, work, args.agents_events, users,
                                                          limit_s=args.seconds)
        with tansu(work, "freshness", tansu_peaks) as boot:
            log.log(f"7. freshness: gateway + one agents worker, {args.fresh_posts} POSTs "
                    "queue_updates=true, then as many queue_updates=false")
            fresh, fresh_gw_peak, fresh_agents_peak = agents.run_freshness(
                boot, work, args.fresh_posts)
        with tansu(work, "dialects", tansu_peaks) as boot:
            log.log(f"8. dialects: one gateway, each dialect {args.dialect_seconds}s under "
                    f"hey -c {dialects.CLIENTS}")
            dialect_runs, dialects_gw_peak = dialects.run_dialects(boot, work,
                                                                   args.dialect_seconds)
        with tansu(work, "small", tansu_peaks) as boot:
            log.log(f"9. small requests: floor, then 1 and 10 events, hey -c {small.CLIENTS}")
            small_runs = small.run_small(boot, work, args.seconds)
            log.log(f"9. then {args.lag_seconds} s of 1-event POSTs with an agents worker")
            small_lag = small.run_agents_lag(boot, work, args.lag_seconds)
        with tansu(work, "state", tansu_peaks) as boot:
            log.log(f"10. user state: {args.state_users:,} users in one agents worker, a gateway "
                    f"started afterwards, reads from {user_reads.READERS} connections")
            state = user_reads.run(boot, work, args.state_users, args.seconds)
        with tansu(work, "scaling", tansu_peaks) as boot:
            log.log("11. agents scaled 1 -> 3 under a load one worker cannot hold, "
                    f"{scaling.READERS} readers; then a SIGKILL and a SIGTERM; again at "
                    f"{scaling.MODERATE_SHARE}x")
            scaled = scaling.run_both(boot, work)
        log.log("12. TLS: the gateway and one agents worker, plaintext then through TLS")
        tls_costs = tls.run(work, args.seconds, args.agents_events)
        log.log(f"13. soak: sluice up at {args.soak_share:.0%} of its capacity for "
                f"{args.soak_minutes} min")
        soaked = soak.run(work, args.soak_minutes, args.soak_share)
        mix, worst = agent_runs[agents.MIX_USERS], agent_runs[agents.WORST_USERS]
    r["total_s"] = time.perf_counter() - started
    r["foreign_cpu_s"] = foreign_cpu_s(cpu_before)
    r["producers"] = {"confluent": conf.as_dict(), "aiokafka": aio.as_dict()}
    r["gateway"] = {"full_load": full.as_dict(), "half_load": half.as_dict(),
                    "two_workers": full2.as_dict(),
                    "mix_full_load": mix_full.as_dict(), "mix_half_load": mix_half.as_dict(),
                    "mix_users_per_request": agents.MIX_USERS,
                    "events_over_confluent_ceiling": full.events_per_s / conf.events_per_s}
    r["sink"] = sunk.as_dict()
    r["agents_limit_s"] = args.seconds
    r["agents"] = {"mix": mix.as_dict(), "worst": worst.as_dict(), "user_pool": agents.USER_POOL,
                   "target_events_per_s": report.AGENTS_TARGET}
    r["freshness"] = fresh.as_dict()
    r["dialects"] = {"seconds": args.dialect_seconds, "env": dialects.QUEUE_UPDATES_ENV,
                     "runs": [d.as_dict() for d in dialect_runs]}
    r["small"] = {"clients": small.CLIENTS, "runs": [s.as_dict() for s in small_runs],
                  "agents_lag": small_lag.as_dict()}
    r["state"] = state
    r["scaling"] = scaled
    r["tls"] = tls_costs
    r["soak"] = soaked
    r["peak_rss_mib"] = {"gateway": gw_peak, "tansu": tansu_peaks,
                         "bench_sink": sunk.bench_peak_rss_mib,
                         "bench_sink_note": "bench process (sink thread + its Store) incl. chDB",
                         "agents_mix": mix.peak_rss_mib, "agents_worst": worst.peak_rss_mib,
                         "freshness_gateway": fresh_gw_peak, "freshness_agents": fresh_agents_peak,
                         "dialects_gateway": dialects_gw_peak}
    table = report.build_table(r, conf, aio, full, half, sunk, mix, worst, fresh)
    wide_console().print(table)
    wide_console().print(report.dialects_table(dialect_runs, args.dialect_seconds, dialects_gw_peak))
    wide_console().print(small.small_table(small_runs, args.seconds, lag=small_lag))
    wide_console().print(user_reads.state_table(state))
    wide_console().print(scaling.scaling_table(scaled))
    wide_console().print(tls.tls_table(tls_costs))
    wide_console().print(soak.soak_table(soaked))
    if full.sample_failure:
        log.print(f"[red]non-200 responses seen[/]: {full.sample_failure}")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(r, indent=2, default=str) + "\n")
    log.print(f"results: {OUT / 'results.json'}")
    return r


if __name__ == "__main__":
    main()
