"""make bench pre-fills topics with the gateway's own messages, made by calling its ingest
with stand-ins: a change to what ingest needs must not break every bench section."""

from __future__ import annotations

from bench.payload import api_body, event_count, wire_batch


def test_wire_batch_gives_the_gateways_messages_with_every_event() -> None:
    messages = wire_batch(api_body(seed=3, n=50))
    assert event_count(messages) == 50
    assert all(value.count(b'"event_id"') == value.count(b"\n") + 1 for _, value, _ in messages)
