"""ClickHouse schema migrations: deploy/clickhouse/NNNN_*.sql -> statements for the
topology Sluice runs on -> applied in order, each recorded in ``sluice_migrations``.

One canonical migration per change. The numbered files hold plain single-node DDL (what
`sluice up` has always run, and what a person can paste into clickhouse-client); this
module renders each statement for the topology (SLUICE_CLICKHOUSE_TOPOLOGY) instead of
keeping four copies of the SQL:

- ``single``: the file's statements unchanged (ReplacingMergeTree, no ON CLUSTER).
- ``replicated``: ``ON CLUSTER '<cluster>'`` and ``Replicated*MergeTree`` with an explicit
  ``'/clickhouse/tables/{uuid}/{shard}', '{replica}'`` (ClickHouse's own default path,
  written out so the dry run shows what is created whatever the server's
  ``default_replica_path``; ``{uuid}`` means a dropped and re-created table never meets
  the old table's Keeper path; it is the same on every host because ON CLUSTER hands the
  UUID to all of them).
- ``sharded``: the replicated table is ``<name>_local`` on every node, and ``<name>`` is a
  ``Distributed`` table over it, so every read and insert keeps using ``events``/``assets``.
- ``cloud``: the file's statements unchanged: ClickHouse Cloud turns the engines into
  SharedMergeTree and replicates DDL itself; ON CLUSTER is not for it.

Why ON CLUSTER rather than running each statement on each host: one statement, one
place that waits for every host (``distributed_ddl_task_timeout``) and fails if one did
not apply it, and the same table UUID everywhere (which ``{uuid}`` needs). A host that is
down applies the queued DDL when it comes back. A node added to the cluster later is not
`sluice migrate`'s job (its migrations are recorded): create its tables from a peer's
``SHOW CREATE TABLE`` with ``show_table_uuid_in_table_create_query_if_not_nil=1``, so they
keep the peer's UUID and Keeper path.

Why these sharding keys: ReplacingMergeTree collapses copies of a row only within one
table on one shard, and within one partition. A replay of an event (the sink's
at-least-once), and a retried insert, carry the same program_id, user_id and
event_timestamp, so ``cityHash64(program_id, user_id)`` sends every copy to one shard,
and the partition key stays on the event's own time (``toYYYYMM(event_timestamp)``), never
on when it was written. It also keeps each user's events on one shard, so a per-user read
can ask that shard alone (``optimize_skip_unused_shards=1``; without it every shard answers,
all but one with nothing). An asset's versions share (program_id, asset_id).

Only what can be rendered safely is accepted: ``CREATE TABLE IF NOT EXISTS ... ENGINE =
*MergeTree`` and ``ALTER TABLE ... ADD COLUMN IF NOT EXISTS``. Both are idempotent, which is
what lets a data directory made before this ledger existed be adopted (its statements are
run again, change nothing, and are recorded) and a migration that failed half-way simply
run again. Anything else raises :class:`UnsupportedStatement`: extend the renderer first.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, get_args

from clickhouse_connect.driver.client import Client

log = logging.getLogger(__name__)

Topology = Literal["single", "replicated", "sharded", "cloud"]
TOPOLOGIES: tuple[Topology, ...] = get_args(Topology)
ON_CLUSTER: frozenset[Topology] = frozenset({"replicated", "sharded"})

CLUSTER_NAME = re.compile(r"[A-Za-z0-9_.-]+")  # quoted into the DDL: nothing that could escape
LEDGER = "sluice_migrations"
LOCAL = "_local"  # sharded: the replicated table under each Distributed table
REPLICA_ARGS = "'/clickhouse/tables/{uuid}/{shard}', '{replica}'"
# The ledger is one table replicated to every node (not per shard), so whichever node a
# role asks sees every record: one Keeper path for the cluster, a replica per node.
LEDGER_REPLICA_ARGS = "'/clickhouse/tables/{uuid}/all', '{shard}-{replica}'"
SHARDING_KEYS = {
    "events": "cityHash64(program_id, user_id)",
    "assets": "cityHash64(program_id, asset_id)",
    "event_tallies": "cityHash64(minute, program_id)",
    "erasures": "cityHash64(program_id, user_digest)",
}

_CREATE = re.compile(
    r"CREATE TABLE IF NOT EXISTS (?P<table>\w+)(?P<columns>\s*\(.*\)\s*)"
    r"ENGINE = (?P<engine>\w*MergeTree)(?:\((?P<args>[^()]*)\))?(?P<tail>\s.*)?\Z",
    re.DOTALL,
)
_ALTER = re.compile(r"ALTER TABLE (?P<table>\w+) (?P<action>ADD COLUMN IF NOT EXISTS .*)\Z", re.DOTALL)


class UnsupportedStatement(ValueError):
    """A migration statement this renderer cannot turn into every topology's DDL."""


class SchemaError(RuntimeError):
    """This process cannot use the ClickHouse schema: migrations are missing (`sluice
    migrate` applies them), or the topology cannot exist on the server it opens."""


@dataclass(frozen=True)
class Target:
    """Where the DDL goes: the topology, and the cluster for ON CLUSTER (replicated, sharded)."""

    topology: Topology = "single"
    cluster: str | None = None

    def __post_init__(self) -> None:
        if self.topology not in TOPOLOGIES:
            raise ValueError(f"unknown topology {self.topology!r}: one of {', '.join(TOPOLOGIES)}")
        if self.topology in ON_CLUSTER and not self.cluster:
            raise ValueError(f"topology {self.topology} needs a cluster name")
        if self.cluster is not None and not CLUSTER_NAME.fullmatch(self.cluster):
            raise ValueError(f"cluster name {self.cluster!r}: letters, digits, _ . - only")

    @property
    def on_cluster(self) -> str:
        return f" ON CLUSTER '{self.cluster}'" if self.topology in ON_CLUSTER else ""


@dataclass(frozen=True)
class Migration:
    """One numbered file: its name (the file's stem), a checksum of its text, its statements."""

    name: str
    checksum: str
    statements: tuple[str, ...]


def load(ddl_dir: Path) -> list[Migration]:
    """The migrations in ``ddl_dir`` in name order (their numbers)."""
    out = []
    for path in sorted(ddl_dir.glob("*.sql")):
        text = path.read_text()
        out.append(Migration(path.stem, hashlib.sha256(text.encode()).hexdigest(),
                             tuple(statements(text))))
    return out


def statements(sql: str) -> list[str]:
    """A file's statements, without ``--`` comment lines, split at ``;``."""
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def render(statement: str, target: Target) -> list[str]:
    """One canonical statement -> the statements that do it on ``target``, in order."""
    if create := _CREATE.match(statement):
        return _render_create(statement, create, target)
    if alter := _ALTER.match(statement):
        if target.topology not in ON_CLUSTER:
            return [statement]
        table, action = alter["table"], alter["action"]
        tables = [table + LOCAL, table] if target.topology == "sharded" else [table]
        # sharded: the local tables first, so the Distributed table never names a column
        # its shards lack
        return [f"ALTER TABLE {t}{target.on_cluster} {action}" for t in tables]
    raise UnsupportedStatement(
        "only CREATE TABLE IF NOT EXISTS ... ENGINE = *MergeTree and ALTER TABLE ... ADD "
        f"COLUMN IF NOT EXISTS can be rendered for every topology, not: {statement[:80]!r}")


def _render_create(statement: str, create: re.Match[str], target: Target) -> list[str]:
    table, engine = create["table"], create["engine"]
    if engine.startswith(("Replicated", "Shared")):
        raise UnsupportedStatement(f"{table}: write the single-node engine ({engine} is "
                                   "chosen by the topology)")
    if target.topology not in ON_CLUSTER:
        return [statement]
    args = ", ".join(a for a in (REPLICA_ARGS, create["args"]) if a)
    local = table + LOCAL if target.topology == "sharded" else table
    replicated = (f"CREATE TABLE IF NOT EXISTS {local}{target.on_cluster}{create['columns']}"
                  f"ENGINE = Replicated{engine}({args}){create['tail'] or ''}")
    if target.topology == "replicated":
        return [replicated]
    if table not in SHARDING_KEYS:
        raise UnsupportedStatement(f"{table}: no sharding key: add one to SHARDING_KEYS in "
                                   "services/shared/migrations.py")
    distributed = (f"CREATE TABLE IF NOT EXISTS {table}{target.on_cluster} AS {local}\n"
                   f"ENGINE = Distributed('{target.cluster}', currentDatabase(), '{local}', "
                   f"{SHARDING_KEYS[table]})")
    return [replicated, distributed]


def rendered(migration: Migration, target: Target) -> list[str]:
    """Every statement of ``migration`` on ``target``."""
    return [out for statement in migration.statements for out in render(statement, target)]


def ledger_ddl(target: Target) -> str:
    """The table that records which migrations ran (a ReplacingMergeTree: a migration
    recorded twice, by two `sluice migrate` at once, is one row)."""
    engine = "ReplacingMergeTree(applied_at)"
    if target.topology in ON_CLUSTER:
        engine = f"ReplicatedReplacingMergeTree({LEDGER_REPLICA_ARGS}, applied_at)"
    return (f"CREATE TABLE IF NOT EXISTS {LEDGER}{target.on_cluster}\n(\n    name       String,\n"
            f"    checksum   String,\n    applied_at DateTime\n)\nENGINE = {engine}\nORDER BY name")


def script(migrations: list[Migration], target: Target) -> str:
    """What `sluice migrate --dry-run` prints: every statement, each ending with ``;``."""
    where = target.topology + (f", cluster '{target.cluster}'" if target.cluster else "")
    header = (f"-- Sluice's ClickHouse migrations for topology {where}.\n"
              "-- Printed only, nothing was run. `sluice migrate` runs, in this order, the\n"
              f"-- migrations not yet recorded in {LEDGER}; every statement is idempotent.")
    parts = [header, f"{ledger_ddl(target)};"]
    for m in migrations:
        parts.append(f"-- {m.name} (sha256 {m.checksum[:12]})\n"
                     + "\n".join(f"{s};" for s in rendered(m, target)))
    return "\n\n".join(parts) + "\n"


def applied(client: Client) -> dict[str, str]:
    """Migration name -> the checksum it had when it ran; {} before the ledger exists."""
    if not int(client.command(f"EXISTS TABLE {LEDGER}")):  # type: ignore[arg-type]
        return {}
    result = client.query(f"SELECT name, argMax(checksum, applied_at) FROM {LEDGER} GROUP BY name")
    return {str(name): str(checksum) for name, checksum in result.result_rows}


def pending(client: Client, migrations: list[Migration]) -> list[Migration]:
    """The migrations not recorded as applied, in order (a changed file is only logged:
    its statements are idempotent, and a new change gets a new number)."""
    done = applied(client)
    for m in migrations:
        if m.name in done and done[m.name] != m.checksum:
            log.warning("migration %s changed since it was applied (checksum %s, now %s); "
                        "it is not run again: put a change in a new file",
                        m.name, done[m.name][:12], m.checksum[:12])
    return [m for m in migrations if m.name not in done]


def apply(client: Client, migrations: list[Migration], target: Target) -> list[str]:
    """Run the pending migrations in order, recording each after all its statements
    succeeded; returns their names. Tables made by code older than the ledger are adopted:
    their statements run again (IF NOT EXISTS) and are recorded."""
    client.command(ledger_ddl(target))
    ran = []
    for m in pending(client, migrations):
        for statement in rendered(m, target):
            client.command(statement)
        client.insert(LEDGER, [[m.name, m.checksum, datetime.now(UTC)]],
                      column_names=["name", "checksum", "applied_at"],
                      settings={"async_insert": 0})
        log.info("applied ClickHouse migration %s", m.name)
        ran.append(m.name)
    return ran


def require_current(client: Client, migrations: list[Migration], target: Target) -> None:
    """Raise :class:`SchemaError` naming what is missing: production topologies change
    their schema only through `sluice migrate`, never as a side effect of a role's start."""
    if missing := [m.name for m in pending(client, migrations)]:
        raise SchemaError(
            f"ClickHouse ({target.topology}) lacks migrations {', '.join(missing)}: run "
            "`sluice migrate` (review first with `sluice migrate --dry-run`)")
