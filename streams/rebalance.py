"""What a rebalance must not let through: source records fetched for an assignment that a
rebalance has since replaced.

Faust's consumer fetches in its own thread (``Consumer._wait_next_records``) and checks the
generation only *after* the fetch returns, against the generation of that moment. A fetch
that started before a rebalance and returned after it (the worker kept the partition, its
positions were sought back to the committed offsets meanwhile) delivers records from the
old position: past the messages the rebalance dropped from the agent's buffers. Faust's
drain loop then takes the jump for a compaction gap (``Consumer._add_gap``): the skipped
offsets count as done, its read offset moves past them, and when the sought-back fetch
brings them again they are dropped as already read ("DROPPED MESSAGE ROFF"). Those events
are never applied, and the committed offset stays at the first of them for good (it is
neither acked nor in the gap). Measured: 128 of 500 users short by 21 events and a
partition stuck at 1,547 of 2,389 in the first run of tests/integration/test_agents_scaling.py
(faust-streaming#216 describes the same race for apps without tables).

The guard: a fetch whose records span the start of a rebalance is discarded. Nothing is
lost by it: every rebalance ends with a seek of every source partition to its committed
offset (``Recovery.on_recovery_completed`` -> ``perform_seek``), and the fetches after it
read those records again.
"""

from __future__ import annotations

import logging
from typing import Any

from faust.transport.consumer import Consumer

log = logging.getLogger(__name__)

_PATCHED: list[bool] = []


def drop_fetches_across_rebalances() -> None:
    """Install the guard on Faust's consumer (once per process)."""
    if _PATCHED:
        return
    _PATCHED.append(True)
    fetch = Consumer._wait_next_records

    async def _wait_next_records(self: Consumer, timeout: float) -> tuple[Any, Any]:
        started = self.app.rebalancing_count  # bumped at every rebalance's start
        records, active = await fetch(self, timeout)
        if records and self.app.rebalancing_count != started:
            log.info("agents: dropped %d records fetched across a rebalance (read again "
                     "from the committed offsets)", sum(map(len, records.values())))
            return {}, active
        return records, active

    Consumer._wait_next_records = _wait_next_records  # type: ignore[method-assign]
