"""A stopping worker's hand-over (streams.handover): it waits for the new owners only while
another worker answers."""

import asyncio
import time
from typing import Any

from services.shared.broker import free_port
from streams.handover import hand_over


class Reads:
    def __init__(self, owners: dict[str, str]) -> None:
        self._owners = owners
        self.stopped = False
        self.copy_reads = 0

    def stop_serving(self) -> frozenset[int]:
        self.stopped = True
        return frozenset({0, 1})

    def owners(self) -> dict[str, Any]:
        return {"generation": 3, "rebalancing": False, "owners": self._owners}


def test_with_no_other_worker_answering_it_stops_at_once() -> None:
    me, dead = "http://127.0.0.1:1", f"http://127.0.0.1:{free_port()}"
    reads = Reads({"0": me, "1": dead})
    began = time.monotonic()
    asyncio.run(hand_over(reads, me, timeout_s=15.0))  # type: ignore[arg-type]
    assert reads.stopped and time.monotonic() - began < 3.0


def test_alone_in_the_group_there_is_nothing_to_hand_over() -> None:
    me = "http://127.0.0.1:1/"
    reads = Reads({"0": me, "1": me})
    began = time.monotonic()
    asyncio.run(hand_over(reads, me, timeout_s=15.0))  # type: ignore[arg-type]
    assert reads.stopped and time.monotonic() - began < 0.5
