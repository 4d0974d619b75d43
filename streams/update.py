"""Source messages -> updated user records: the agents' work, without Faust.

Called once per batch with the messages grouped by user key, so each user's record is
read and written once per batch however many of its events the batch holds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Protocol

import orjson

from services.shared.events import InvalidEvent, lines
from streams.model import ModelConfig, apply_event
from streams.records import UserRecord

log = logging.getLogger(__name__)


class SourceMessage(Protocol):
    partition: int
    offset: int
    value: bytes


SESSION_GAP_S = 1800.0  # CrowdPower: a new session after 30 minutes without events


def event_time(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def apply_messages(
    record: UserRecord,
    messages: Iterable[SourceMessage],
    config_for: Callable[[str], ModelConfig],
    session_gap_s: float = SESSION_GAP_S,
) -> bool:
    """Apply one user's messages (in offset order) to its record; skip those already in
    it. Returns whether the record changed (i.e. must be written)."""
    changed = False
    for message in messages:
        if record.applied(message.partition, message.offset):
            continue  # a replay after a crash or a rebalance: already counted
        try:
            # Parsed, not re-checked field by field: the sink does that and dead-letters
            # what is malformed; here a malformed message is skipped as a whole.
            events = [
                (event_time(e["event_timestamp"]), e["program_id"], e["event_type"], e["labels"],
                 e.get("asset_labels") or (), e["asset_id"], bool(e.get("update_session")))
                for e in map(orjson.loads, lines(message.value))
                if e["process_user_actions"]
            ]
        except (InvalidEvent, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            log.warning("skipping message %s/%s: %r (the sink dead-letters it)",
                        message.partition, message.offset, exc)
            continue
        for ts, program_id, event_type, labels, asset_labels, asset_id, session in events:
            if session:
                record.touch_session(ts, session_gap_s)
            apply_event(record.state, config_for(program_id), ts, event_type, labels,
                        asset_labels, asset_id)
            record.events += 1
            changed = True
        if changed:
            record.partition, record.offset = message.partition, message.offset
    return changed
