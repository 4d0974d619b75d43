"""Migrations: each numbered file rendered per topology (locked by snapshots), every
rendering parsed by ClickHouse's own parser (chDB), the single one run for real.

The snapshots are tests/unit/services/shared/snapshots/migrations_<topology>.sql: exactly
what `sluice migrate --dry-run` prints. After a deliberate change, rewrite them with
``SLUICE_UPDATE_SNAPSHOTS=1 pytest tests/unit/services/shared/test_migrations.py`` and
read the diff.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import clickhouse_connect
import pytest
from clickhouse_connect.driver.client import Client

from services.shared import migrations
from services.shared.migrations import (
    LEDGER,
    SHARDING_KEYS,
    TOPOLOGIES,
    SchemaError,
    Target,
    UnsupportedStatement,
)
from services.shared.settings import REPO_ROOT

DDL_DIR = REPO_ROOT / "deploy" / "clickhouse"
SNAPSHOTS = Path(__file__).parent / "snapshots"
TARGETS = {t: Target(t, "sluice" if t in migrations.ON_CLUSTER else None) for t in TOPOLOGIES}
MIGRATIONS = migrations.load(DDL_DIR)


@pytest.fixture
def chdb(tmp_path: Path) -> Iterator[Client]:
    """Embedded ClickHouse on a fresh directory (one chDB path per process at a time:
    closed after each test)."""
    client = clickhouse_connect.get_client(dsn=f"chdb://{tmp_path / 'ch'}")
    yield client
    client.close()


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_each_topology_renders_as_its_snapshot(topology: str) -> None:
    path = SNAPSHOTS / f"migrations_{topology}.sql"
    text = migrations.script(MIGRATIONS, TARGETS[topology])  # type: ignore[index]
    if os.environ.get("SLUICE_UPDATE_SNAPSHOTS"):
        path.write_text(text)
    assert text == path.read_text(), f"rendering changed: see {path} (and its docstring)"


def test_the_snapshots_cover_every_migration() -> None:
    names = [m.name for m in MIGRATIONS]
    assert names == sorted(names) and names[0].startswith("0001_")
    for topology in TOPOLOGIES:
        text = (SNAPSHOTS / f"migrations_{topology}.sql").read_text()
        assert re.findall(r"^-- (\d{4}_\w+) ", text, re.MULTILINE) == names, topology


@pytest.mark.parametrize("topology", ["single", "cloud"])
def test_single_and_cloud_run_the_files_own_statements(topology: str) -> None:
    for m in MIGRATIONS:
        assert migrations.rendered(m, TARGETS[topology]) == list(m.statements)  # type: ignore[index]
    assert "ON CLUSTER" not in migrations.script(MIGRATIONS, TARGETS[topology])  # type: ignore[index]


def test_replicated_tables_are_created_and_altered_on_the_cluster() -> None:
    for m in MIGRATIONS:
        for statement in migrations.rendered(m, TARGETS["replicated"]):
            assert " ON CLUSTER 'sluice'" in statement
            if statement.startswith("CREATE"):
                assert "ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{uuid}/{shard}', " \
                       "'{replica}'" in statement


def _sorting_columns(create: str) -> list[str]:
    order_by = re.search(r"ORDER BY \(?([^)\n]*)\)?", create)
    assert order_by, create
    return [c.strip() for c in order_by.group(1).split(",")]


def test_sharding_keys_keep_every_copy_of_a_row_on_one_shard() -> None:
    """ReplacingMergeTree collapses copies only within a shard: the sharding key uses only
    columns of the sorting key, so every copy of a row hashes alike; and a prefix of it, so
    a read of one user (program_id, user_id) goes to one shard."""
    created = [s for m in MIGRATIONS for s in m.statements if s.startswith("CREATE")]
    assert {re.match(r"CREATE TABLE IF NOT EXISTS (\w+)", s)[1] for s in created} == set(  # type: ignore[index]
        SHARDING_KEYS)
    for statement in created:
        table = re.match(r"CREATE TABLE IF NOT EXISTS (\w+)", statement)[1]  # type: ignore[index]
        key_columns = [c for c in re.findall(r"\w+", SHARDING_KEYS[table]) if c != "cityHash64"]
        assert key_columns == _sorting_columns(statement)[:len(key_columns)], table
    events = next(s for s in created if "EXISTS events" in s)
    assert "PARTITION BY toYYYYMM(event_timestamp)" in events  # the event's own time


def test_sharded_uses_local_tables_under_distributed_ones_named_as_before() -> None:
    rendered = [s for m in MIGRATIONS for s in migrations.rendered(m, TARGETS["sharded"])]
    for table, key in SHARDING_KEYS.items():
        local = next(s for s in rendered if s.startswith(f"CREATE TABLE IF NOT EXISTS {table}_local "))
        assert "ReplicatedReplacingMergeTree(" in local
        distributed = rendered.index(
            f"CREATE TABLE IF NOT EXISTS {table} ON CLUSTER 'sluice' AS {table}_local\n"
            f"ENGINE = Distributed('sluice', currentDatabase(), '{table}_local', {key})")
        assert rendered.index(local) < distributed
    alters = [s for s in rendered if s.startswith("ALTER")]
    assert len(alters) == 2 * sum(s.startswith("ALTER") for m in MIGRATIONS for s in m.statements)
    for first, second in zip(alters[::2], alters[1::2], strict=True):  # the shards' first
        assert first.startswith("ALTER TABLE events_local ON CLUSTER 'sluice' ADD COLUMN IF NOT EXISTS")
        assert second == first.replace("events_local", "events", 1)


@pytest.mark.parametrize("statement", [
    "DROP TABLE events",
    "CREATE TABLE events (a String) ENGINE = MergeTree ORDER BY a",  # not IF NOT EXISTS
    "ALTER TABLE events ADD COLUMN a String",  # not IF NOT EXISTS: not idempotent
    "ALTER TABLE events DROP COLUMN IF EXISTS a",
    "CREATE TABLE IF NOT EXISTS t (a String) ENGINE = ReplicatedMergeTree ORDER BY a",
    "CREATE TABLE IF NOT EXISTS t (a String) ENGINE = Memory",
])
def test_what_cannot_be_rendered_everywhere_is_refused_on_every_topology(statement: str) -> None:
    for target in TARGETS.values():
        with pytest.raises(UnsupportedStatement):
            migrations.render(statement, target)


def test_a_new_table_needs_a_sharding_key_before_it_can_be_sharded() -> None:
    statement = "CREATE TABLE IF NOT EXISTS clicks (a String) ENGINE = MergeTree ORDER BY a"
    assert migrations.render(statement, TARGETS["replicated"])  # fine unsharded
    with pytest.raises(UnsupportedStatement, match="no sharding key"):
        migrations.render(statement, TARGETS["sharded"])


@pytest.mark.parametrize(("topology", "cluster", "error"), [
    ("sharded", None, "needs a cluster"),
    ("replicated", "", "needs a cluster"),
    ("sharded", "x' ON CLUSTER y", "letters, digits"),
    ("galaxy", None, "unknown topology"),
])
def test_a_target_refuses_what_would_render_wrong(topology: str, cluster: str | None,
                                                   error: str) -> None:
    with pytest.raises(ValueError, match=error):
        Target(topology, cluster)  # type: ignore[arg-type]


# -- ClickHouse's parser and chDB ------------------------------------------------------

def _format(client: Client, statement: str) -> str:
    return str(client.query("SELECT formatQuery({q:String})", parameters={"q": statement})
               .result_rows[0][0])


def test_every_rendering_parses_in_clickhouse(chdb: Client) -> None:
    """chDB parses cluster DDL (it cannot run it): a typo in any topology fails here."""
    for target in TARGETS.values():
        statements = [migrations.ledger_ddl(target)]
        statements += [s for m in MIGRATIONS for s in migrations.rendered(m, target)]
        for statement in statements:
            formatted = _format(chdb, statement)
            if target.topology in migrations.ON_CLUSTER:
                assert "ON CLUSTER sluice" in formatted, statement
    with pytest.raises(Exception, match="Syntax error"):  # the check can fail
        _format(chdb, "CREATE TABLE IF NOT EXISTS events ON CLUSTER 'sluice' (a String ENGINE")


def test_single_applies_every_migration_once_and_records_it(chdb: Client) -> None:
    single = TARGETS["single"]
    assert migrations.apply(chdb, MIGRATIONS, single) == [m.name for m in MIGRATIONS]
    assert migrations.applied(chdb) == {m.name: m.checksum for m in MIGRATIONS}
    assert migrations.apply(chdb, MIGRATIONS, single) == []
    assert chdb.command(f"SELECT count() FROM {LEDGER} FINAL") == len(MIGRATIONS)
    columns = chdb.query("SELECT name FROM system.columns WHERE table = 'events'").result_rows
    assert ("update_session",) in columns  # the last migration ran
    migrations.require_current(chdb, MIGRATIONS, single)


def test_a_directory_made_before_the_ledger_is_adopted_as_it_is(chdb: Client) -> None:
    for m in MIGRATIONS:  # what Store did before migrations were recorded
        for statement in m.statements:
            chdb.command(statement)
    chdb.command("INSERT INTO events (program_id, event_id, user_id, event_timestamp, "
                 "event_type, received_at) VALUES ('p', generateUUIDv4(), 'u', now(), 'view', now())")
    assert migrations.applied(chdb) == {}
    assert migrations.apply(chdb, MIGRATIONS, TARGETS["single"]) == [m.name for m in MIGRATIONS]
    assert chdb.command("SELECT count() FROM events") == 1
    assert migrations.apply(chdb, MIGRATIONS, TARGETS["single"]) == []


def test_a_missing_migration_is_named_and_not_applied_by_the_check(chdb: Client) -> None:
    migrations.apply(chdb, MIGRATIONS[:-1], TARGETS["single"])
    with pytest.raises(SchemaError, match=f"lacks migrations {MIGRATIONS[-1].name}: run "
                                          "`sluice migrate`"):
        migrations.require_current(chdb, MIGRATIONS, TARGETS["single"])
    assert MIGRATIONS[-1].name not in migrations.applied(chdb)
