"""User state, read from the agents worker that owns each user: the gateway keeps none.

A user's record lives in the store of the worker that owns its source partition (the
murmur2 partition of its key, which the gateway computes anyway to publish). The gateway
keeps only the owner map, partition -> worker URL, asked of any worker it knows
(``SLUICE_AGENTS_URLS``, and every worker a map named) and asked again when an owner is
unreachable or answers that the partition moved (a rebalance). See streams/reads.py for
the worker's side.

Ranking stays here: a recommendation needs the user's weights (one record from the
owner) and the program's catalog and popularity, which every gateway already holds; the
workers only look up records, and ranking's CPU scales with gateway replicas.

While the owner cannot answer (the partition moves, or its worker died and the group has
not noticed yet), any worker whose copy of the partition is as complete as the changelog
answers instead: the old owner, a standby (streams/reads.py). A read that neither can
answer in ``SLUICE_AGENTS_READ_TIMEOUT_S`` (no copy complete: a standby-less partition
whose owner died, or a new owner recovering a changelog written since) raises
:class:`StateUnavailable` (503 with Retry-After): never an empty state passed off as real.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson

from services.gateway.errors import StateUnavailable
from services.shared.events import partition_for
from services.shared.publish import BrokerUnavailable
from services.shared.settings import Settings
from services.shared.users import UserRecord

log = logging.getLogger(__name__)

RETRY_PAUSE_S = 0.1  # between asks of a moved partition's owner
COPY_TIMEOUT_S = 0.5  # the most a read waits for the workers' copies, each time it asks
DEPARTED_S = 60.0  # how long a worker the owner map no longer names is still asked for copies
HOLD_POLL_S = 0.02  # how often a held read looks whether it was released


class Moved(Exception):
    """The asked worker does not serve the partition (now), or cannot be reached."""


class UserStates:
    def __init__(self, settings: Settings, partition_count: Callable[[], int]) -> None:
        self.settings = settings
        self._partition_count = partition_count
        self._owners: dict[int, str] = {}
        self._known: list[str] = list(settings.agents_seed_urls)
        # workers the owner map stopped naming -> until when (loop time) a copy read still
        # asks them: one that was told to stop answers for what it served (streams.handover)
        self._departed: dict[str, float] = {}
        self._session: aiohttp.ClientSession | None = None
        self._refresh: asyncio.Task[None] | None = None
        self.abandoned: str | None = None
        self._held_until: float | None = None  # time.monotonic(); None: not held
        self._reads_held = False  # while held: reads wait too, not only waits
        # while set: reads are answered from it (key -> (partition, record))
        self._snapshot: dict[bytes, tuple[int, bytes]] | None = None

    # -- held while the next agents worker joins (set from the supervisor's thread) ---------
    def hold(self, most_s: float, reads: bool = True) -> None:
        """Waits for applied events, and reads too unless ``reads`` is False, wait (at most
        ``most_s`` from now) until :meth:`release`. Reads need no hold while the previous
        broker's agents still answer; waits do: those agents' positions are another
        broker's offsets."""
        self._reads_held = reads
        self._held_until = time.monotonic() + most_s

    def answer_from(self, snapshot: dict[bytes, tuple[int, bytes]]) -> None:
        """Reads are answered from ``snapshot`` until :meth:`release`: every user's record
        as a roll carries it, while no agents worker answers (the old ones stopped, the
        next ones join). What the old workers would have answered: neither has applied
        anything taken by the next broker yet."""
        self._snapshot = snapshot

    def release(self) -> None:
        self._held_until = None
        self._snapshot = None

    async def _unheld(self, deadline: float | None = None) -> None:
        """Once not held (released, or held too long), or at ``deadline`` (loop time)."""
        loop = asyncio.get_running_loop()
        while (until := self._held_until) is not None and time.monotonic() < until:
            if deadline is not None and loop.time() >= deadline:
                return
            await asyncio.sleep(HOLD_POLL_S)

    # -- reads ----------------------------------------------------------------------------
    async def get(self, key: bytes) -> UserRecord | None:
        """The user's record, from its owner; None for a user with no state yet."""
        if (snapshot := self._snapshot) is not None:
            found = snapshot.get(key)
            return UserRecord.decode(found[1]) if found is not None else None
        if self._held_until is not None and self._reads_held:
            await self._unheld()
        partition = partition_for(key, self._partition_count())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.agents_read_timeout_s
        while True:
            try:
                status, body = await self._ask(
                    partition, "GET", "/internal/users", deadline,
                    params={"partition": str(partition), "key": key.decode()})
            except Moved as exc:
                copy = await self._from_copy(partition, key, deadline)
                if copy is not None:
                    status, body = copy
                    break
                if loop.time() + RETRY_PAUSE_S >= deadline:
                    raise StateUnavailable(
                        f"user state of partition {partition} is moving between agents "
                        f"workers or its worker is down ({exc}); retry shortly") from None
                await asyncio.sleep(RETRY_PAUSE_S)
                continue
            break
        if status == 404:
            return None
        return UserRecord.decode(body)

    async def _from_copy(self, partition: int, key: bytes, deadline: float,
                         ) -> tuple[int, bytes] | None:
        """While the partition's owner cannot answer (it moves, or died and the group has
        not noticed yet): the first worker whose copy of the partition holds every record of
        its changelog answers (streams/reads.py); None when none does."""
        now = asyncio.get_running_loop().time()
        self._departed = {url: until for url, until in self._departed.items() if until > now}
        urls = list(dict.fromkeys(self._known + list(self._owners.values())
                                  + list(self._departed)))
        left = min(deadline - now, COPY_TIMEOUT_S)
        if not urls or left <= 0:
            return None
        params = {"partition": str(partition), "key": key.decode(), "copy": "1"}
        asks = [asyncio.ensure_future(self._copy_at(url, params, left)) for url in urls]
        try:
            for done in asyncio.as_completed(asks):
                if (answer := await done) is not None:
                    return answer
        finally:
            for ask in asks:
                ask.cancel()
        return None

    async def _copy_at(self, url: str, params: dict[str, str], left: float,
                       ) -> tuple[int, bytes] | None:
        try:
            async with self._client().get(url + "/internal/users", params=params,
                                          timeout=aiohttp.ClientTimeout(total=left),
                                          ) as response:
                body = await response.read()
                return (response.status, body) if response.status in (200, 404) else None
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def wait_applied(self, targets: dict[bytes, tuple[int, int]], timeout_s: float) -> bool:
        """Wait until each user key's state includes its source message (partition, offset),
        as the owners answer; False on timeout. Raises BrokerUnavailable when the broker
        died with what it held (the embedded one): the messages may never be applied."""
        if self.abandoned is not None:
            raise BrokerUnavailable(self.abandoned)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        if self._held_until is not None:
            await self._unheld(deadline)
        by_partition: dict[int, list[list[Any]]] = defaultdict(list)
        for key, (partition, offset) in targets.items():
            by_partition[partition].append([partition, offset, key.decode()])
        while by_partition:
            if self.abandoned is not None:
                raise BrokerUnavailable(self.abandoned)
            left = deadline - loop.time()
            if left <= 0:
                return False
            by_owner: dict[str, list[int]] = defaultdict(list)
            for partition in by_partition:
                owner = self._owners.get(partition)
                if owner is None:
                    await self._refreshed()
                    owner = self._owners.get(partition)
                if owner is not None:
                    by_owner[owner].append(partition)
            answers = await asyncio.gather(*(
                self._wait_at(owner, [t for p in partitions for t in by_partition[p]], left)
                for owner, partitions in by_owner.items()))
            for (owner, partitions), answer in zip(by_owner.items(), answers, strict=True):
                if answer is True:
                    for partition in partitions:
                        del by_partition[partition]
                elif answer is False:
                    return False  # the owner waited until the deadline
                else:
                    self._forget(owner)
            if by_partition:
                await asyncio.sleep(RETRY_PAUSE_S)
        return True

    def abandon(self, reason: str) -> None:
        """The broker died with what it held: every wait answers 503 from now on."""
        self.abandoned = reason

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- talking to the workers -------------------------------------------------------------
    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
                json_serialize=lambda value: orjson.dumps(value).decode(),
            )
        return self._session

    async def _ask(self, partition: int, method: str, path: str, deadline: float,
                   **kwargs: Any) -> tuple[int, bytes]:
        owner = self._owners.get(partition)
        if owner is None:
            await self._refreshed()
            owner = self._owners.get(partition)
            if owner is None:
                raise Moved("no worker owns it now")
        left = deadline - asyncio.get_running_loop().time()
        try:
            async with self._client().request(
                method, owner + path, timeout=aiohttp.ClientTimeout(total=max(left, 0.01)),
                **kwargs,
            ) as response:
                body = await response.read()
                if response.status in (200, 404):
                    return response.status, body
                reason = f"{owner} answered {response.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = f"{owner}: {exc!r}"
        self._forget(owner)
        raise Moved(reason)

    async def _wait_at(self, owner: str, targets: list[list[Any]], left: float) -> bool | None:
        """True/False: the owner's answer; None: it did not answer for these partitions."""
        try:
            async with self._client().post(
                owner + "/internal/applied",
                data=orjson.dumps({"timeout_s": left, "targets": targets}),
                headers={"content-type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=left + 2.0),
            ) as response:
                if response.status == 200:
                    return bool(orjson.loads(await response.read())["applied"])
        except (aiohttp.ClientError, TimeoutError, KeyError, ValueError):
            pass
        return None

    def _forget(self, owner: str) -> None:
        """An owner that did not answer: its partitions are looked up again."""
        for partition in [p for p, url in self._owners.items() if url == owner]:
            del self._owners[partition]

    async def _refreshed(self) -> None:
        """Ask the workers for the owner map (one ask at a time, shared by every caller)."""
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.create_task(self._ask_owners())
        await asyncio.shield(self._refresh)

    async def _ask_owners(self) -> None:
        urls = list(dict.fromkeys(self._known + list(self._owners.values())))
        answers = await asyncio.gather(*(self._owners_of(url) for url in urls))
        best = max((a for a in answers if a is not None), default=None,
                   key=lambda a: a["generation"])
        if best is None:
            return
        owners = {int(p): url.rstrip("/") for p, url in best["owners"].items()}
        self._owners = owners
        known = list(dict.fromkeys(self.settings.agents_seed_urls + list(owners.values())))
        until = asyncio.get_running_loop().time() + DEPARTED_S
        self._departed |= {url: until for url in self._known if url not in known}
        self._known = known

    async def _owners_of(self, url: str) -> dict[str, Any] | None:
        try:
            async with self._client().get(url + "/internal/owners",
                                          timeout=aiohttp.ClientTimeout(total=1.0)) as response:
                if response.status == 200:
                    answer: dict[str, Any] = orjson.loads(await response.read())
                    return answer
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.debug("agents worker %s did not give its owner map: %r", url, exc)
        return None
