"""The tables ``make bench`` prints (rich): all sections, then the dialects (section 8).

Targets are informative: a miss shows FAIL but never fails the process, since figures
on a shared 2-core machine are evidence to read, not a gate.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table

from bench.agents import USER_POOL, AgentsResult, FreshnessResult, pct
from bench.dialects import CLIENTS as DIALECT_CLIENTS
from bench.dialects import DialectResult
from bench.gateway import HeyResult
from bench.producers import ProducerResult
from bench.sink import SinkResult

GATEWAY_TARGET = 100_000  # events/s
P99_TARGET_MS = 100.0  # at half load
SINK_RATIO_TARGET = 0.8  # sink rows/s over raw insert rows/s
AGENTS_TARGET = 20_000  # events/s per agents worker


def verdicts(full: HeyResult, half: HeyResult, sink: SinkResult, mix: AgentsResult,
             worst: AgentsResult) -> dict[str, bool]:
    return {
        "gateway_events_per_s": full.events_per_s >= GATEWAY_TARGET,
        "gateway_non_200_zero": full.not_ok + half.not_ok == 0,
        "half_load_p99": half.p99_ms < P99_TARGET_MS,
        "sink_over_raw": sink.ratio >= SINK_RATIO_TARGET,
        "agents_mix_events_per_s": mix.events_per_s >= AGENTS_TARGET,
        "agents_worst_events_per_s": worst.events_per_s >= AGENTS_TARGET,
    }


def _mark(ok: bool | None) -> str:
    return "" if ok is None else ("[green]PASS[/]" if ok else "[red]FAIL[/]")


def _p99(h: HeyResult) -> str:
    return f"{h.p99_ms:.1f} ms" + (" (max: <100 requests)" if h.p99_is_max else "")


def _agents(a: AgentsResult) -> str:
    return f"{a.events_per_s:,.0f} events/s ({a.messages_per_s:,.0f} msg/s)"


def _span(a: AgentsResult) -> str:
    done = f"{a.processed:,} of {a.messages:,} msgs (cap)" if a.timed_out else f"{a.messages:,} msgs"
    return f"{done} in {a.steady_s:.1f} s after a {a.startup_s:.1f} s start"


def _ms(values: list[float]) -> str:
    p50, p99 = pct(values, 50), pct(values, 99)
    return " / ".join(f"{x:,.0f}" if x >= 100 else f"{x:.1f}" for x in (p50, p99)) + " ms"


def build_table(r: dict[str, Any], conf: ProducerResult, aio: ProducerResult, full: HeyResult,
                half: HeyResult, sink: SinkResult, mix: AgentsResult, worst: AgentsResult,
                fresh: FreshnessResult) -> Table:
    v = verdicts(full, half, sink, mix, worst)
    mem = r["peak_rss_mib"]
    share = r["foreign_cpu_s"] / (r["total_s"] * (r["machine"]["cpus"] or 1))
    quiet = "" if share < 0.05 else (
        f"[yellow]other processes used {r['foreign_cpu_s']:.0f} CPU-s ({share:.0%} of the "
        "machine) during this run: figures are contended.[/] ")
    t = Table(title="Sluice bench (embedded Tansu + chDB, 1000-event batches)",
              caption=f"total runtime {r['total_s']:.0f} s on {r['machine']['cpus']} CPUs; {quiet}"
              "* aiokafka's idempotent producer fails on Tansu (InitProducerId), so it runs "
              "with enable_idempotence=False. Sink rate: first to last batch cut by size "
              f"(group join + first batch took {sink.sink_first_rows_s:.1f} s). Agents: one "
              "worker from the first batch its /stats shows to the last message, at most "
              f"{r['agents_limit_s']:.0f} s (6a: {_span(mix)}; 6b: {_span(worst)}); users drawn "
              f"from a pool of {USER_POOL:,}. Freshness: open loop, a POST every "
              f"~{fresh.interval_ms:.0f} ms (jittered), label weights polled every 2 ms; "
              "Tansu answers a fetch only when its max wait ends, so the agents bound Faust's "
              "(1500 ms) to SLUICE_AGENTS_FETCH_MAX_WAIT_MS (50).")
    for name, justify in (("measurement", "left"), ("figure", "right"), ("ratio", "right"),
                          ("target", "right"), ("", "center")):
        t.add_column(name, justify=justify, no_wrap=name == "measurement")  # type: ignore[arg-type]
    t.add_row("1a raw producer confluent-kafka (acks=all, idempotent)",
              f"{conf.events_per_s:,.0f} events/s ({conf.per_s:,.0f} msg/s)",
              "1.00 (ceiling)", "", "")
    t.add_row("1b raw producer aiokafka (acks=all, no idempotence*)",
              f"{aio.events_per_s:,.0f} events/s ({aio.per_s:,.0f} msg/s)",
              f"{aio.per_s / conf.per_s:.2f} x confluent", "", "")
    t.add_row("2  gateway, 1 worker, hey -c 4 (~1000 users/request: worst case)",
              f"{full.events_per_s:,.0f} events/s ({full.requests_per_s:.1f} req/s)",
              f"{full.events_per_s / conf.events_per_s:.2f} x 1a", f">= {GATEWAY_TARGET:,}",
              _mark(v["gateway_events_per_s"]))
    gmix, gmix_half = r["gateway"]["mix_full_load"], r["gateway"]["mix_half_load"]
    users = r["gateway"]["mix_users_per_request"]
    t.add_row(f"2  gateway, 1 worker, {users} users x {1000 // users} events/request",
              f"{gmix['events_per_s']:,.0f} events/s ({gmix['requests_per_s']:.1f} req/s)",
              f"{gmix['events_per_s'] / conf.events_per_s:.2f} x 1a", f">= {GATEWAY_TARGET:,}",
              _mark(gmix["events_per_s"] >= GATEWAY_TARGET and gmix["non_200"] == 0))
    t.add_row(f"3  ... at half load p50 / p99 ({users} users/request)",
              f"{gmix_half['p50_ms']:.1f} / {gmix_half['p99_ms']:.1f} ms",
              f"{gmix_half['requests_per_s']:.1f} req/s", f"p99 < {P99_TARGET_MS:.0f} ms",
              _mark(gmix_half["p99_ms"] < P99_TARGET_MS and gmix_half["non_200"] == 0))
    two = r["gateway"]["two_workers"]
    # information, not a target: on 2 cores hey and Tansu already take the second one
    t.add_row("2  gateway, 2 workers (cores shared with hey + Tansu), hey -c 8",
              f"{two['events_per_s']:,.0f} events/s ({two['requests_per_s']:.1f} req/s)",
              f"{two['events_per_s'] / full.events_per_s:.2f} x 1 worker", "non-200: 0",
              _mark(two["non_200"] == 0))
    t.add_row("2  non-200 responses (full / half load)",
              f"{full.not_ok} of {full.ok + full.not_ok} / {half.not_ok} of {half.ok + half.not_ok}",
              "", "0", _mark(v["gateway_non_200_zero"]))
    t.add_row("2  ack latency at full load p50 / p99",
              f"{full.p50_ms:.1f} / {_p99(full)}", "", "", "")
    t.add_row(f"3  ack latency at half load p50 / p99 (-c 2 -q {half.rate_limit_per_client:.1f})",
              f"{half.p50_ms:.1f} / {_p99(half)}",
              f"{half.requests_per_s:.1f} req/s", f"p99 < {P99_TARGET_MS:.0f} ms",
              _mark(v["half_load_p99"]))
    t.add_row(f"4  sink, topic -> chDB ({sink.rows:,} events)",
              f"{sink.sink_rows_per_s:,.0f} rows/s", f"{sink.ratio:.2f} x raw",
              f">= {SINK_RATIO_TARGET} x raw", _mark(v["sink_over_raw"]))
    before, after = (sink.rows / s for s in sink.raw_insert_s)
    t.add_row("4  raw chDB insert, same rows, 50k-row chunks (before / after the sink)",
              f"{sink.raw_rows_per_s:,.0f} rows/s ({before:,.0f} / {after:,.0f})", "1.00", "", "")
    t.add_row("5  peak RSS gateway process (during 2)", f"{mem['gateway']:,.0f} MiB", "", "", "")
    t.add_row(f"5  peak RSS Tansu (in-memory log, max of {len(mem['tansu'])} runs)",
              f"{max(mem['tansu'].values()):,.0f} MiB", "", "", "")
    t.add_row("5  peak RSS bench process during 4 (incl. chDB)",
              f"{mem['bench_sink']:,.0f} MiB", "", "", "")
    t.add_row(f"6a agents, 1 worker, {mix.users_per_request} users x "
              f"{1000 // mix.users_per_request} events/request", _agents(mix),
              f"{mix.events_per_s / full.events_per_s:.2f} x 2", f">= {AGENTS_TARGET:,}",
              _mark(v["agents_mix_events_per_s"]))
    t.add_row(f"6b agents, 1 worker, {worst.users_per_request} users x "
              f"{1000 // worst.users_per_request} event/request (worst)", _agents(worst),
              f"{worst.events_per_s / mix.events_per_s:.2f} x 6a", f">= {AGENTS_TARGET:,}",
              _mark(v["agents_worst_events_per_s"]))
    t.add_row("6  agents users written/s (6a / 6b)",
              f"{mix.users_written_per_s:,.0f} / {worst.users_written_per_s:,.0f}", "", "", "")
    t.add_row("6  peak RSS agents worker (6a / 6b)",
              f"{mix.peak_rss_mib:,.0f} / {worst.peak_rss_mib:,.0f} MiB", "", "", "")
    t.add_row("7  freshness 200 -> weights updated p50 / p99", _ms(fresh.fresh_ms),
              f"n={len(fresh.fresh_ms)}", "", "")
    t.add_row(f"7  ack, queue_updates=true p50 / p99 ({fresh.events_per_post} events)",
              _ms(fresh.true_ack_ms), "", "", "")
    t.add_row("7  ack, queue_updates=false p50 / p99 (waits state)", _ms(fresh.sync_ack_ms),
              f"n={len(fresh.sync_ack_ms)}" + (f", {len(fresh.errors)} errors" if fresh.errors else ""),
              "", "")
    t.add_row("7  peak RSS gateway / agents worker (during 7)",
              f"{mem['freshness_gateway']:,.0f} / {mem['freshness_agents']:,.0f} MiB", "", "", "")
    r["targets"] = v
    return t


def dialects_table(results: list[DialectResult], seconds: int, peak_mib: float | None = None,
                   note: str = "") -> Table:
    """Section 8: a row per dialect; ``x AH``: events/s over the first row's (ActionHub)."""
    base = results[0].events_per_s if results and results[0].events_per_s else None
    memory = f" Gateway peak RSS {peak_mib:,.0f} MiB." if peak_mib is not None else ""
    t = Table(title=f"8  Dialects through the gateway (1 worker, hey -c {DIALECT_CLIENTS}, "
              f"{seconds} s each)",
              caption="One gateway process, open (no keys, nothing signed), on its own Tansu, "
              "with SLUICE_QUEUE_UPDATES_DEFAULT=true: every dialect is answered at the "
              "broker's ack (false would wait for agents; none run here). Each request is the "
              "dialect's largest; x AH = events/s over ActionHub's; events/s = responses with the dialect's success status (ok) per "
              "second x events per request." + memory
              + (" " + note if note else ""))
    for name, justify in (("dialect", "left"), ("POST", "left"), ("ok", "right"),
                          ("ev/req", "right"), ("events/s", "right"), ("req/s", "right"),
                          ("x AH", "right"), ("p50 / p99 ms", "right"), ("not ok", "right")):
        t.add_column(name, justify=justify, no_wrap=name != "POST",  # type: ignore[arg-type]
                     overflow="fold")
    for r in results:
        p99 = f"{r.hey.p99_ms:.1f}" + (" (max)" if r.hey.p99_is_max else "")
        t.add_row(r.name, r.path, str(r.success_status), str(r.events_per_request),
                  f"{r.events_per_s:,.0f}", f"{r.ok_per_s:,.1f}",
                  f"{r.events_per_s / base:.2f}" if base else "",
                  f"{r.hey.p50_ms:.1f} / {p99}",
                  f"{r.not_ok} of {r.ok + r.not_ok}" if r.not_ok else "0")
    return t
