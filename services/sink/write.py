"""A batch of wire events -> one ClickHouse insert, without losing or blocking on bad rows.

The wire bytes are already JSONEachRow rows, so the happy path is one ``raw_insert`` of
the joined bytes. If it fails while ClickHouse answers pings, the data is at fault: the
batch is split in halves until the rows ClickHouse refuses are isolated, and those go to
the DLQ. If ClickHouse does not answer, the insert is retried with capped exponential
backoff until it does (the batch stays uncommitted, so nothing is lost).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from tenacity import Retrying, retry_if_exception_type, wait_exponential

from services.shared.clickhouse import Store

log = logging.getLogger(__name__)


class ClickHouseDown(Exception):
    """The insert failed and ClickHouse does not answer a ping: retry later."""


class RowWriter:
    def __init__(self, store: Store, table: str, max_backoff_s: float) -> None:
        self.store = store
        self.table = table
        self.max_backoff_s = max_backoff_s

    def write(self, rows: Sequence[bytes], reject: Callable[[int, str], None]) -> int:
        """Insert ``rows``; call ``reject(index, reason)`` for each row ClickHouse refuses.
        Returns how many rows were inserted. Blocks (retrying) while ClickHouse is down."""
        if not rows:
            return 0
        retrying = Retrying(
            retry=retry_if_exception_type(ClickHouseDown),
            wait=wait_exponential(multiplier=0.1, max=self.max_backoff_s),
            before_sleep=lambda state: log.warning(
                "ClickHouse unavailable (attempt %d), sink paused: %s",
                state.attempt_number, state.outcome.exception() if state.outcome else "",
            ),
            reraise=True,
        )
        return int(retrying(self._write_isolating, rows, 0, reject))

    def _write_isolating(
        self, rows: Sequence[bytes], offset: int, reject: Callable[[int, str], None]
    ) -> int:
        try:
            self.store.insert_json_rows(self.table, b"\n".join(rows))
            return len(rows)
        except Exception as exc:
            if not self.store.ping():
                raise ClickHouseDown(str(exc)) from exc
            if len(rows) == 1:
                reject(offset, f"ClickHouse refused the row: {str(exc)[:500]}")
                return 0
        half = len(rows) // 2
        return self._write_isolating(rows[:half], offset, reject) + self._write_isolating(
            rows[half:], offset + half, reject
        )
