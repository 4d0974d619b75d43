"""Program-wide popularity (events per asset): an aggregate ClickHouse is made for.

Used to break ranking ties and for cold-start recommendations; refreshed per program every
``popularity_ttl_s``. Without ClickHouse in this process, popularity is empty.
"""

from __future__ import annotations

import asyncio
import logging
import time

from services.shared.clickhouse import Store
from services.shared.ranking import Popularity

log = logging.getLogger(__name__)

# how long a program's first read waits for its first popularity before ranking without it
FIRST_READ_WAIT_S = 2.0
QUERY = ("SELECT asset_id, count() AS n FROM events WHERE program_id = {p:String} "
         "GROUP BY asset_id ORDER BY n DESC LIMIT 10000")


class Popularities:
    """Each program's popularity, one query at a time, waited for only by its first read.

    The query aggregates the program's whole events table. Run per request on expiry, every
    read in flight missed at once and ran its own (a stampede each ``ttl_s``, queued on the
    store's lock and the thread pool, that held recommendations for seconds). So a program
    has at most one refresh in flight (single-flight), and once it has a value, a read past
    ``ttl_s`` gets that value at once and starts the refresh in the background
    (stale-while-revalidate). Only a program's first read waits, for the shared refresh and
    at most ``first_wait_s``; past that it ranks with an empty popularity (ties then go by
    asset id), which is also what a failed first refresh leaves. A failed refresh is logged
    and tried again ``ttl_s`` later; the last good value is served meanwhile.
    """

    def __init__(self, store: Store | None, ttl_s: float,
                 first_wait_s: float = FIRST_READ_WAIT_S) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.first_wait_s = first_wait_s
        self._cache: dict[str, tuple[float, Popularity]] = {}  # -> (last refresh's end, value)
        self._refreshing: dict[str, asyncio.Task[None]] = {}  # also keeps the tasks alive

    async def of(self, program_id: str) -> Popularity:
        if self.store is None:
            return Popularity()
        cached = self._cache.get(program_id)
        if cached is not None and time.monotonic() - cached[0] < self.ttl_s:
            return cached[1]
        refresh = self._refreshing.get(program_id)
        if refresh is None:
            refresh = self._refreshing[program_id] = asyncio.create_task(
                self._refresh(program_id), name=f"popularity {program_id}")
        if cached is not None:
            return cached[1]
        # asyncio.wait: a reader that stops waiting (or is cancelled) leaves the refresh be
        await asyncio.wait([refresh], timeout=self.first_wait_s)
        cached = self._cache.get(program_id)
        return cached[1] if cached is not None else Popularity()

    async def _refresh(self, program_id: str) -> None:
        assert self.store is not None
        try:
            popularity = await asyncio.to_thread(self._fetch, self.store, program_id)
        except Exception:
            log.warning("popularity of program %r not refreshed; serving the last one",
                        program_id, exc_info=True)
            last = self._cache.get(program_id)
            popularity = last[1] if last is not None else Popularity()
        finally:
            del self._refreshing[program_id]
        self._cache[program_id] = (time.monotonic(), popularity)  # a failure: retry after ttl_s

    @staticmethod
    def _fetch(store: Store, program_id: str) -> Popularity:
        """In a worker thread: the query, and the 10,000 counts turned into a Popularity
        (milliseconds of Python that would otherwise stall the event loop)."""
        rows = store.query(QUERY, {"p": program_id})
        return Popularity({r["asset_id"]: int(r["n"]) for r in rows})
