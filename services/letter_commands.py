"""``sluice dlq`` and ``sluice replay``: the dead letters, counted, read back and put back
(services.sink.letters, services.sink.replay); registered on the ``sluice`` command by
services.cli."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import typer

from services.shared.settings import Settings

if TYPE_CHECKING:
    from services.sink.letters import Filter


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
