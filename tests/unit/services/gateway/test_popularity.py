"""Program popularity in the gateway: one query at a time per program, stale values served
while it runs, and a failing store that costs neither 500s nor a query per read. A fake
store counts its queries and holds each one until the test lets it answer."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import pytest

from services.gateway.popularity import Popularities
from services.shared.ranking import Popularity

READERS = 50


class FakeStore:
    """``query`` counts its calls and blocks (in the worker thread) until ``gate`` is set."""

    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts
        self.calls = 0
        self._lock = threading.Lock()
        self.fail = False
        self.gate = threading.Event()
        self.gate.set()

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        with self._lock:
            self.calls += 1
        assert self.gate.wait(10), "the test never let the query answer"
        if self.fail:
            raise ConnectionError("ClickHouse is down")
        return [{"asset_id": a, "n": n} for a, n in self.counts.items()]


def counts(p: Popularity) -> dict[str, int]:
    return dict(p.items())


def popularities(store: FakeStore, ttl_s: float, first_wait_s: float = 5.0) -> Popularities:
    return Popularities(store, ttl_s, first_wait_s)  # type: ignore[arg-type]


async def settled(pops: Popularities) -> None:
    """Until no refresh is in flight."""
    for _ in range(500):
        if not pops._refreshing:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("a refresh never finished")


def test_concurrent_first_reads_share_one_query() -> None:
    async def main() -> None:
        store = FakeStore({"a": 2})
        store.gate.clear()
        pops = popularities(store, ttl_s=60)
        reads = asyncio.gather(*(pops.of("p") for _ in range(READERS)))
        await asyncio.sleep(0.05)
        store.gate.set()
        assert [counts(p) for p in await reads] == [{"a": 2}] * READERS
        assert store.calls == 1
        assert counts(await pops.of("p")) == {"a": 2} and store.calls == 1  # fresh: cached

    asyncio.run(main())


def test_reads_after_expiry_get_the_stale_value_at_once_and_cause_one_query() -> None:
    async def main() -> None:
        store = FakeStore({"a": 1})
        pops = popularities(store, ttl_s=0.05)
        assert counts(await pops.of("p")) == {"a": 1}
        await asyncio.sleep(0.1)  # expired
        store.counts, store.gate = {"a": 1, "b": 3}, threading.Event()  # the refresh hangs
        try:
            started = time.monotonic()
            stale = await asyncio.gather(*(pops.of("p") for _ in range(READERS)))
            # all answered while the refresh is still blocked in the store: nobody waited
            assert time.monotonic() - started < 1.0
            assert [counts(p) for p in stale] == [{"a": 1}] * READERS
            assert len(pops._refreshing) == 1  # one refresh started, not waited for
            await asyncio.sleep(0.05)
            assert store.calls == 2 and len(pops._refreshing) == 1  # in the store, blocked
        finally:
            store.gate.set()
        await settled(pops)
        assert store.calls == 2
        assert counts(await pops.of("p")) == {"a": 1, "b": 3}

    asyncio.run(main())


def test_a_failing_refresh_keeps_the_last_value_logs_and_retries_after_ttl(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        store = FakeStore({"a": 1})
        pops = popularities(store, ttl_s=0.2)
        assert counts(await pops.of("p")) == {"a": 1}
        await asyncio.sleep(0.25)
        store.fail = True
        with caplog.at_level(logging.WARNING, logger="services.gateway.popularity"):
            assert counts(await pops.of("p")) == {"a": 1}  # starts the refresh, which fails
            await settled(pops)
        assert "not refreshed" in caplog.text and "ClickHouse is down" in caplog.text
        assert store.calls == 2
        # not a query per read while it is down: the next try comes ttl_s after the failure
        for _ in range(READERS):
            assert counts(await pops.of("p")) == {"a": 1}
        assert store.calls == 2
        store.fail, store.counts = False, {"a": 1, "c": 5}
        await asyncio.sleep(0.25)
        assert counts(await pops.of("p")) == {"a": 1}
        await settled(pops)
        assert counts(await pops.of("p")) == {"a": 1, "c": 5} and store.calls == 3

    asyncio.run(main())


def test_a_failing_first_refresh_ranks_without_popularity(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        store = FakeStore({"a": 1})
        store.fail = True
        pops = popularities(store, ttl_s=60)
        with caplog.at_level(logging.WARNING, logger="services.gateway.popularity"):
            assert len(await pops.of("p")) == 0  # no 500
        assert "not refreshed" in caplog.text

    asyncio.run(main())


def test_the_first_read_waits_at_most_first_wait_s() -> None:
    async def main() -> None:
        store = FakeStore({"a": 4})
        store.gate.clear()
        pops = popularities(store, ttl_s=60, first_wait_s=0.1)
        try:
            started = time.monotonic()
            assert len(await pops.of("p")) == 0  # ranked without popularity, not held
            assert time.monotonic() - started < 1.0
        finally:
            store.gate.set()
        await settled(pops)
        assert counts(await pops.of("p")) == {"a": 4} and store.calls == 1  # the same query

    asyncio.run(main())


def test_programs_are_refreshed_apart() -> None:
    async def main() -> None:
        store = FakeStore({"a": 1})
        pops = popularities(store, ttl_s=60)
        await asyncio.gather(pops.of("p"), pops.of("q"), pops.of("p"))
        assert store.calls == 2

    asyncio.run(main())


def test_no_store_no_popularity() -> None:
    assert len(asyncio.run(Popularities(None, 2.0).of("p"))) == 0
