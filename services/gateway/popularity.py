"""Program-wide popularity (events per asset): an aggregate ClickHouse is made for.

Used to break ranking ties and for cold-start recommendations; cached per program for
``popularity_ttl_s``. Without ClickHouse in this process, popularity is empty.
"""

from __future__ import annotations

import asyncio
import time

from services.shared.clickhouse import Store
from services.shared.ranking import Popularity


class Popularities:
    def __init__(self, store: Store | None, ttl_s: float) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[float, Popularity]] = {}

    async def of(self, program_id: str) -> Popularity:
        if self.store is None:
            return Popularity()
        cached = self._cache.get(program_id)
        if cached and time.monotonic() - cached[0] < self.ttl_s:
            return cached[1]
        rows = await asyncio.to_thread(
            self.store.query,
            "SELECT asset_id, count() AS n FROM events WHERE program_id = {p:String} "
            "GROUP BY asset_id ORDER BY n DESC LIMIT 10000",
            {"p": program_id},
        )
        popularity = Popularity({r["asset_id"]: int(r["n"]) for r in rows})
        self._cache[program_id] = (time.monotonic(), popularity)
        return popularity
