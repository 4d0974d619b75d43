"""Section 12: what TLS costs. The 1000-event gateway (hey -c 4) and one agents worker on
pre-filled events (100 users x 10 events per request), each measured against a fresh
plaintext Tansu and against a fresh Tansu reached only through the TLS terminator
(bench/tls_terminator.py, certificates verified), in the same run.

The terminator is a Python process on the same cores as everything else: its CPU seconds
are shown, and count against the TLS rows. A managed Kafka ends TLS on its own machines,
so there only the clients' share (librdkafka's and aiokafka's encryption) stays.

    .venv/bin/python -m bench.run --only tls
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
from rich.table import Table

from bench import agents, gateway
from bench.payload import api_body
from bench.tls_terminator import TlsBroker
from services.shared.broker import EmbeddedBroker, free_port
from services.shared.kafka import ensure_topics

KINDS = ("plaintext", "tls")


@contextmanager
def broker(kind: str, workdir: Path) -> Iterator[tuple[str, dict[str, Any], int | None]]:
    """(bootstrap, the settings that reach it, the terminator's pid or None)."""
    if kind == "plaintext":
        plain = EmbeddedBroker(port=free_port(), log_path=workdir / "tansu-plain.log").start()
        try:
            yield plain.bootstrap, {}, None
        finally:
            plain.stop()
        return
    tls = TlsBroker(workdir / "tls").start()
    assert tls.process is not None
    try:
        yield tls.bootstrap, {"kafka_security_protocol": "SSL", "kafka_ssl_ca_location": tls.ca}, \
            tls.process.pid
    finally:
        tls.stop()


def _cpu_s(pid: int | None) -> float:
    if pid is None:
        return 0.0
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def run(workdir: Path, seconds: int, agents_events: int) -> dict[str, Any]:
    body = workdir / "body-tls.json"
    body.write_bytes(api_body(seed=1))
    out: dict[str, Any] = {"seconds": seconds}
    for kind in KINDS:
        with broker(kind, workdir) as (bootstrap, security, terminator):
            settings = agents.bench_settings(bootstrap, workdir, f"tls-{kind}", **security)
            ensure_topics(settings)
            gw = gateway.GatewayProcess(bootstrap, settings.topic_events, free_port(), workdir,
                                        env=agents.env_for(settings))
            try:
                gw.wait_ready()
                gateway.hey(gw.url, body, 2, 4)
                cpu = _cpu_s(terminator)
                posted = gateway.hey(gw.url, body, seconds, 4)
                gateway_cpu = _cpu_s(terminator) - cpu
            finally:
                gw.stop()
            cpu = _cpu_s(terminator)
            applied = agents.run_throughput(bootstrap, workdir, agents_events, agents.MIX_USERS,
                                            limit_s=seconds, **security)
            out[kind] = {"gateway": posted.as_dict(), "agents": applied.as_dict(),
                         "terminator_cpu_s": {"gateway": round(gateway_cpu, 1),
                                              "agents": round(_cpu_s(terminator) - cpu, 1)}}
    return out


def tls_table(r: dict[str, Any]) -> Table:
    plain, tls = r["plaintext"], r["tls"]
    table = Table(title=f"12. What TLS costs: plaintext vs through the TLS terminator "
                  f"({r['seconds']} s each, same run)")
    for column in ("load", "plaintext", "TLS", "TLS / plaintext", "terminator CPU-s"):
        table.add_column(column, justify="left" if column == "load" else "right")

    def ratio(a: float, b: float) -> str:
        return f"{b / a:.2f}x" if a else "-"

    g0, g1 = plain["gateway"], tls["gateway"]
    table.add_row("gateway, 1000-event POSTs, hey -c 4: events/s",
                  f"{g0['events_per_s']:,}", f"{g1['events_per_s']:,}",
                  ratio(g0["events_per_s"], g1["events_per_s"]),
                  f"{tls['terminator_cpu_s']['gateway']}")
    table.add_row("  p99 ms", f"{g0['p99_ms']:.1f}", f"{g1['p99_ms']:.1f}",
                  ratio(g0["p99_ms"], g1["p99_ms"]), "")
    table.add_row("  non-200", str(g0["non_200"]), str(g1["non_200"]), "", "")
    a0, a1 = plain["agents"], tls["agents"]
    table.add_row(f"agents, one worker, {agents.MIX_USERS} users per request: events/s",
                  f"{a0['events_per_s']:,}", f"{a1['events_per_s']:,}",
                  ratio(a0["events_per_s"], a1["events_per_s"]),
                  f"{tls['terminator_cpu_s']['agents']}")
    return table


def run_alone(seconds: int, agents_events: int) -> dict[str, Any]:
    from bench.run import OUT, wide_console

    with tempfile.TemporaryDirectory(prefix="sluice-tls-") as tmp:
        result = run(Path(tmp), seconds, agents_events)
    wide_console().print(tls_table(result))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "tls.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result
