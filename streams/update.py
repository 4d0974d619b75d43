"""Source messages -> updated user records: the agents' work, without Faust.

Called once per batch: the batch's messages are split by user (each line names its
user), so each user's record is read and written once per batch however many of its
events the batch holds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, Protocol, TypeVar

import orjson

from services.shared.erasures import decode as decode_erasure
from services.shared.erasures import is_erasure
from services.shared.events import InvalidEvent, lines, message_key
from services.shared.ranking import ModelConfig
from services.shared.users import UserRecord
from streams.model import apply_event

log = logging.getLogger(__name__)

T = TypeVar("T")


class SourceMessage(Protocol):
    partition: int
    offset: int
    value: bytes


def events_in(value: bytes | None) -> int:
    """Events (lines) in a source message."""
    return value.count(b"\n") + 1 if value else 0


def chunks(messages: Sequence[T], max_events: int,
           value: Callable[[T], bytes | None]) -> Iterator[list[T]]:
    """``messages`` in order, cut into runs of at most ``max_events`` events (a message
    with more is a run of its own). A gateway message holds up to a request's events for
    one partition, so a batch of messages can hold hundreds of thousands of events; the
    memory an agent needs grows with the events it applies at once (parsed events,
    records, the store's write batch), and stays taken after them."""
    run: list[T] = []
    size = 0
    for message in messages:
        n = events_in(value(message))
        if run and size + n > max_events:
            yield run
            run, size = [], 0
        run.append(message)
        size += n
    if run:
        yield run


SESSION_GAP_S = 1800.0  # CrowdPower: a new session after 30 minutes without events


def event_time(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


# (event time, program, event type, labels, asset labels, asset, counts as session activity,
#  the client id's key or None, received (epoch s; 0 without a client id), source dialect)
Action = tuple[float, str, str, list[str], list[str], str, bool, int | None, int, str]


@dataclass(frozen=True, slots=True)
class Dedup:
    """How long, and for how many ids per user, a client's event id is remembered."""

    window_s: int = 86400
    max_ids: int = 1000


def client_key(e: dict[str, Any]) -> int | None:
    """A 64-bit key of an event's client id, or None when it has none. The gateway derives
    the event_id of such an event from (program, dialect, client id) (services.gateway.ingest),
    so its first 64 bits stand for the client id."""
    if not e.get("client_event_id"):
        return None
    return event_key(e["event_id"])


def event_key(event_id: str) -> int:
    """The first 64 bits of a UUID in its text form."""
    return int(event_id[:8] + event_id[9:13] + event_id[14:18], 16)


@dataclass(slots=True)
class UserEvents:
    """What one source message holds for one user: the actions it asks to apply."""

    partition: int
    offset: int
    actions: list[Action] = field(default_factory=list)
    erase: bool = False  # an erasure of the user (services.shared.erasures): no actions


def split_by_user(messages: Iterable[SourceMessage]) -> dict[bytes, list[UserEvents]]:
    """Source messages (a request's bundle for one partition, or one user's events) ->
    per user key, what each message holds for that user, in the messages' order.

    Lines are parsed, not re-checked field by field: the sink does that and dead-letters
    what is malformed; here a malformed message is skipped as a whole. Events with
    ``process_user_actions=false`` are left out, so they change no state. An erasure
    message is one entry of its user with ``erase`` set."""
    by_user: dict[bytes, list[UserEvents]] = {}
    for message in messages:
        if is_erasure(message.value):
            try:
                erasure = decode_erasure(message.value)
            except InvalidEvent as exc:
                log.warning("skipping message %s/%s: %s (the sink dead-letters it)",
                            message.partition, message.offset, exc)
                continue
            by_user.setdefault(erasure.key, []).append(
                UserEvents(message.partition, message.offset, erase=True))
            continue
        try:
            per_user: dict[bytes, list[Action]] = {}
            for e in map(orjson.loads, lines(message.value)):
                if e["process_user_actions"]:
                    client = client_key(e)
                    per_user.setdefault(message_key(e["program_id"], e["user_id"]), []).append((
                        event_time(e["event_timestamp"]), e["program_id"], e["event_type"],
                        e["labels"], e.get("asset_labels") or [], e["asset_id"],
                        bool(e.get("update_session")), client,
                        int(event_time(e["received_at"])) if client is not None else 0,
                        e.get("source", ""),
                    ))
        except (InvalidEvent, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            log.warning("skipping message %s/%s: %r (the sink dead-letters it)",
                        message.partition, message.offset, exc)
            continue
        for key, actions in per_user.items():
            by_user.setdefault(key, []).append(UserEvents(message.partition, message.offset, actions))
    return by_user


def erase(record: UserRecord) -> None:
    """Everything the record knows of the user back to a new user's: weights, recent
    assets, sessions, counts and the client ids remembered for dedup (whatever fields the
    record grows, every one but the user's own key)."""
    fresh = UserRecord(record.program_id, record.user_id)
    for f in fields(UserRecord):
        setattr(record, f.name, getattr(fresh, f.name))


def erased(record: UserRecord, entries: Iterable[UserEvents]) -> bool:
    """Whether the record, after ``entries`` were applied, stands at an erasure with nothing
    after it: its changelog value is a tombstone and it leaves the store (an event after
    the erasure makes it a new user's record instead)."""
    return any(e.erase and (e.partition, e.offset) == (record.partition, record.offset)
               for e in entries)


def apply_messages(
    record: UserRecord,
    entries: Iterable[UserEvents],
    config_for: Callable[[str], ModelConfig],
    session_gap_s: float = SESSION_GAP_S,
    dedup: Dedup = Dedup(),
    duplicates: dict[str, int] | None = None,
) -> bool:
    """Apply one user's events, message by message in offset order, to its record; skip
    the messages already in it, and the events whose client id it saw within the window (a
    client's retry: counted per dialect in ``duplicates``). Returns whether the record
    changed (must be written)."""
    changed = False
    latest = 0  # the newest receipt of an event with a client id applied here
    for entry in entries:
        if record.applied(entry.partition, entry.offset):
            continue  # a replay after a crash or a rebalance: already counted
        if entry.erase:  # forget all of it; what follows is a new user's
            erase(record)
            record.partition, record.offset = entry.partition, entry.offset
            latest, changed = 0, True
            continue
        for (ts, program_id, event_type, labels, asset_labels, asset_id, session, key, received,
             source) in entry.actions:
            if key is not None:
                if not record.first_time(key, received, dedup.window_s, dedup.max_ids):
                    if duplicates is not None:
                        duplicates[source] = duplicates.get(source, 0) + 1
                    continue
                latest = max(latest, received)
            if session:
                record.touch_session(ts, session_gap_s)
            apply_event(record.state, config_for(program_id), ts, event_type, labels,
                        asset_labels, asset_id)
            record.events += 1
        record.partition, record.offset = entry.partition, entry.offset
        changed = True
    if latest:
        record.forget(latest - dedup.window_s, dedup.max_ids)  # ids past the window
    return changed
