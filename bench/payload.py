"""Bench payloads: a 1000-event API body, and the Kafka messages the gateway makes of it.

The messages come from the gateway's own code path (``parse_event_list`` then
``ingest``), with its publisher and views replaced by a recorder, so the producer
ceiling and the sink see byte for byte what the gateway publishes (one message per
partition per request, its events as newline-separated JSON lines), whatever that shape becomes.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator, Sequence
from types import SimpleNamespace
from typing import Any

import orjson

from services.gateway.ingest import ingest
from services.gateway.validate import parse_event_list
from services.shared.events import WIRE_HEADER
from services.shared.ranking import Catalog
from services.shared.settings import Settings

BATCH = 1000
PROGRAM = "bench"
TYPES = ("view", "click", "add_to_cart", "purchase", "like")
LABELS = ("red", "blue", "shoes", "sale", "new", "summer", "kids", "premium")
Messages = list[tuple[bytes | None, bytes, int]]  # (key, value, partition)
Headers = list[tuple[str, bytes]] | None


def api_body(seed: int = 0, users: int = 10_000, n: int = BATCH) -> bytes:
    """One valid ``POST /events`` body of ``n`` events from varied users."""
    rnd = random.Random(seed)
    events = [
        {
            "user_id": f"user-{rnd.randrange(users)}",
            "event_timestamp": f"2026-11-{rnd.randint(1, 28):02d}T{rnd.randint(0, 23):02d}:"
            f"{rnd.randint(0, 59):02d}:{rnd.randint(0, 59):02d}.{rnd.randrange(10**6):06d}Z",
            "event_type": rnd.choice(TYPES),
            "asset_id": f"sku-{rnd.randrange(50_000)}",
            "labels": rnd.sample(LABELS, rnd.randint(1, 3)),
        }
        for _ in range(n)
    ]
    return orjson.dumps({"events": events})


def users_body(seed: int, users_per_request: int, pool: int = 10_000, n: int = BATCH) -> bytes:
    """A ``POST /events`` body of ``n`` events from exactly ``users_per_request`` distinct
    users of a ``pool`` (each with ``n // users_per_request`` events, interleaved), so the
    gateway makes exactly that many messages of that many events each."""
    rnd = random.Random(seed)
    if n % users_per_request:
        raise ValueError(f"{n} events do not split evenly over {users_per_request} users")
    users = rnd.sample(range(pool), users_per_request) * (n // users_per_request)
    rnd.shuffle(users)
    events = [
        {
            "user_id": f"user-{user}",
            "event_timestamp": f"2026-11-{rnd.randint(1, 28):02d}T{rnd.randint(0, 23):02d}:"
            f"{rnd.randint(0, 59):02d}:{rnd.randint(0, 59):02d}.{rnd.randrange(10**6):06d}Z",
            "event_type": rnd.choice(TYPES),
            "asset_id": f"sku-{rnd.randrange(50_000)}",
            "labels": rnd.sample(LABELS, rnd.randint(1, 3)),
        }
        for user in users
    ]
    return orjson.dumps({"events": events})


class _Recorder:
    """Stands in for the gateway's publisher, group commit and views: keeps what would be
    published."""

    def __init__(self) -> None:
        self.messages: Messages = []
        self.headers: Headers = None

    async def publish(self, messages: Sequence[tuple[bytes | None, bytes]], topic: str | None = None,
                      headers: Headers = None,
                      partitions: Sequence[int] | None = None) -> list[tuple[int, int]]:
        where = partitions or [-1] * len(messages)
        self.messages = [(key, value, p) for (key, value), p in zip(messages, where, strict=True)]
        self.headers = headers
        return [(p, 0) for p in where]

    async def commit(self, chunks: Sequence[tuple[int, list[bytes], int]]) -> list[tuple[int, int]]:
        """The group commit's part: one request alone in its window, one message a chunk."""
        self.messages = [(None, b"\n".join(lines), p) for p, lines, _ in chunks]
        self.headers = [WIRE_HEADER]
        return [(p, 0) for p, _, _ in chunks]

    def partition_count(self) -> int:
        return int(_GATEWAY.settings.events_partitions)

    def add(self, *_: object) -> None:
        """The gateway's tallies for `sluice verify`: nothing to count here."""

    def catalog(self, _program_id: str) -> Catalog:
        return Catalog()  # no asset catalog in the bench: asset_labels stay empty


_RECORDER = _Recorder()
_GATEWAY: Any = SimpleNamespace(settings=Settings(), publisher=_RECORDER, views=_RECORDER,
                                group_commit=_RECORDER, tallies=_RECORDER)


def wire_batch(body: bytes, program_id: str = PROGRAM,
               runner: asyncio.Runner | None = None) -> Messages:
    """The (key, value, partition) messages the gateway's POST /events?queue_updates=true publishes."""
    events = parse_event_list(body)
    call = ingest(_GATEWAY, program_id, events, queue_updates=True, process_user_actions=True,
                  source="actionhub")
    if runner is None:
        asyncio.run(call)
    else:
        runner.run(call)
    return _RECORDER.messages


def wire_headers() -> Headers:
    """The Kafka headers the gateway sets on its messages (as of the last ``wire_batch``)."""
    if not _RECORDER.messages:
        wire_batch(api_body(0, n=1))
    return _RECORDER.headers


def event_count(messages: Messages) -> int:
    return sum(value.count(b"\n") + 1 for _, value, _ in messages)


def wire_batches(n_events: int, distinct_bodies: int = 20) -> Iterator[Messages]:
    """Messages holding exactly ``n_events`` events, 1000 per request, each batch with
    fresh event ids (the ReplacingMergeTree would collapse repeats: the count never N)."""
    bodies = [api_body(seed) for seed in range(distinct_bodies)]
    with asyncio.Runner() as runner:
        for i in range(0, n_events, BATCH):
            left = n_events - i
            body = bodies[(i // BATCH) % distinct_bodies] if left >= BATCH else api_body(0, n=left)
            yield wire_batch(body, runner=runner)
