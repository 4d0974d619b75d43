"""A worker told to stop (SIGTERM) hands its partitions' reads over instead of dropping them.

Faust stops the consumer (the worker leaves the group, which rebalances at once) and then
the web server. Until a partition's new owner has recovered it, nobody applies its events,
and the leaving worker's store holds exactly what the changelog holds: so between the two
the worker keeps answering reads of what it served, as copies (streams/reads.py: each read
checks the changelog's end offset, so a copy the new owner wrote past is never answered),
until every such partition's new owner serves it or SLUICE_AGENTS_HANDOVER_S passed. Without
it, a leaving worker's users were unreadable for the whole takeover (11 s in bench section 11
on 2 cores). A worker alone in its group has no one to hand over to and stops at once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import faust
import orjson

from streams.reads import OwnedReads

log = logging.getLogger(__name__)

POLL_S = 0.2
PROBE_KEY = "\x00sluice-handover-probe"  # no user's key: a 404 from an owner that serves


async def hand_over(reads: OwnedReads, own_url: str, timeout_s: float) -> None:
    """Keep answering copy reads of the partitions this worker served until their new owners
    serve them (asked of the other workers the last owner map named), at most ``timeout_s``."""
    partitions = reads.stop_serving()
    peers = sorted({url.rstrip("/") for url in reads.owners()["owners"].values()}
                   - {own_url.rstrip("/")})
    if not partitions or not peers or timeout_s <= 0:
        return
    loop = asyncio.get_running_loop()
    began, answered = loop.time(), reads.copy_reads
    deadline = began + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0)) as session:
        while loop.time() < deadline:
            owners = await _owners(session, peers)
            if owners is None:  # no other worker answers: nobody to hand over to
                log.info("agents: no other worker answers; stopping")
                return
            pending = await _not_served(session, owners, partitions, own_url.rstrip("/"))
            if not pending:
                log.info("agents: partitions %s handed over after %.1f s; %d reads answered "
                         "meanwhile", sorted(partitions), loop.time() - began,
                         reads.copy_reads - answered)
                return
            await asyncio.sleep(POLL_S)
    log.warning("agents: stopped before partitions %s were served elsewhere (%.0f s)",
                sorted(pending), timeout_s)


async def _not_served(session: aiohttp.ClientSession, owners: dict[str, str],
                      partitions: frozenset[int], own_url: str) -> set[int]:
    pending = set()
    for partition in partitions:
        owner = owners.get(str(partition), "").rstrip("/")
        if not owner or owner == own_url or not await _serves(session, owner, partition):
            pending.add(partition)
    return pending


async def _owners(session: aiohttp.ClientSession, peers: list[str]) -> dict[str, str] | None:
    """partition -> owner URL, the newest map a peer gives that is not mid-rebalance (empty
    while they all rebalance); None when no peer answers at all."""
    best: dict[str, Any] | None = None
    for url in peers:
        try:
            async with session.get(url + "/internal/owners") as response:
                answer = orjson.loads(await response.read())
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError):
            continue
        best = best or {}
        if not answer.get("rebalancing") and answer.get("generation", -1) >= best.get(
                "generation", -1):
            best = answer
    return None if best is None else best.get("owners", {})


async def _serves(session: aiohttp.ClientSession, url: str, partition: int) -> bool:
    try:
        async with session.get(url + "/internal/users",
                               params={"partition": str(partition), "key": PROBE_KEY}) as response:
            return response.status in (200, 404)
    except (aiohttp.ClientError, TimeoutError):
        return False


def install(app: faust.App, reads: OwnedReads, own_url: str, timeout_s: float) -> None:
    """Run the hand-over when the web server is told to stop: Faust stops it after the
    consumer (so the group has already rebalanced without this worker), and it still serves
    until its own ``on_stop`` returns."""
    web = app.web
    stop_web = web.on_stop

    async def on_stop() -> None:
        try:
            await hand_over(reads, own_url, timeout_s)
        finally:
            await stop_web()

    web.on_stop = on_stop  # type: ignore[method-assign]
