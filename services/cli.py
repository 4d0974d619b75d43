"""The ``sluice`` command: one subcommand per role, and ``up`` for the all-in-one."""

from __future__ import annotations

import logging
import signal

import typer

from services.shared.settings import Settings

app = typer.Typer(help="Sluice: streaming ingestion of user events.", no_args_is_help=True)


def _settings() -> Settings:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return Settings()


@app.command()
def up() -> None:
    """Everything in one process: embedded broker and ClickHouse, gateway and sink."""
    from services.embedded import run_embedded

    run_embedded(_settings())


@app.command()
def gateway(workers: int = typer.Option(1, help="uvicorn worker processes")) -> None:
    """The HTTP front door (needs a broker at SLUICE_KAFKA_BOOTSTRAP)."""
    import uvicorn

    settings = _settings()
    uvicorn.run(
        "services.gateway.main:app_from_env", factory=True, host=settings.http_host,
        port=settings.http_port, workers=workers, log_level="warning", access_log=False,
    )


@app.command()
def sink() -> None:
    """Kafka -> ClickHouse writer; SIGTERM/SIGINT drain and commit before exit."""
    from services.shared.clickhouse import Store
    from services.shared.kafka import ensure_topics
    from services.sink.consume import Sink

    settings = _settings()
    ensure_topics(settings)
    store = Store(settings)
    worker = Sink(settings, store)
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
def rebuild_state() -> None:
    """Recompute user state and the catalog from ClickHouse (run with the agents stopped)."""
    from services.shared.clickhouse import Store
    from services.shared.kafka import ensure_topics
    from streams.rebuild import rebuild_state as rebuild

    settings = _settings()
    ensure_topics(settings)
    store = Store(settings)
    try:
        done = rebuild(settings, store)
    finally:
        store.close()
    typer.echo(f"rebuilt {done.users} users from {done.events} events, and {done.assets} assets")


@app.command()
def broker() -> None:
    """Only the embedded Tansu broker, in the foreground (for running roles separately)."""
    import time

    from services.shared.broker import EmbeddedBroker

    settings = _settings()
    b = EmbeddedBroker(settings.embedded_broker_host, settings.embedded_broker_port).start()
    typer.echo(f"tansu listening on {b.bootstrap}")
    try:
        while b.process and b.process.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        b.stop()


if __name__ == "__main__":
    app()
