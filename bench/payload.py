"""Bench payloads: a 1000-event API body, and the canonical wire events the gateway makes.

The wire events go through the gateway's own validator and the same enrichment as its
POST handler, so the producer ceiling and the sink see byte-for-byte what the gateway
would publish, not a hand-made approximation.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime

import orjson

from services.gateway.validate import new_event_ids, parse_event_list
from services.shared.events import encode, message_key

BATCH = 1000
PROGRAM = "bench"
TYPES = ("view", "click", "add_to_cart", "purchase", "like")
LABELS = ("red", "blue", "shoes", "sale", "new", "summer", "kids", "premium")


def api_body(seed: int = 0, users: int = 10_000) -> bytes:
    """One valid ``POST /events`` body of 1000 events from varied users."""
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
        for _ in range(BATCH)
    ]
    return orjson.dumps({"events": events})


def wire_batch(body: bytes, program_id: str = PROGRAM) -> list[tuple[bytes, bytes]]:
    """(key, value) pairs exactly as the gateway's POST handler builds them from ``body``."""
    events = parse_event_list(body)
    received_at = datetime.now(UTC)
    out = []
    for event, event_id in zip(events, new_event_ids(len(events))):
        event["program_id"] = program_id
        event["event_id"] = event_id
        event["received_at"] = received_at
        event["queue_updates"] = True
        event["process_user_actions"] = True
        out.append((message_key(program_id, event["user_id"]), encode(event)))
    return out


def wire_batches(n_events: int, distinct_bodies: int = 20) -> Iterator[list[tuple[bytes, bytes]]]:
    """``n_events`` canonical events in batches of 1000, each with fresh event ids (unique
    ids matter: the ReplacingMergeTree would collapse repeats and the count never reach N)."""
    bodies = [api_body(seed) for seed in range(distinct_bodies)]
    for i in range(0, n_events, BATCH):
        yield wire_batch(bodies[(i // BATCH) % distinct_bodies])[: n_events - i]
