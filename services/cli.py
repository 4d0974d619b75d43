"""The ``sluice`` command: one subcommand per role, and ``up`` for the all-in-one."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from services.shared.settings import Settings

if TYPE_CHECKING:
    from services.gateway.keys import KeyRing
    from services.sink.letters import Filter

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
def agents(loglevel: str = typer.Option("warn", help="crit, error, warn, info, debug")) -> None:
    """A stream-agent worker (Faust): keeps users' label weights; run several to scale."""
    from streams.worker import run_worker

    run_worker(_settings(), loglevel)


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


def _quiet_librdkafka() -> None:
    """dlq and replay print their own one line on a broker error, not librdkafka's retries."""
    logging.getLogger("librdkafka").setLevel(logging.CRITICAL)


def _letter_filter(command: str, since: str | None, until: str | None, program: str | None,
                   reason: str | None) -> Filter:
    from services.sink.letters import Filter, parse_time

    try:
        return Filter(since=parse_time(since) if since else None,
                      until=parse_time(until) if until else None, program=program, reason=reason)
    except ValueError as exc:
        typer.echo(f"sluice {command}: --since/--until take ISO 8601 times: {exc}", err=True)
        raise typer.Exit(2) from None


_SINCE = typer.Option(None, help="letters dead-lettered at or after this ISO time (UTC if naive)")
_UNTIL = typer.Option(None, help="letters dead-lettered before this ISO time")
_PROGRAM = typer.Option(None, help="only letters whose line names this program")
_REASON = typer.Option(None, help="a category (invalid_event, clickhouse_refused...) or part "
                       "of the reason")


@app.command()
def dlq(since: str = _SINCE, until: str = _UNTIL, program: str = _PROGRAM, reason: str = _REASON,
        limit: int = typer.Option(0, help="also print the first N letters")) -> None:
    """Dead letters by category and program: how many, when, an example reason."""
    from rich.console import Console

    from services.sink.letters import BrokerError, groups_table, letters_table, read_all, summarize
    from services.sink.replay import done_markers, is_done, marker_topic

    settings = Settings()
    wanted = _letter_filter("dlq", since, until, program, reason)
    _quiet_librdkafka()
    try:
        done = done_markers(read_all(settings, marker_topic(settings)))
        letters = [x for x in read_all(settings, settings.topic_dlq) if wanted(x)]
    except BrokerError as exc:
        typer.echo(f"sluice dlq: {exc}", err=True)
        raise typer.Exit(1) from None
    console = Console()
    console.print(groups_table(summarize(letters, lambda x: is_done(x, done))))
    if limit > 0:
        console.print(letters_table(letters[:limit]))


@app.command()
def replay(since: str = _SINCE, until: str = _UNTIL, program: str = _PROGRAM,
           reason: str = _REASON,
           dry_run: bool = typer.Option(False, "--dry-run", help="print what would go, and "
                                        "why each was refused; produce nothing"),
           retry_refused: bool = typer.Option(False, "--retry-refused", help="also letters an "
                                              "earlier replay had refused again")) -> None:
    """Put dead letters back on the events topic, in DLQ order, each once; what still
    fails the sink's check stays in the DLQ with its new reason."""
    from rich.console import Console

    from services.sink.letters import BrokerError
    from services.sink.replay import ReplayError, left_out, load_plan, plan_table
    from services.sink.replay import replay as run_replay

    settings = Settings()
    wanted = _letter_filter("replay", since, until, program, reason)
    _quiet_librdkafka()
    try:
        if dry_run:
            found = load_plan(settings, wanted, retry_refused)
            Console().print(plan_table(found.steps))
            typer.echo(left_out(found))
            return
        done = run_replay(settings, wanted, retry_refused)
    except (BrokerError, ReplayError) as exc:
        typer.echo(f"sluice replay: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"replayed {done.replayed} letters ({done.events} events); {done.refused} "
               f"refused again, kept in the DLQ with their new reason")
    typer.echo(left_out(done.plan))


keys_app = typer.Typer(help="API keys per program (in SLUICE_KEYS_FILE).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


def _keyring() -> KeyRing:
    from services.gateway.keys import KeyRing, KeysFileError

    settings = Settings()
    if settings.keys_file is None:
        typer.echo("sluice keys: set SLUICE_KEYS_FILE to the keys file (it is created if "
                   "missing, mode 0600)", err=True)
        raise typer.Exit(2)
    try:
        return KeyRing(settings.keys_file)
    except KeysFileError as exc:
        typer.echo(f"sluice keys: {exc}", err=True)
        raise typer.Exit(1) from None


@keys_app.command("create")
def keys_create(
    program: str = typer.Option(..., help="The program (tenant) the key is for"),
    scope: str = typer.Option(..., help="write (send events, assets) or read (read them back)"),
    sigv4: bool = typer.Option(False, "--sigv4", help="An AWS SigV4 key pair, for the Amazon "
                               "Personalize dialect (access key id + secret access key)"),
) -> None:
    """Create a key and print it ONCE: only its hash is stored (a SigV4 secret is stored,
    since verifying a signature needs it)."""
    if scope not in ("write", "read"):
        typer.echo("sluice keys create: --scope must be write or read", err=True)
        raise typer.Exit(2)
    record, secret = _keyring().create(program, scope, sigv4=sigv4)
    if sigv4:
        typer.echo(f"aws_access_key_id     = {record.id}")
        typer.echo(f"aws_secret_access_key = {secret}")
    else:
        typer.echo(secret)
    typer.echo(f"({record.scope} key {record.id} for program {record.program!r}; it is shown "
               "only now: store it)", err=True)


@keys_app.command("list")
def keys_list() -> None:
    """Every key: id, program, scope, kind, created, revoked (never a secret or a hash)."""
    from rich.console import Console
    from rich.table import Table

    table = Table()
    table.add_column("id", no_wrap=True, min_width=20)  # copied into `sluice keys revoke`
    for name in ("program", "scope", "kind", "created", "revoked"):
        table.add_column(name)
    for r in sorted(_keyring().records(), key=lambda r: (r.program, r.created_at, r.id)):
        table.add_row(r.id, r.program, r.scope, r.kind, r.created_at, "yes" if r.revoked else "no")
    Console().print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: str = typer.Argument(..., help="The key's id (see `sluice keys list`)")) -> None:
    """Revoke a key; running gateways refuse it within about a second."""
    try:
        record = _keyring().revoke(key_id)
    except KeyError:
        typer.echo(f"sluice keys revoke: no key {key_id!r}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"revoked {record.kind} key {record.id} of program {record.program!r}")


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
