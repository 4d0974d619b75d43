"""Canonical events of any dialect -> the events topic -> (optionally) user state.

Every dialect adapter turns its request into canonical event dicts (user_id,
event_timestamp, event_type, asset_id, labels, and any of the optional fields, but none
of the fields the server owns: program_id, event_id (unless the dialect made up the
client's id: validate.made_up_ids), received_at, the flags, source, asset_labels) and calls
:func:`ingest`; it fills in what the server owns, bundles the events per partition (see
:mod:`services.shared.events`), publishes with acks=all and, for ``queue_updates=false``, waits for the
agents, or for ``wait=stored``, for the sink's group to commit past the batch. Failures
are raised (BrokerUnavailable, UpdateTimeout, StillPending) for each dialect to answer in
its vendor's own shape. The messages are the group commit's
(:mod:`services.gateway.group_commit`): the lines of concurrent requests share them.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from time import perf_counter
from typing import Any

import msgspec
import orjson

from services.gateway.deps import Gateway
from services.gateway.errors import StillPending, UpdateTimeout
from services.gateway.receipts import Level, Receipt, highest_offsets
from services.gateway.validate import ApiEvent, new_event_id, new_event_ids, uuid_text
from services.shared.events import ENCODE_OPTIONS, message_key, partition_for
from services.shared.metrics import accepted

# event_id of an event with a client-side id: the same (program, source, client id) always
# gives the same event_id, so a retried request collapses in ClickHouse instead of doubling.
CLIENT_ID_NAMESPACE = uuid.UUID("6f1d8a52-3c0e-4f5b-9a37-5b0f3f2d8e11")
_NAMESPACE_BYTES = CLIENT_ID_NAMESPACE.bytes


def client_event_uuid(name: str) -> str:
    """``str(uuid.uuid5(CLIENT_ID_NAMESPACE, name))`` (the same text, tested), without the
    UUID object: a third of the time, and every event of the SDK dialects carries an id."""
    raw = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name.encode()).digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x50  # version 5
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    return uuid_text(raw)
_ENCODER = msgspec.json.Encoder()


async def ingest(
    gateway: Gateway,
    program_id: str,
    events: Sequence[dict[str, Any]] | Sequence[ApiEvent],
    *,
    queue_updates: bool,
    process_user_actions: bool,
    source: str,
    wait: Level | None = None,
) -> int:
    """Publish canonical events (dicts from the dialects, or ActionHub's checked
    :class:`ApiEvent`s); returns how many were accepted (all, or it raises).

    ``wait``: ``broker`` answers at the ack, ``user`` once every user's state includes the
    batch, ``stored`` once the sink's group committed past it (ClickHouse holds it); past
    SLUICE_WAIT_TIMEOUT_S it raises StillPending with a receipt. Without it,
    ``queue_updates`` decides as it always did (``false``: wait for user state, 504 past
    SLUICE_UPDATE_TIMEOUT_S).

    The per-event work is kept to a few C calls (this loop is the gateway's hot path):
    each event is encoded once with its event_id and asset_labels; the fields the server
    owns are the same for the whole request, encoded once and appended to each line; each
    user's partition is hashed once per request."""
    began = perf_counter()
    received_at = datetime.now(UTC)
    tail = b"," + orjson.dumps({
        "program_id": program_id,
        "received_at": received_at,
        "queue_updates": queue_updates,
        "process_user_actions": process_user_actions,
        "source": source,
    }, option=ENCODE_OPTIONS)[1:]
    asset_labels = gateway.views.catalog(program_id).labels_of
    if events and isinstance(events[0], ApiEvent):
        ids = new_event_ids(len(events))
        lines = _api_lines(events, ids, asset_labels, tail,  # type: ignore[arg-type]
                           f"{program_id}\x1f{source}\x1f")
    else:
        lines = _canonical_lines(events, asset_labels, tail,  # type: ignore[arg-type]
                                 f"{program_id}\x1f{source}\x1f")
    partitions = gateway.publisher.partition_count()
    partition_of: dict[str, int] = {}
    lines_of: dict[int, list[bytes]] = {}  # partition -> its lines, each user's in order
    for user, line in lines:
        partition = partition_of.get(user)
        if partition is None:
            partition = partition_of[user] = partition_for(message_key(program_id, user), partitions)
        if (same := lines_of.get(partition)) is None:
            lines_of[partition] = [line]
        else:
            same.append(line)
    bundles = Bundles(lines_of, gateway.settings.message_max_bytes)
    positions = await gateway.group_commit.commit(bundles.chunks)
    gateway.tallies.add(program_id, received_at, bundles.chunks, positions)  # `sluice verify`
    accepted(source, len(events), began)  # metrics: once per request
    level = wait or ("broker" if queue_updates else "user")
    if level == "user" and process_user_actions:
        targets = {
            message_key(program_id, user): positions[bundles.message_of(user, partition)]
            for user, partition in partition_of.items()
        }
        timeout_s = gateway.settings.wait_timeout_s if wait else gateway.settings.update_timeout_s
        if not await gateway.user_states.wait_applied(targets, timeout_s):
            if wait is None:
                raise UpdateTimeout(len(events), timeout_s)
            raise StillPending(Receipt(program_id, "user", highest_offsets(positions)).encode())
    elif level == "stored":
        highest = highest_offsets(positions)
        if not await gateway.progress.wait("stored", highest, gateway.settings.wait_timeout_s):
            raise StillPending(Receipt(program_id, "stored", highest).encode())
    return len(events)


def _api_lines(events: list[ApiEvent], ids: list[str], asset_labels: Callable[[str], list[str]],
               tail: bytes, client_id_prefix: str) -> list[tuple[str, bytes]]:
    """(user, wire line) of each ActionHub event: msgspec encodes the Struct's five fields,
    and the event_id, the asset's labels and the request's tail follow. An event with the
    client's own id carries it as client_event_id, and an event_id derived from it."""
    encode = _ENCODER.encode
    if all(event.event_id is None for event in events):  # the usual request: no client ids
        return [
            (event.user_id, b"".join((encode(event)[:-1], b',"event_id":"', event_id.encode(),
                                      b'","asset_labels":', encode(asset_labels(event.asset_id)),
                                      tail)))
            for event, event_id in zip(events, ids, strict=True)
        ]
    out = []
    for event, event_id in zip(events, ids, strict=True):
        client_id, extra = event.event_id, b""
        if client_id is not None:
            event.event_id = None  # not among the encoded fields
            event_id = client_event_uuid(f"{client_id_prefix}{client_id}")
            extra = b',"client_event_id":' + encode(client_id)
        out.append((event.user_id, b"".join((
            encode(event)[:-1], b',"event_id":"', event_id.encode(), b'"', extra,
            b',"asset_labels":', encode(asset_labels(event.asset_id)), tail))))
    return out


def _canonical_lines(events: list[dict[str, Any]], asset_labels: Callable[[str], list[str]],
                     tail: bytes, client_id_prefix: str) -> list[tuple[str, bytes]]:
    """(user, wire line) of each dialect's canonical event dict. A client's own event id
    gives a deterministic event_id (see CLIENT_ID_NAMESPACE); an event that comes with its
    event_id (one whose client id the dialect made up: validate.made_up_ids) keeps it; the
    others get fresh ones."""
    dumps, options = orjson.dumps, ENCODE_OPTIONS
    out = []
    for event in events:
        if event.get("event_id") is None:
            client_id = event.get("client_event_id")
            event["event_id"] = (client_event_uuid(f"{client_id_prefix}{client_id}")
                                 if client_id else new_event_id())
        event["asset_labels"] = asset_labels(event["asset_id"])
        out.append((event["user_id"], dumps(event, option=options)[:-1] + tail))
    return out


class Bundles:
    """A request's lines per partition -> its chunks, (partition, lines, bytes joined): one
    per partition, or (rarely, beyond ``max_bytes``) several, split between lines. The
    group commit puts each chunk in one message. ``message_of`` says which chunk holds a
    user's last line: the message a ``queue_updates=false`` POST waits for."""

    def __init__(self, lines_of: dict[int, list[bytes]], max_bytes: int) -> None:
        self.chunks: list[tuple[int, list[bytes], int]] = []
        self._chunk_of_partition: dict[int, int] = {}
        self._chunk_of_user: dict[str, int] = {}  # users of split partitions only
        for partition, lines in lines_of.items():
            size = sum(map(len, lines)) + len(lines) - 1
            if size <= max_bytes:
                self._add(partition, lines, size)
            else:
                self._split(partition, lines, max_bytes)

    def _add(self, partition: int, lines: list[bytes], size: int) -> None:
        self._chunk_of_partition[partition] = len(self.chunks)
        self.chunks.append((partition, lines, size))

    def _split(self, partition: int, lines: list[bytes], max_bytes: int) -> None:
        chunk: list[bytes] = []
        size = 0
        for line in lines:
            if chunk and size + 1 + len(line) > max_bytes:
                self._add(partition, chunk, size)
                chunk, size = [], 0
            size += len(line) + (1 if chunk else 0)
            chunk.append(line)
            # the chunk this line will be in; the user's last line decides
            self._chunk_of_user[orjson.loads(line)["user_id"]] = len(self.chunks)
        self._add(partition, chunk, size)

    def message_of(self, user: str, partition: int) -> int:
        index = self._chunk_of_user.get(user)
        return self._chunk_of_partition[partition] if index is None else index
