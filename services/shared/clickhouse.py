"""ClickHouse access shared by the sink (writes) and the gateway (reads).

The same clickhouse-connect code talks to a ClickHouse server (``http://...``) or to
embedded chDB (``chdb:///path``). chDB lets only one process open a path, so in the
embedded mode the sink and the gateway's reads share one :class:`Store` in one process;
a lock serialises calls because one embedded session is not safe to share across threads.

The schema comes from services/shared/migrations.py. On the ``single`` topology (the
embedded default, or one server) a Store applies what is missing when it opens, as it
always has; on ``replicated``, ``sharded`` and ``cloud`` only `sluice migrate` changes the
schema, and a Store refuses to open while migrations are missing (naming them): a role
that inserted into a table without a new column would drop that field silently
(``input_format_skip_unknown_fields``).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from services.shared import migrations
from services.shared.migrations import Target
from services.shared.settings import Settings

log = logging.getLogger(__name__)

INSERT_SETTINGS: dict[str, str | int] = {
    "date_time_input_format": "best_effort",  # ISO 8601 with offset or Z, as the wire has it
    "input_format_skip_unknown_fields": 1,
    # ClickHouse 26 defaults to async inserts: the sink's batches are already large, its
    # commit must follow rows that are in the table, and retries rely on the insert
    # deduplication that async inserts skip (async_insert_deduplicate=0). chDB takes it.
    "async_insert": 0,
}

EVENT_COLUMNS = (
    "program_id, toString(event_id) AS event_id, user_id, event_timestamp, client_timestamp, "
    "event_type, "
    "asset_id, labels, received_at, queue_updates, process_user_actions, asset_labels, "
    "source, client_event_id, session_id, anonymous_id, email, properties, value"
)


def connect(dsn: str) -> Client:
    if dsn.startswith("chdb://"):
        Path(dsn.removeprefix("chdb://")).mkdir(parents=True, exist_ok=True)
        return clickhouse_connect.get_client(dsn=dsn)
    return clickhouse_connect.get_client(dsn=dsn, autogenerate_session_id=False)


def target(settings: Settings) -> Target:
    """Where this process's DDL and inserts go. Embedded chDB is one node: it cannot create
    Replicated tables or run ON CLUSTER, so only ``single`` runs on it."""
    found = Target(settings.clickhouse_topology, settings.clickhouse_cluster)
    if found.topology != "single" and settings.clickhouse_is_embedded:
        raise migrations.SchemaError(f"SLUICE_CLICKHOUSE_TOPOLOGY={found.topology} needs a ClickHouse "
                         "server (SLUICE_CLICKHOUSE_URL): embedded chDB is one node")
    return found


def insert_settings(topology: migrations.Topology) -> dict[str, str | int]:
    """The settings of every insert into ``topology``, but for the per-batch dedup token.
    sharded: the Distributed table writes to the shards before the insert returns (its
    default queues rows on the local disk and sends them later, so the sink would commit
    offsets for rows no shard holds yet)."""
    if topology == "sharded":
        return INSERT_SETTINGS | {"distributed_foreground_insert": 1}
    return dict(INSERT_SETTINGS)


def dedup_token(table: str, rows: bytes) -> str:
    """``insert_deduplication_token`` of one insert: the table and a digest of its bytes.

    A retried insert of the same rows (the write timed out, the server had stored it) then
    carries the same token, and every replica (Replicated*, Distributed's shards, Cloud's
    SharedMergeTree) drops the second copy whatever blocks the server cut it into. From the
    bytes, not from Kafka offsets: a batch mixes partitions and the sink re-inserts halves
    of one to isolate a refused row, and offsets start again at 0 when a topic is
    re-created (the embedded broker's are new at every start), where an offset token would
    silently drop new rows as duplicates. blake2b: ~11 ms per 10 MB batch on this box."""
    return f"{table}-{hashlib.blake2b(rows, digest_size=16).hexdigest()}"


def prepare_schema(client: Client, settings: Settings) -> list[str]:
    """single: apply the missing migrations (names returned). Other topologies: check
    only (see the module's docstring)."""
    where, found = target(settings), migrations.load(settings.ddl_dir)
    if where.topology == "single":
        return migrations.apply(client, found, where)
    migrations.require_current(client, found, where)
    return []


class Store:
    """One ClickHouse client, its schema applied, safe to call from several threads."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topology = target(settings).topology
        self._insert_settings = insert_settings(self.topology)
        self.client = connect(settings.clickhouse_dsn)
        self._lock = threading.Lock()
        try:
            with self._lock:
                prepare_schema(self.client, settings)
        except BaseException:
            self.client.close()
            raise

    def insert_json_rows(self, table: str, rows: bytes) -> None:
        """Insert newline-separated JSON objects (the events' wire bytes) in one block."""
        settings = self._insert_settings
        if self.topology != "single":  # a plain MergeTree keeps no dedup log: no token
            settings = settings | {"insert_deduplication_token": dedup_token(table, rows)}
        with self._lock:
            self.client.raw_insert(table, insert_block=rows, fmt="JSONEachRow", settings=settings)

    def ping(self) -> bool:
        try:
            with self._lock:
                return bool(self.client.command("SELECT 1") == 1)
        except Exception:  # noqa: BLE001 - any failure means "not reachable"
            return False

    def command(self, sql: str) -> None:
        """A statement without a result (DDL, settings), serialised with the other calls."""
        with self._lock:
            self.client.command(sql)

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        with self._lock:
            result = self.client.query(sql, parameters=parameters or {})
        return [dict(zip(result.column_names, row)) for row in result.result_rows]

    @contextmanager
    def stream_rows(self, sql: str) -> Iterator[Iterator[list[tuple[Any, ...]]]]:
        """Rows of a large result in blocks, without holding it all in memory."""
        with self._lock, self.client.query_row_block_stream(sql) as blocks:
            yield blocks

    def user_events(self, program_id: str, user_id: str, limit: int) -> list[dict[str, Any]]:
        """A user's stored events, newest first, each once: a replayed duplicate collapses
        (FINAL), and so does a client's retry whose skew-corrected time differs (same event_id,
        another sorting key: LIMIT 1 BY keeps the newest copy)."""
        return self.query(
            f"SELECT {EVENT_COLUMNS} FROM events FINAL "
            "WHERE program_id = {p:String} AND user_id = {u:String} "
            "ORDER BY event_timestamp DESC, received_at DESC LIMIT 1 BY event_id "
            "LIMIT {n:UInt32}",
            {"p": program_id, "u": user_id, "n": limit},
        )

    def close(self) -> None:
        with self._lock:
            self.client.close()
