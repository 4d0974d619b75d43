"""ClickHouse access shared by the sink (writes) and the gateway (reads).

The same clickhouse-connect code talks to a ClickHouse server (``http://...``) or to
embedded chDB (``chdb:///path``). chDB lets only one process open a path, so in the
embedded mode the sink and the gateway's reads share one :class:`Store` in one process;
a lock serialises calls because one embedded session is not safe to share across threads.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from services.shared.settings import Settings

log = logging.getLogger(__name__)

# ISO 8601 with offset or Z, as the wire form carries it.
INSERT_SETTINGS = {
    "date_time_input_format": "best_effort",
    "input_format_skip_unknown_fields": 1,
}

EVENT_COLUMNS = (
    "program_id, toString(event_id) AS event_id, user_id, event_timestamp, event_type, "
    "asset_id, labels, received_at, queue_updates, process_user_actions, asset_labels, "
    "source, client_event_id, session_id, anonymous_id, email, properties, value"
)


def connect(dsn: str) -> Client:
    if dsn.startswith("chdb://"):
        Path(dsn.removeprefix("chdb://")).mkdir(parents=True, exist_ok=True)
        return clickhouse_connect.get_client(dsn=dsn)
    return clickhouse_connect.get_client(dsn=dsn, autogenerate_session_id=False)


def apply_ddl(client: Client, ddl_dir: Path) -> list[str]:
    """Apply every ``*.sql`` file in name order; each is idempotent (IF NOT EXISTS)."""
    applied = []
    for path in sorted(ddl_dir.glob("*.sql")):
        for statement in _statements(path.read_text()):
            client.command(statement)
        applied.append(path.name)
    return applied


def _statements(sql: str) -> list[str]:
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


class Store:
    """One ClickHouse client, its schema applied, safe to call from several threads."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client = connect(settings.clickhouse_dsn)
        self._lock = threading.Lock()
        with self._lock:
            apply_ddl(self.client, settings.ddl_dir)

    def insert_json_rows(self, table: str, rows: bytes) -> None:
        """Insert newline-separated JSON objects (the events' wire bytes) in one block."""
        with self._lock:
            self.client.raw_insert(
                table, insert_block=rows, fmt="JSONEachRow", settings=INSERT_SETTINGS
            )

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
        """A user's stored events, newest first, each replayed duplicate collapsed (FINAL)."""
        return self.query(
            f"SELECT {EVENT_COLUMNS} FROM events FINAL "
            "WHERE program_id = {p:String} AND user_id = {u:String} "
            "ORDER BY event_timestamp DESC, received_at DESC LIMIT {n:UInt32}",
            {"p": program_id, "u": user_id, "n": limit},
        )

    def close(self) -> None:
        with self._lock:
            self.client.close()
