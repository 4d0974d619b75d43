"""A batch of wire events -> one ClickHouse insert, without losing or blocking on bad rows.

The wire bytes are already JSONEachRow rows, so the happy path is one ``raw_insert`` of
the joined chunks (a chunk is one message: one or more rows), never split into rows. If
it fails while ClickHouse answers pings, with an error about the data, the batch is split
in halves, a lone chunk into its rows, until the rows ClickHouse refuses are isolated, and
those go to the DLQ. If ClickHouse does not answer, or refuses the insert for a reason of
its own (too many parts, memory, read-only, quorum, timeouts: see SERVER_SIDE), the insert
is retried with capped exponential backoff until it succeeds (the batch stays
uncommitted, so nothing is lost and nothing good goes to the DLQ).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence

from tenacity import Retrying, retry_if_exception_type, wait_exponential

from services.shared.clickhouse import Store

log = logging.getLogger(__name__)


class ClickHouseDown(Exception):
    """The insert failed for a reason that is not the rows': retry later."""


# ClickHouse error codes that say "not now", whatever the rows: an insert refused with one
# of them is retried, never split into dead letters. An error without a code (connection
# refused, HTTP 5xx from a proxy) is treated the same.
SERVER_SIDE = frozenset({
    3, 23, 24, 74, 75, 159, 164, 202, 209, 210, 236, 241, 242, 243, 252, 279, 285, 286, 289,
    319, 394, 425, 497, 516, 999, 1000,
})
_CODE = re.compile(r"Code: (\d+)")


def refused_by_server(exc: BaseException) -> bool:
    """True when ClickHouse refused the insert for its own reasons, not the data's."""
    found = _CODE.search(str(exc))
    return found is None or int(found.group(1)) in SERVER_SIDE


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
                "ClickHouse unavailable or refusing inserts (attempt %d), sink paused: %s",
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
            if not self.store.ping() or refused_by_server(exc):
                raise ClickHouseDown(str(exc)[:500]) from exc
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
