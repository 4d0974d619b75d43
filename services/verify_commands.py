"""``sluice verify`` (services.verify): the command, where its result is exported, and the
periodic run inside ``sluice up``; registered on the ``sluice`` command by services.cli.

Who exports the metrics, and why: the result of a check that runs from cron or a
Kubernetes CronJob (deploy/k8s/verify-cronjob.yaml) lives in a process that is gone before
Prometheus scrapes it, so ``--push URL`` hands it to a Pushgateway (Prometheus' own answer
for batch jobs) and ``--textfile PATH`` writes it for node_exporter's textfile collector.
``sluice up`` runs it itself every SLUICE_VERIFY_INTERVAL_S and shows it on its /metrics:
its embedded ClickHouse admits one process, so nothing else could read it while it runs.
The gateway does not: it has no ClickHouse of its own in production, and N replicas would
check N times.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import typer
from prometheus_client import REGISTRY, CollectorRegistry

from services.shared.metrics import VERIFY_ACKED_EVENTS, VERIFY_GAP_EVENTS, VERIFY_LAST_RUN
from services.shared.settings import Settings
from services.verify import Report

log = logging.getLogger(__name__)
GAUGES = (VERIFY_GAP_EVENTS, VERIFY_ACKED_EVENTS, VERIFY_LAST_RUN)


def agents_positions(settings: Settings, timeout_s: float = 5.0,
                     ) -> tuple[dict[int, int], dict[int, datetime], dict[int, int]]:
    """The agents group's committed offset per partition of ``events`` (-1: none), the
    time of each partition's first retained message, and each partition's end as the fetch
    of that message reported it (Tansu's ListOffsets trails its last batch)."""
    from confluent_kafka import Consumer, TopicPartition

    from services.shared.kafka import client_config
    from services.shared.lag import offsets_reader

    topic = settings.topic_events
    reader = offsets_reader(settings, settings.agents_app_id)
    try:
        meta = reader.list_topics(topic, timeout=timeout_s).topics[topic]
        partitions = [TopicPartition(topic, p) for p in sorted(meta.partitions)]
        committed = {tp.partition: (tp.offset if tp.error is None else -1)
                     for tp in reader.committed(partitions, timeout=timeout_s)}
        lows = {tp.partition: reader.get_watermark_offsets(tp, timeout=timeout_s)
                for tp in partitions}
    finally:
        reader.close()
    wanted = [TopicPartition(topic, p, low) for p, (low, high) in lows.items() if high > low]
    starts: dict[int, datetime] = {}
    ends: dict[int, int] = {}
    if wanted:
        first = Consumer(client_config(settings) | {
            "group.id": f"sluice-verify-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False})
        try:
            first.assign(wanted)
            deadline = time.monotonic() + timeout_s
            while len(starts) < len(wanted) and time.monotonic() < deadline:
                for m in first.consume(len(wanted), 0.2):
                    if m.error() is None and m.partition() not in starts:
                        starts[m.partition() or 0] = datetime.fromtimestamp(
                            m.timestamp()[1] / 1000, UTC)
            for tp in wanted:
                if tp.partition in starts:
                    ends[tp.partition] = first.get_watermark_offsets(tp, cached=True)[1]
        finally:
            first.close()
    return committed, starts, ends


def run_once(settings: Settings, store: object, since: datetime, until: datetime,
             program: str | None = None, agents: bool = True) -> Report:
    from services.verify import verify as check

    committed, starts, ends = agents_positions(settings) if agents else (None, None, None)
    report = check(store, since, until, committed, starts,  # type: ignore[arg-type]
                   program, ends)
    export(report)
    return report


def export(report: Report) -> None:
    total = report.total
    VERIFY_GAP_EVENTS.labels("missing").set(total.missing)
    VERIFY_GAP_EVENTS.labels("not_applied").set(total.unapplied)
    VERIFY_ACKED_EVENTS.set(total.acked)
    VERIFY_LAST_RUN.set(time.time())


def print_report(report: Report) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"acked vs stored, {report.since:%Y-%m-%d %H:%M} - "
                        f"{report.until:%H:%M} UTC (minutes of receipt)")
    columns = ["program", "acked", "stored", "dead-lettered", "missing", "extra"]
    if report.agents_checked:
        columns += ["applied", "not applied", "unjudged"]
    for name in columns:
        table.add_column(name, justify="left" if name == "program" else "right")
    for program, t in sorted(report.programs.items()) + [("all", report.total)]:
        cells = [t.acked, t.stored, t.dead, t.missing, t.extra]
        if report.agents_checked:
            cells += [t.applied, t.unapplied, t.unjudged]
        table.add_row(program, *(str(c) for c in cells))
    console = Console()
    console.print(table)
    for gap in report.gaps:
        console.print(f"[red]GAP[/] {gap.describe()}", highlight=False)
    if report.ok:
        console.print("no gap: every acked event is stored or dead-lettered"
                      + (", and applied by the agents" if report.agents_checked else ""))


def _time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        found = datetime.fromisoformat(text)
    except ValueError as exc:
        typer.echo(f"sluice verify: --since/--until take ISO 8601 times: {exc}", err=True)
        raise typer.Exit(2) from None
    return found if found.tzinfo else found.replace(tzinfo=UTC)


def verify(
    since: str = typer.Option(None, help="first minute of receipt (ISO; default: --minutes "
                              "before --until)"),
    until: str = typer.Option(None, help="end of the window, excluded (default: now minus "
                              "SLUICE_VERIFY_SETTLE_S)"),
    minutes: int = typer.Option(60, help="the window's length when --since is not given"),
    program: str = typer.Option(None, help="only this program"),
    agents: bool = typer.Option(True, help="also check the agents applied every acked event"),
    push: str = typer.Option(None, help="push the result's metrics to this Pushgateway"),
    textfile: str = typer.Option(None, help="write the result's metrics to this file "
                                 "(node_exporter's textfile collector)"),
) -> None:
    """Compare, per program and minute, the events the gateways acked with what ClickHouse
    stored or dead-lettered and what the agents applied; exit 1 on a gap, naming the
    partitions and offsets to look at."""
    from services.shared.clickhouse import Store
    from services.verify import window

    settings = Settings()
    logging.getLogger("librdkafka").setLevel(logging.CRITICAL)
    end = _time(until) or window(settings.verify_settle_s, minutes, datetime.now(UTC))[1]
    start = _time(since) or end - timedelta(minutes=minutes)
    try:
        store = Store(settings)
    except Exception as exc:  # noqa: BLE001 - one line, not a traceback
        held = settings.clickhouse_is_embedded and "EmbeddedServer" in str(exc)
        typer.echo("sluice verify: the embedded ClickHouse is held by `sluice up`, which runs "
                   "verify itself every SLUICE_VERIFY_INTERVAL_S (sluice_verify_* on its "
                   "/metrics)" if held else f"sluice verify: ClickHouse: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        report = run_once(settings, store, start, end, program, agents)
    finally:
        store.close()
    print_report(report)
    registry = CollectorRegistry()
    for gauge in GAUGES:
        registry.register(gauge)
    if push:
        from prometheus_client import push_to_gateway

        push_to_gateway(push, job="sluice_verify", registry=registry)
    if textfile:
        from prometheus_client import write_to_textfile

        write_to_textfile(textfile, registry)
    if not report.ok:
        raise typer.Exit(1)


class Periodic:
    """``sluice up``: verify every SLUICE_VERIFY_INTERVAL_S on its own store, the result on
    its /metrics; a run that fails is logged and tried again at the next interval."""

    def __init__(self, settings: Settings, store: object) -> None:
        self.settings, self.store = settings, store
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="verify", daemon=True)

    def start(self) -> Periodic:
        if self.settings.verify_interval_s > 0:
            for gauge in GAUGES:
                if gauge not in getattr(REGISTRY, "_collector_to_names", {}):
                    REGISTRY.register(gauge)
            self._thread.start()
        return self

    def _run(self) -> None:
        from services.verify import window

        while not self._stop.wait(self.settings.verify_interval_s):
            since, until = window(self.settings.verify_settle_s, 60, datetime.now(UTC))
            try:
                report = run_once(self.settings, self.store, since, until)
            except Exception as exc:  # noqa: BLE001 - the next interval tries again
                log.warning("verify failed: %s", exc)
                continue
            for gap in report.gaps:
                log.error("verify: %s", gap.describe())

    def stop(self) -> None:
        self._stop.set()
