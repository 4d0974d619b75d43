"""The SDK dialects' shared helpers: bounded gunzip, key -> program, ids, asset and labels."""

from __future__ import annotations

import gzip
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from services.gateway.auth import AuthError
from services.gateway.dialects.common import asset_of, gunzip, key_program, labels_of
from services.gateway.errors import PayloadTooLarge
from services.gateway.keys import KeyRing
from services.gateway.validate import made_up_ids


def test_gunzip_inflates_within_the_limit_and_refuses_a_bomb() -> None:
    body = b'{"a": 1}' * 100
    assert gunzip(gzip.compress(body), len(body)) == body
    bomb = gzip.compress(b"\0" * 50_000_000)  # ~50 KB that inflate to 50 MB
    assert len(bomb) < 100_000
    with pytest.raises(PayloadTooLarge):
        gunzip(bomb, 1_000_000)
    with pytest.raises(PayloadTooLarge):
        gunzip(gzip.compress(body), len(body) - 1)


@pytest.mark.parametrize("bad", [b"\x1f\x8bnot gzip at all", gzip.compress(b"x" * 1000)[:-30]])
def test_gunzip_refuses_what_is_not_whole_gzip(bad: bytes) -> None:
    with pytest.raises(ValueError):
        gunzip(bad, 10_000)


def test_the_key_names_the_program(tmp_path: Path) -> None:
    open_gateway = SimpleNamespace(keys=None)
    assert key_program(open_gateway, "shop") == "shop"  # type: ignore[arg-type]
    for bad in (None, "", "p" * 513):
        with pytest.raises(AuthError) as refused:
            key_program(open_gateway, bad)  # type: ignore[arg-type]
        assert refused.value.status == 401
    ring = KeyRing(tmp_path / "keys.json")
    write, read = ring.create("shop", "write")[1], ring.create("shop", "read")[1]
    keyed = SimpleNamespace(keys=ring)
    assert key_program(keyed, write) == "shop"  # type: ignore[arg-type]
    for key, status in (("shop", 401), (None, 401), (write[:-2] + "xx", 401), (read, 403)):
        with pytest.raises(AuthError) as refused:
            key_program(keyed, key)  # type: ignore[arg-type]
        assert refused.value.status == status


def test_made_up_ids_are_a_time_ordered_client_id_and_a_random_event_id() -> None:
    """The client id is ordered by its milliseconds (RFC 9562; within one millisecond the
    rest is random, which the RFC allows: nothing in Sluice orders by it), on the clock; the
    event_id beside it is a random version 4, unlike it, and no two pairs share either."""
    import time

    first, first_event = map(uuid.UUID, made_up_ids())
    time.sleep(0.002)
    second, second_event = map(uuid.UUID, made_up_ids())
    assert first.version == second.version == 7 and first.variant == uuid.RFC_4122
    assert first_event.version == second_event.version == 4
    assert first_event.variant == second_event.variant == uuid.RFC_4122
    assert first < second
    assert abs((second.int >> 80) / 1000 - time.time()) < 1  # milliseconds of now
    pairs = [made_up_ids() for _ in range(10_000)]
    assert len({i for pair in pairs for i in pair}) == 20_000


def test_asset_and_labels_are_taken_only_when_well_formed() -> None:
    assert asset_of({"asset_id": "sku-1"}) == "sku-1"
    assert asset_of({"asset_id": 42}) == "42"
    assert asset_of({"product_id": "p"}, "product_id") == "p"
    for bad in ({}, {"asset_id": ""}, {"asset_id": True}, {"asset_id": {"x": 1}},
                {"asset_id": "a" * 513}):
        assert asset_of(bad) == ""
    assert labels_of("Games", ["red", "Games", "", 3, "x" * 257, "shoe"], None) == [
        "Games", "red", "shoe"]
    assert len(labels_of([f"l{i}" for i in range(500)])) == 100


def test_skew_correction_follows_the_clients_send_time() -> None:
    from datetime import UTC, datetime, timedelta

    from services.gateway.dialects.common import skew_corrected

    received = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    hour = timedelta(hours=1)
    # an hour fast: the event 30 s before sending lands 30 s before receipt
    assert skew_corrected(received + hour - timedelta(seconds=30), received + hour, received) == (
        received - timedelta(seconds=30))
    # a day slow, an event queued offline for 5 minutes
    day = timedelta(days=1)
    assert skew_corrected(received - day - timedelta(minutes=5), received - day, received) == (
        received - timedelta(minutes=5))
    # within the tolerance (network delay): the client's time as sent
    t = received - timedelta(minutes=1)
    assert skew_corrected(t, received - timedelta(seconds=1), received) == t
    assert skew_corrected(t, None, received) == t  # no send time: nothing to correct by
    # more than 23 h into the future: receipt
    assert skew_corrected(received + 2 * day, None, received) == received
    assert skew_corrected(received + 2 * day, received + 2 * day + hour, received) == received - hour
