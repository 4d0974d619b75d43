"""Erasure messages in the sink: the user's rows out of ClickHouse, in the topic's order.

The sink meets an erasure (services.shared.erasures) in its batch among events. It stores
the batch's events that came before it, deletes the user's rows, records the erasure in
the ``erasures`` table, then goes on with what came after it (:func:`segments`): an event
of the same user acked before the erasure is deleted with the rest, one acked after it is
the new user's and stays. The batch's offsets are committed only after all of it, as for
events, so a crash replays the erasure too: the delete and the record are idempotent.
Erasures that follow each other with no event between them (an operator's script) are one
DELETE: its cost hardly depends on how many users it names.

Why a lightweight ``DELETE FROM events WHERE ...`` and not a mutation (``ALTER TABLE
events DELETE ... SETTINGS mutations_sync=1``): both work on chDB's ReplacingMergeTree and
both are gone from every read (FINAL included) when the statement returns, but a mutation
rewrites every part that holds one of the user's rows, columns and all, while a
lightweight delete writes only the ``_row_exists`` mask of those parts: its cost does not
grow with the width of the rows, and it is what ClickHouse recommends for deleting a few
rows. Measured here (``python -m bench.erasure``, 1M rows in 5-10 parts, each user's rows
in every part, 2 shared cores): 0.2-1.2 s either way, mostly the mutation queue's own
latency (a user with no rows costs as much); with one part, 22 ms against 335 ms. The
masked bytes leave the disk when those parts are next merged; ``ALTER TABLE events APPLY
DELETED MASK`` forces that (docs/operating.md). ClickHouse >= 25.7's patch-part mode
(``lightweight_delete_mode='lightweight_update'``, needs the table settings
``enable_block_number_column`` and ``enable_block_offset_column``) took 15-20 ms on the
same 1M rows; not used yet: the oldest server Sluice is tested against (24.8) lacks it.

Last, a marker per erasure goes to ``<dlq>.erased``, so that ``sluice replay`` never puts
the users' dead letters back (services.sink.erased_letters).

ClickHouse or the broker down: the erasure is retried with backoff, as an insert is;
nothing after it is stored or committed meanwhile (the sink pauses). A malformed erasure message (not from
Sluice) goes to the DLQ like any malformed event.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence

import orjson
from confluent_kafka import Message
from prometheus_client import Counter
from tenacity import Retrying, retry_if_not_exception_type, wait_exponential

from services.shared import erasures
from services.shared.clickhouse import Store
from services.shared.erasures import Erasure, InvalidEvent
from services.shared.settings import Settings
from services.sink.erased_letters import Markers, marker

log = logging.getLogger(__name__)

ERASURES = Counter("sluice_erasures", "User erasures the sink carried out in ClickHouse")
ERASED_ROWS = Counter("sluice_erased_rows", "Event rows the sink deleted for erasures")

DeadLetter = Callable[[Message, str, str], None]  # (message, reason, category)


def segments(messages: Sequence[Message]) -> Iterator[tuple[list[Message], list[Message]]]:
    """Events topic messages in order -> (the events before a run of erasures, the run), ...,
    (the events after the last run, []). Erasures with no event between them are one run:
    one DELETE for them all (its cost is mostly the mutation queue's latency, whatever the
    users: measured 0.2-0.9 s for 1 user or 200)."""
    part: list[Message] = []
    run: list[Message] = []
    for message in messages:
        if erasures.is_erasure(message.value()):
            run.append(message)
            continue
        if run:
            yield part, run
            part, run = [], []
        part.append(message)
    if part or run:
        yield part, run


class Erasures:
    """Carries out the erasures of the sink's batches (on the sink's writer thread)."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.store = store
        self.cluster = settings.clickhouse_cluster
        self.max_backoff_s = settings.sink_retry_max_backoff_s
        self.done = 0
        # so that `sluice replay` leaves the users' dead letters out (sink.erased_letters)
        self.markers: Markers | None = Markers(settings)

    def apply(self, messages: list[Message], dead_letter: DeadLetter) -> None:
        """One run of erasure messages (no event between them); a malformed one goes to
        the DLQ."""
        found: list[tuple[Erasure, int, int]] = []
        for message in messages:
            try:
                found.append((erasures.decode(message.value()), message.partition() or 0,
                              message.offset() or 0))
            except InvalidEvent as exc:
                dead_letter(message, str(exc), "invalid_event")
        if not found:
            return
        retrying = Retrying(
            retry=retry_if_not_exception_type(InvalidEvent),
            wait=wait_exponential(multiplier=0.1, max=self.max_backoff_s),
            before_sleep=lambda state: log.warning(
                "ClickHouse did not take an erasure (attempt %d), sink paused: %s",
                state.attempt_number, state.outcome.exception() if state.outcome else ""),
            reraise=True,
        )
        retrying(self.erase, found)

    def erase(self, found: list[tuple[Erasure, int, int]]) -> int:
        """Delete the users' rows (one statement) and record each erasure; returns the rows
        deleted."""
        began = time.perf_counter()
        wanted = [erasure for erasure, _, _ in found]
        counted = {(r["program_id"], r["user_id"]): int(r["n"])
                   for r in self.store.query(erasures.count_statement(wanted))}
        self.store.command(erasures.delete_statement(wanted, self.store.topology, self.cluster))
        rows = [erasures.record_row(e, partition, offset,
                                    counted.pop((e.program_id, e.user_id), 0))
                for e, partition, offset in found]  # a user erased twice: its rows count once
        self.store.insert_json_rows("erasures", b"\n".join(rows))
        if self.markers is not None:
            self.markers.publish([marker(e, partition, offset) for e, partition, offset in found])
        deleted = sum(orjson.loads(row)["rows_deleted"] for row in rows)
        self.done += len(found)
        ERASURES.inc(len(found))
        ERASED_ROWS.inc(deleted)
        log.info("erased %d users (%d rows) from ClickHouse in %.3f s", len(found), deleted,
                 time.perf_counter() - began)
        return deleted
