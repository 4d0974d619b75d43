"""The ``sluice`` command: one subcommand per role, and ``up`` for the all-in-one."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import typer

from services import letter_commands, verify_commands
from services.key_commands import keys_app
from services.shared.settings import Settings
from services.user_commands import users_app

app = typer.Typer(help="Sluice: streaming ingestion of user events.", no_args_is_help=True)


def _settings() -> Settings:
    from services.shared.logs import configure

    settings = Settings()
    configure(settings.log_format)
    return settings


@app.command()
def up() -> None:
    """Everything in one process: embedded broker and ClickHouse, gateway and sink."""
    from services.embedded import run_embedded
    from services.gateway.auth import check_auth_config

    settings = _settings()
    check_auth_config(settings)
    run_embedded(settings)


@app.command()
def gateway(workers: int = typer.Option(1, help="uvicorn worker processes")) -> None:
    """The HTTP front door (needs a broker at SLUICE_KAFKA_BOOTSTRAP)."""
    import uvicorn

    from services.gateway.auth import check_auth_config
    from services.shared.kafka import ensure_topics
    from services.shared.logs import log_config

    settings = _settings()
    check_auth_config(settings)
    ensure_topics(settings)  # its views follow the assets and user-state topics from the start
    if workers > 1:
        _multiprocess_metrics(settings)
    uvicorn.run(
        "services.gateway.main:app_from_env", factory=True, host=settings.http_host,
        port=settings.http_port, workers=workers, log_level="warning", access_log=False,
        log_config=log_config(settings.log_format),  # in every worker too
    )


def _multiprocess_metrics(settings: Settings) -> None:
    """N gateway workers: each writes its metrics under PROMETHEUS_MULTIPROC_DIR and the
    one that answers /metrics sums them. Set before the workers start (prometheus-client
    reads it on import); emptied first, since files of an earlier run would be summed too."""
    import os
    import shutil

    path = Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or settings.data_dir / "metrics")
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path.resolve())


def _serve_metrics(host: str, port: int) -> None:
    """/metrics of a role without an HTTP server of its own (the standalone sink)."""
    from prometheus_client import start_http_server

    try:
        start_http_server(port, addr=host)
    except OSError as exc:  # the sink's work matters more than its metrics: go on, loudly
        logging.getLogger("sluice.sink").error(
            "metrics NOT served: cannot listen on %s:%d (SLUICE_SINK_METRICS_PORT): %s",
            host, port, exc)


@app.command()
def sink() -> None:
    """Kafka -> ClickHouse writer; SIGTERM/SIGINT drain and commit before exit."""
    from services.shared.clickhouse import Store
    from services.shared.gc_tuning import tune_gc
    from services.shared.kafka import ensure_topics
    from services.sink.consume import Sink

    settings = _settings()
    ensure_topics(settings)
    store = Store(settings)
    worker = Sink(settings, store)
    if settings.sink_metrics_port:
        _serve_metrics(settings.http_host, settings.sink_metrics_port)
    tune_gc(settings.gc_young_threshold)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: worker.stop())
    worker.run()
    store.close()


@app.command()
def agents(
    loglevel: str = typer.Option("warn", help="crit, error, warn, info, debug"),
    recover_on_stdin: bool = typer.Option(False, hidden=True),
) -> None:
    """A stream-agent worker (Faust): keeps users' label weights; run several to scale."""
    from streams.worker import run_worker  # Faust's imports: most of a worker's first second

    # `sluice up` starts the next worker while a roll still carries user state over: it
    # joins at once and recovers once told (a line), or stops (end of input: the roll gave
    # it up)
    run_worker(_settings(), loglevel, told=sys.stdin if recover_on_stdin else None)


@app.command("rebuild-state")
def rebuild_state(
    force: bool = typer.Option(False, help="rebuild even if agent workers seem to be running"),
) -> None:
    """Recompute user state and the catalog from ClickHouse (run with the agents stopped)."""
    from services.shared.clickhouse import Store
    from services.shared.kafka import ensure_topics
    from streams.rebuild import rebuild_state as rebuild
    from streams.rebuild import running_agents

    settings = _settings()
    ensure_topics(settings)
    if (members := running_agents(settings)) and not force:
        typer.echo(f"{members} agent workers are running: stop them first (a running worker "
                   "would not re-read the rebuilt state and would overwrite it), or --force",
                   err=True)
        raise typer.Exit(2)
    store = Store(settings)
    try:
        done = rebuild(settings, store)
    finally:
        store.close()
    typer.echo(f"rebuilt {done.users} users from {done.events} events, and {done.assets} assets")


@app.command()
def migrate(
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the statements for the "
                                 "topology, each ending with ';', and connect to nothing"),
    topology: str = typer.Option(None, help="single, replicated, sharded or cloud "
                                 "(default: SLUICE_CLICKHOUSE_TOPOLOGY)"),
    cluster: str = typer.Option(None, help="The cluster ON CLUSTER names (default: "
                                "SLUICE_CLICKHOUSE_CLUSTER)"),
) -> None:
    """Bring the ClickHouse schema up to date: apply, in order, the migrations of
    SLUICE_DDL_DIR not yet recorded in sluice_migrations (the only way it changes on the
    replicated, sharded and cloud topologies)."""
    from pydantic import ValidationError

    from services.shared import migrations
    from services.shared.clickhouse import connect, target

    overrides: dict[str, str | None] = {}
    if topology is not None:
        overrides["clickhouse_topology"] = topology
        if topology in ("single", "cloud") and cluster is None:
            overrides["clickhouse_cluster"] = None  # the env's cluster is for another topology
    if cluster is not None:
        overrides["clickhouse_cluster"] = cluster
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        reasons = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        typer.echo(f"sluice migrate: {reasons}", err=True)
        raise typer.Exit(2) from None
    found = migrations.load(settings.ddl_dir)
    if dry_run:
        where = migrations.Target(settings.clickhouse_topology, settings.clickhouse_cluster)
        typer.echo(migrations.script(found, where), nl=False)
        return
    from services.shared.logs import configure

    configure(settings.log_format)
    where = target(settings)
    client = connect(settings.clickhouse_dsn)
    try:
        ran = migrations.apply(client, found, where)
    finally:
        client.close()
    for name in ran:
        typer.echo(f"applied {name}")
    typer.echo(f"ClickHouse schema ({where.topology}) is up to date: {len(found)} migrations, "
               f"{len(ran)} applied now")


@app.command()
def broker() -> None:
    """Only the embedded Tansu broker, in the foreground (for running roles separately)."""
    import threading

    from services.shared.broker import EmbeddedBroker

    settings = _settings()
    b = EmbeddedBroker(settings.embedded_broker_host, settings.embedded_broker_port).start()
    typer.echo(f"tansu listening on {b.bootstrap}")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        while b.process and b.process.poll() is None and not stop.wait(0.5):
            pass
    finally:
        b.stop()


@app.command()
def status(
    interval: float = typer.Option(2.0, help="seconds between the two scrapes behind the rates"),
    gateway_url: str = typer.Option(None, help="the gateway's /metrics (default: from settings)"),
    sink_url: str = typer.Option(None, help="a standalone sink's /metrics (SLUICE_SINK_METRICS_PORT)"),
    agents_url: str = typer.Option(None, help="an agents worker's /metrics (its web port)"),
) -> None:
    """Each group's lag per partition, recent rates and the DLQ count (Kafka + /metrics)."""
    from services.status import gather, metrics_urls, print_status

    settings = Settings()  # no logging set-up: this command prints a table, not logs
    urls = metrics_urls(settings)
    for role, url in (("gateway", gateway_url), ("sink", sink_url), ("agents", agents_url)):
        if url:
            urls[role] = url
    print_status(gather(settings, urls, interval))


# the operators' command groups, each in a module of its own
app.command()(letter_commands.dlq)
app.command()(letter_commands.replay)
app.command()(verify_commands.verify)
app.add_typer(keys_app, name="keys")
app.add_typer(users_app, name="users")


def main() -> None:
    """``sluice``: a start that cannot go on (settings no broker would accept, a broker that
    refuses this client) ends in one line naming what to fix, exit status 2, no traceback."""
    from pydantic import ValidationError

    from services.shared.kafka_security import KafkaRefused
    from services.shared.migrations import SchemaError

    try:
        app()
    except ValidationError as exc:
        reasons = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        typer.echo(f"sluice: invalid settings: {reasons}", err=True)
        raise SystemExit(2) from None
    except KafkaRefused as exc:
        typer.echo(f"sluice: cannot start: {exc}", err=True)
        raise SystemExit(2) from None
    except SchemaError as exc:  # ClickHouse lacks migrations, or cannot have the topology
        typer.echo(f"sluice: cannot start: {exc}", err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
