"""``sluice keys``: the API keys per program (services.gateway.keys); registered on the
``sluice`` command by services.cli."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from services.shared.settings import Settings

if TYPE_CHECKING:
    from services.gateway.keys import KeyRing


keys_app = typer.Typer(help="API keys per program (in SLUICE_KEYS_FILE).", no_args_is_help=True)


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
