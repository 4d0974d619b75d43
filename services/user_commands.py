"""``sluice users erase`` and ``sluice users erasure``: a user forgotten from the command
line, as ``DELETE /users/{id}`` does over HTTP (services.shared.erasures: the erasure
message, what each role does with it, the receipt). Registered on the ``sluice`` command by
services.cli.

The command talks to Kafka itself (it publishes the erasure and reads the groups' committed
offsets), not to a gateway: it works with the roles apart and needs no API key, only the
brokers (an operator's command). ClickHouse's ``erasures`` table is read where the
command can open ClickHouse (a server); with embedded chDB (owned by ``sluice up``) the
sink's committed offset stands for it (the sink commits past an erasure only after it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import typer

from services.shared.settings import Settings

users_app = typer.Typer(help="Users: erase one (events, state, sessions).", no_args_is_help=True)

_PROGRAM = typer.Option(..., "--program", "-p", help="the user's program (tenant)")


def _query(settings: Settings) -> tuple[Callable[[str, dict[str, Any]], list[dict[str, Any]]] | None,
                                        Callable[[], None]]:
    """ClickHouse's query function where this process may open it (a server), and a closer."""
    if settings.clickhouse_is_embedded:
        return None, lambda: None
    from services.shared.clickhouse import Store

    store = Store(settings)
    return store.query, store.close


def _line(status: dict[str, Any]) -> str:
    ch, agents = status["stores"]["clickhouse"], status["stores"]["agents"]
    rows = f", {ch['rows_deleted']} rows deleted" if ch.get("rows_deleted") is not None else ""
    return f"{status['status']}: clickhouse {ch['status']}{rows}; agents {agents['status']}"


def _follow(settings: Settings, receipt: Any, timeout_s: float) -> dict[str, Any]:
    """The erasure's status, polled until done, lost or ``timeout_s``."""
    from services.shared import erasure_log

    groups = erasure_log.Groups(settings)
    query, close = _query(settings)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            status = erasure_log.status(settings, receipt, groups.committed, query)
            if status["status"] != "pending" or time.monotonic() >= deadline:
                return status
            time.sleep(0.2)
    finally:
        groups.close()
        close()


@users_app.command("erase")
def erase(
    user_id: str = typer.Argument(..., help="the user's id, as its events carry it"),
    program: str = _PROGRAM,
    wait: bool = typer.Option(True, "--wait/--no-wait", help="wait until every store is done"),
    timeout: float = typer.Option(60.0, help="seconds --wait waits"),
) -> None:
    """Erase a user: its events from ClickHouse, its state (weights, recommendations,
    sessions, dedup ids) from the agents' store and changelog. Later events of the same id
    are a new user's. Prints the receipt; exit 1 if not done within --timeout."""
    from services.shared import erasure_log
    from services.shared.erasures import Erasure

    settings = Settings()
    logging.getLogger("librdkafka").setLevel(logging.CRITICAL)
    try:
        receipt = erasure_log.publish(settings, Erasure.new(program, user_id))
    except erasure_log.NotPublished as exc:
        typer.echo(f"sluice users erase: {exc}; nothing was erased", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"receipt {receipt.encode()}")
    if not wait:
        return
    status = _follow(settings, receipt, timeout)
    typer.echo(_line(status))
    if status["status"] != "done":
        raise typer.Exit(1)


@users_app.command("erasure")
def erasure(
    user_id: str = typer.Argument(..., help="the erased user's id"),
    receipt: str = typer.Argument(..., help="what `sluice users erase` or DELETE printed"),
    program: str = _PROGRAM,
) -> None:
    """Where an erasure stands, per store: exit 0 done, 1 pending, 2 lost (erase again)."""
    from services.shared.erasures import Receipt

    parsed = Receipt.decode(receipt)
    if parsed is None or not parsed.names(program, user_id):
        typer.echo("sluice users erasure: not a receipt of this program and user", err=True)
        raise typer.Exit(2)
    logging.getLogger("librdkafka").setLevel(logging.CRITICAL)
    status = _follow(Settings(), parsed, 0.0)
    typer.echo(_line(status))
    raise typer.Exit({"done": 0, "pending": 1}.get(status["status"], 2))
