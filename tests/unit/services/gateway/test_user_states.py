"""The gateway's side of user reads: finding each partition's owner, following it when it
moves, and a 503 (never an empty state) when no worker answers for it. Two small aiohttp
servers play the agents workers' internal pages (streams/reads.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from services.gateway.errors import StateUnavailable
from services.gateway.user_states import UserStates
from services.shared.events import message_key, partition_for
from services.shared.settings import Settings
from services.shared.users import UserRecord

PARTITIONS = 4
KEY = message_key("shop", "u1")
PARTITION = partition_for(KEY, PARTITIONS)


class FakeWorker:
    """Serves the users of the partitions it is told it owns, and with ``copy=1`` those of
    the partitions it is told it holds a complete copy of; the owner map it gives is
    whatever the test sets (as Faust's assignor tells every member)."""

    def __init__(self) -> None:
        self.serving: set[int] = set()
        self.copies: set[int] = set()
        self.owners: dict[int, str] = {}
        self.generation = 1
        self.records: dict[bytes, bytes] = {}
        self.asked: list[str] = []
        app = web.Application()
        app.router.add_get("/internal/owners", self._owners)
        app.router.add_get("/internal/users", self._user)
        app.router.add_post("/internal/applied", self._applied)
        self.server = TestServer(app)

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    async def _owners(self, _: web.Request) -> web.Response:
        return web.json_response({"generation": self.generation, "rebalancing": False,
                                  "owners": {str(p): u for p, u in self.owners.items()}})

    async def _user(self, request: web.Request) -> web.Response:
        copy = request.query.get("copy") == "1"
        self.asked.append("copy" if copy else "user")
        if int(request.query["partition"]) not in (self.serving | self.copies if copy
                                                   else self.serving):
            return web.json_response({"detail": "moved"}, status=503)
        raw = self.records.get(request.query["key"].encode())
        if raw is None:
            return web.json_response({"detail": "no such user"}, status=404)
        return web.Response(body=raw, content_type="application/json")

    async def _applied(self, request: web.Request) -> web.Response:
        self.asked.append("applied")
        body: dict[str, Any] = await request.json()
        if any(p not in self.serving for p, _, _ in body["targets"]):
            return web.json_response({"detail": "moved"}, status=503)
        return web.json_response({"applied": True})


def record(events: int) -> bytes:
    user = UserRecord("shop", "u1", partition=PARTITION, offset=events - 1, events=events)
    return user.encode()


def states(*seeds: str, timeout_s: float = 1.0) -> UserStates:
    settings = Settings(agents_urls=",".join(seeds), agents_read_timeout_s=timeout_s)
    return UserStates(settings, lambda: PARTITIONS)


def run(test: Any) -> None:
    async def main() -> None:
        a, b = FakeWorker(), FakeWorker()
        await a.server.start_server()
        await b.server.start_server()
        try:
            await test(a, b)
        finally:
            await a.server.close()
            await b.server.close()

    asyncio.run(main())


def test_a_read_goes_to_the_owner_the_map_names_even_when_asked_elsewhere() -> None:
    async def test(a: FakeWorker, b: FakeWorker) -> None:
        for worker in (a, b):
            worker.owners = {p: b.url for p in range(PARTITIONS)}
        b.serving, b.records = set(range(PARTITIONS)), {KEY: record(3)}
        users = states(a.url)  # only a is known at first
        got = await users.get(KEY)
        assert got is not None and got.events == 3
        assert a.asked == [] and b.asked == ["user"]
        assert await users.get(message_key("shop", "nobody")) is None  # the owner: no state
        await users.close()

    run(test)


def test_a_partition_that_moved_is_followed_to_its_new_owner() -> None:
    async def test(a: FakeWorker, b: FakeWorker) -> None:
        a.owners = b.owners = {p: a.url for p in range(PARTITIONS)}
        a.serving, a.records = set(range(PARTITIONS)), {KEY: record(1)}
        users = states(a.url, b.url)
        assert (await users.get(KEY)).events == 1  # type: ignore[union-attr]
        # a rebalance: b owns everything now, and has the newer state
        a.serving = set()
        b.serving, b.records = set(range(PARTITIONS)), {KEY: record(2)}
        a.owners = b.owners = {p: b.url for p in range(PARTITIONS)}
        a.generation = b.generation = 2
        assert (await users.get(KEY)).events == 2  # type: ignore[union-attr]
        assert await users.wait_applied({KEY: (PARTITION, 1)}, 1.0) is True
        # a said "moved"; b answered (as a copy, its own serving store) and then waited
        assert b.asked == ["copy", "applied"]
        await users.close()

    run(test)


def test_while_the_owner_cannot_answer_a_complete_copy_does() -> None:
    async def test(a: FakeWorker, b: FakeWorker) -> None:
        # b owns the partition and is recovering it; a lost it to b and still holds it
        a.owners = b.owners = {p: b.url for p in range(PARTITIONS)}
        a.copies, a.records = set(range(PARTITIONS)), {KEY: record(4)}
        users = states(a.url, b.url)
        assert (await users.get(KEY)).events == 4  # type: ignore[union-attr]
        assert b.asked == ["user", "copy"] and a.asked == ["copy"]
        assert await users.get(message_key("shop", "nobody")) is None  # the copy: no state
        # once b serves it, b answers: the copy is not asked again
        b.serving, b.records = {PARTITION}, {KEY: record(5)}
        a.asked.clear()
        assert (await users.get(KEY)).events == 5  # type: ignore[union-attr]
        assert a.asked == []
        # a copy is never a wait's answer: waits need the owner
        b.serving = set()
        assert await users.wait_applied({KEY: (PARTITION, 0)}, 0.3) is False
        await users.close()

    run(test)


def test_no_owner_in_time_is_state_unavailable_never_an_empty_state() -> None:
    async def test(a: FakeWorker, b: FakeWorker) -> None:
        # the map still names a worker that died (b's server answers nothing it owns), and
        # a has no complete copy of the partition (its own is behind the changelog)
        a.owners = {p: b.url for p in range(PARTITIONS)}
        a.records = {KEY: record(1)}
        users = states(a.url, timeout_s=0.5)
        with pytest.raises(StateUnavailable):
            await users.get(KEY)
        # a wait with no owner times out: False (the POST answers 504 or a receipt)
        assert await users.wait_applied({KEY: (PARTITION, 0)}, 0.5) is False
        # the takeover lands: the next read is right
        a.owners, a.serving = {p: a.url for p in range(PARTITIONS)}, set(range(PARTITIONS))
        a.generation = 2
        assert (await users.get(KEY)).events == 1  # type: ignore[union-attr]
        await users.close()

    run(test)


def test_a_worker_the_map_stopped_naming_is_still_asked_for_its_copy() -> None:
    """A worker told to stop leaves the owner map at once but answers for what it served
    until the new owner serves it (streams/handover.py): the gateway keeps asking it."""
    async def test(a: FakeWorker, b: FakeWorker) -> None:
        a.owners = b.owners = {p: a.url for p in range(PARTITIONS)}
        a.serving, a.records = set(range(PARTITIONS)), {KEY: record(3)}
        users = states(b.url)  # a is known only from the map
        assert (await users.get(KEY)).events == 3  # type: ignore[union-attr]
        # a stops: the map names b, still recovering; a answers as a copy
        a.serving, a.copies = set(), set(range(PARTITIONS))
        a.owners = b.owners = {p: b.url for p in range(PARTITIONS)}
        a.generation = b.generation = 2
        assert (await users.get(KEY)).events == 3  # type: ignore[union-attr]
        # the next read learns the new map first (which no longer names a): a still answers
        assert (await users.get(KEY)).events == 3  # type: ignore[union-attr]
        assert a.asked[-1] == "copy" and b.asked[-2:] == ["user", "copy"]
        await users.close()

    run(test)


def test_held_reads_and_waits_go_to_the_worker_once_released() -> None:
    """A roll of `sluice up`'s broker opens the next gateway before its agents have joined:
    its reads wait for the release instead of failing on a worker that is not there yet,
    and a wait for a batch keeps to its own deadline."""
    async def test(a: FakeWorker, _b: FakeWorker) -> None:
        a.owners = {p: a.url for p in range(PARTITIONS)}
        a.records = {KEY: record(4)}
        users = states(a.url, timeout_s=0.3)
        users.hold(30)
        read = asyncio.ensure_future(users.get(KEY))
        waited = asyncio.ensure_future(users.wait_applied({KEY: (PARTITION, 3)}, 0.5))
        await asyncio.sleep(0.6)  # past the read timeout: still held, not failed
        assert not read.done() and a.asked == []
        assert await waited is False, "the wait's own deadline holds"
        a.serving = set(range(PARTITIONS))  # the worker joined
        users.release()
        got = await asyncio.wait_for(read, 2)
        assert got is not None and got.events == 4 and a.asked == ["user"]
        users.hold(0.2)  # held too long (the worker never came): reads go ahead
        assert (await asyncio.wait_for(users.get(KEY), 2)).events == 4  # type: ignore[union-attr]
        await users.close()

    run(test)


def test_a_roll_holds_waits_while_reads_go_to_the_old_worker_then_to_the_carried_records() -> None:
    """A roll's next gateway takes requests while the old agents still run: its waits hold
    (the old worker's positions are another broker's offsets), its reads ask the old worker;
    once that one stops, reads are answered from the records the roll carries."""
    async def test(a: FakeWorker, _b: FakeWorker) -> None:
        a.owners = {p: a.url for p in range(PARTITIONS)}
        a.serving = set(range(PARTITIONS))
        a.records = {KEY: record(4)}
        users = states(a.url, timeout_s=0.3)
        users.hold(30, reads=False)
        waited = asyncio.ensure_future(users.wait_applied({KEY: (PARTITION, 3)}, 0.5))
        got = await asyncio.wait_for(users.get(KEY), 2)  # not held
        assert got is not None and got.events == 4 and a.asked == ["user"]
        assert await waited is False, "held: the old worker's offset 3 is not the next broker's"
        a.serving = set()  # the old worker stopped
        users.answer_from({KEY: (PARTITION, record(5))})
        got = await asyncio.wait_for(users.get(KEY), 2)
        assert got is not None and got.events == 5 and a.asked == ["user"]  # nobody asked
        assert await users.get(message_key("shop", "nobody")) is None
        users.release()  # the next worker joined
        a.serving = set(range(PARTITIONS))
        got = await asyncio.wait_for(users.get(KEY), 2)
        assert got is not None and got.events == 4 and a.asked == ["user", "user"]
        await users.close()

    run(test)
