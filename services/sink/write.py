"""A batch of wire events -> one ClickHouse insert, without losing or blocking on bad rows.

The wire bytes are already JSONEachRow rows, so the happy path is one ``raw_insert`` of
the joined chunks (a chunk is one message: one or more rows), never split into rows. If
it fails while ClickHouse answers pings, the data is at fault: the batch is split in
halves, a lone chunk into its rows, until the rows ClickHouse refuses are isolated, and
those go to the DLQ. If ClickHouse does not answer, the insert is retried with capped exponential
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


Reject = Callable[[int, bytes, str], None]  # (chunk index, refused row, reason)


class RowWriter:
    def __init__(self, store: Store, table: str, max_backoff_s: float) -> None:
        self.store = store
        self.table = table
        self.max_backoff_s = max_backoff_s

    def write(self, chunks: Sequence[bytes], reject: Reject) -> int:
        """Insert the rows of ``chunks``; call ``reject(chunk index, row, reason)`` for each
        row ClickHouse refuses. Returns how many rows were inserted. Blocks (retrying)
        while ClickHouse is down."""
        if not chunks:
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
        return int(retrying(self._write_isolating, chunks, list(range(len(chunks))), reject))

    def _write_isolating(self, chunks: Sequence[bytes], origins: Sequence[int], reject: Reject) -> int:
        try:
            self.store.insert_json_rows(self.table, b"\n".join(chunks))
            return sum(chunk.count(b"\n") + 1 for chunk in chunks)
        except Exception as exc:
            if not self.store.ping():
                raise ClickHouseDown(str(exc)) from exc
            if len(chunks) == 1:
                rows = chunks[0].split(b"\n")
                if len(rows) == 1:
                    reject(origins[0], chunks[0], f"ClickHouse refused the row: {str(exc)[:500]}")
                    return 0
                return self._write_isolating(rows, [origins[0]] * len(rows), reject)
        half = len(chunks) // 2
        return self._write_isolating(chunks[:half], origins[:half], reject) + self._write_isolating(
            chunks[half:], origins[half:], reject
        )
