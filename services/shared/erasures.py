"""User erasure: the erasure message on the ``events`` topic, its receipt, and its status.

Why a message on the events topic, not a call to each store: an erasure is published with
the user's key (``program_id\\x1fuser_id``) to the user's partition, so every consumer
meets it *in order*: after every event of the user acked before it, before every event
acked after it. Each role then does its own part, where the user's data is, with the
guarantees it already has for events (at-least-once delivery, commit after the work):

- the sink (services.sink.erase) inserts what came before it, deletes the user's rows from
  ClickHouse, records the erasure in the ``erasures`` table, marks it for ``sluice replay``
  (which then leaves the user's dead letters out: services.sink.erased_letters), and only
  then commits past it;
- the agents (streams.update) drop the user's record: a tombstone on the changelog and a
  delete in the local store (weights, recent assets, sessions, client ids for dedup); an
  event after it starts a new user;
- the gateway's live page (services.gateway.live) drops the user's events it shows;
- a rebuild (streams.rebuild) reads ClickHouse, which no longer holds the user.

Nothing keeps a list of erased users that later events are checked against: a later event
is a new user's first. The message is its own Kafka message (never a line among events),
carries the header ``sluice-erasure`` and starts with ``{"sluice_erasure":`` (no event line
can: the gateway writes ``program_id`` first), so every consumer tells it from events by
its first bytes, without parsing, and none dead-letters it or counts it as an event.

The receipt is the message's coordinates, (partition, offset), with the program, a digest
of the user and the erasure's id: any gateway answers ``GET /users/{id}/erasure/{receipt}``
from the groups' committed offsets and the ``erasures`` table, nothing is kept per request,
and the receipt names no user. See :func:`decide` for what "done" means.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
import orjson
from clickhouse_connect.driver.binding import format_query_value

from services.shared.events import InvalidEvent, message_key

HEADER = ("sluice-erasure", b"1")
PREFIX = b'{"sluice_erasure":'  # the first bytes of every erasure message, of no event line


@dataclass(frozen=True, slots=True)
class Erasure:
    """One request to forget a user of a program."""

    program_id: str
    user_id: str
    erasure_id: str
    requested_at: str  # ISO 8601 UTC

    @classmethod
    def new(cls, program_id: str, user_id: str) -> Erasure:
        return cls(program_id, user_id, uuid.uuid4().hex,
                   datetime.now(UTC).isoformat().replace("+00:00", "Z"))

    @property
    def key(self) -> bytes:
        """The Kafka key: the user's, so it lands on the user's partition."""
        return message_key(self.program_id, self.user_id)

    @property
    def digest(self) -> str:
        return user_digest(self.program_id, self.user_id)

    def encode(self) -> bytes:
        return orjson.dumps({"sluice_erasure": 1, "program_id": self.program_id,
                             "user_id": self.user_id, "erasure_id": self.erasure_id,
                             "requested_at": self.requested_at})


def user_digest(program_id: str, user_id: str) -> str:
    """What the ``erasures`` table and the receipt keep of a user: not the id itself."""
    return hashlib.blake2b(message_key(program_id, user_id), digest_size=16).hexdigest()


def is_erasure(value: bytes | None) -> bool:
    """Whether a message of the events topic is an erasure (by its first bytes only)."""
    return value is not None and value.startswith(PREFIX)


def decode(value: bytes | None) -> Erasure:
    """The erasure a message holds; :class:`InvalidEvent` when it is not a well-formed one."""
    if not is_erasure(value):
        raise InvalidEvent("not an erasure message")
    try:
        d = orjson.loads(value)  # type: ignore[arg-type]
        fields = (d["program_id"], d["user_id"], d["erasure_id"], d["requested_at"])
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise InvalidEvent(f"malformed erasure message: {exc!r}") from None
    if not all(isinstance(f, str) and f for f in fields):
        raise InvalidEvent("malformed erasure message: empty or non-text field")
    return Erasure(*fields)


# -- the receipt -----------------------------------------------------------------------------
class _Wire(msgspec.Struct, array_like=True):
    version: int
    program: str
    user: str  # the user's digest
    erasure_id: str
    partition: int
    offset: int


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(_Wire)


@dataclass(frozen=True, slots=True)
class Receipt:
    program: str
    user: str  # user_digest(program, user_id)
    erasure_id: str
    partition: int
    offset: int

    def encode(self) -> str:
        raw = _ENCODER.encode(_Wire(1, self.program, self.user, self.erasure_id,
                                    self.partition, self.offset))
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    @classmethod
    def decode(cls, text: str) -> Receipt | None:
        """The receipt, or None if ``text`` is not one Sluice could have issued."""
        try:
            wire = _DECODER.decode(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        except (binascii.Error, msgspec.DecodeError, ValueError):
            return None
        if wire.version != 1:
            return None
        return cls(wire.program, wire.user, wire.erasure_id, wire.partition, wire.offset)

    def names(self, program_id: str, user_id: str) -> bool:
        return self.program == program_id and self.user == user_digest(program_id, user_id)


def receipt_for(erasure: Erasure, partition: int, offset: int) -> Receipt:
    return Receipt(erasure.program_id, erasure.digest, erasure.erasure_id, partition, offset)


# -- ClickHouse -------------------------------------------------------------------------------
def _users(erasures: list[Erasure]) -> str:
    """``(program_id, user_id) IN (...)`` of ``erasures``, quoted by clickhouse-connect
    (not bound on the server: ON CLUSTER forwards the statement's text to every host)."""
    pairs = dict.fromkeys((e.program_id, e.user_id) for e in erasures)
    return "(program_id, user_id) IN ({})".format(", ".join(
        f"({format_query_value(p)}, {format_query_value(u)})" for p, u in pairs))


def delete_statement(erasures: list[Erasure], topology: str, cluster: str | None) -> str:
    """The users' rows out of ``events``: one lightweight DELETE (why: services.sink.erase).
    sharded: on each shard's local table (a Distributed table takes no DELETE); replicated
    and cloud: the replicated table passes it to its replicas itself."""
    if topology == "sharded":
        return f"DELETE FROM events_local ON CLUSTER '{cluster}' WHERE {_users(erasures)}"
    return f"DELETE FROM events WHERE {_users(erasures)}"


def count_statement(erasures: list[Erasure]) -> str:
    """Each user's stored events (each once), by (program_id, user_id)."""
    return (f"SELECT program_id, user_id, count() AS n FROM events FINAL "
            f"WHERE {_users(erasures)} GROUP BY program_id, user_id")


DONE_ROW = ("SELECT max(erased_at) AS erased_at, max(rows_deleted) AS rows_deleted, count() AS n "
            "FROM erasures WHERE program_id = {p:String} AND user_digest = {d:String} "
            "AND erasure_id = {e:String}")


def record_row(erasure: Erasure, partition: int, offset: int, rows: int) -> bytes:
    """The ``erasures`` row of a finished delete (JSONEachRow); no user id, its digest."""
    return orjson.dumps({
        "program_id": erasure.program_id, "user_digest": erasure.digest,
        "erasure_id": erasure.erasure_id, "requested_at": erasure.requested_at,
        "erased_at": datetime.now(UTC).isoformat(), "source_partition": partition,
        "source_offset": offset, "rows_deleted": rows,
    })


# -- status -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Stored:
    """What the ``erasures`` table says of one erasure (None: nothing, or no ClickHouse)."""

    erased_at: str
    rows_deleted: int


def decide(receipt: Receipt, sink_committed: int, agents_committed: int,
           stored: Stored | None, have_table: bool,
           still_in_topic: Callable[[], bool]) -> dict[str, Any]:
    """Where an erasure stands, per store. Pure but for ``still_in_topic`` (a read of the
    events topic at the receipt's position), asked only when something is not done.

    - clickhouse: done when the ``erasures`` table holds its row (the sink writes it after
      the delete); without the table (this process cannot open ClickHouse), when the sink's
      group committed past the message (it commits only after the delete).
    - agents: done when the agents' group committed past the message (Faust commits only
      after the tombstone is in the changelog and the store; the gateway also asks the
      user's worker, which knows seconds before Faust commits, and passes that in as a
      committed offset).
    - Committed offsets belong to one life of the topic. When the message is no longer at
      its position (the embedded broker restarted with empty topics, or retention removed
      it): with ClickHouse done, user state was rebuilt from ClickHouse since, so the agents
      are done too; without, the erasure was lost with the broker before the sink read it
      (``lost``: erase again)."""
    clickhouse = stored is not None if have_table else sink_committed > receipt.offset
    agents = agents_committed > receipt.offset
    lost = False
    if not (clickhouse and agents) and not still_in_topic():
        agents = clickhouse
        lost = not clickhouse
    status = "done" if clickhouse and agents else "lost" if lost else "pending"
    ch: dict[str, Any] = {"status": "done" if clickhouse else "pending"}
    if stored is not None:
        ch |= {"erased_at": stored.erased_at, "rows_deleted": stored.rows_deleted}
    return {"status": status, "stores": {
        "clickhouse": ch, "agents": {"status": "done" if agents else "pending"}}}


def stored_row(query: Callable[[str, dict[str, Any]], list[dict[str, Any]]],
               receipt: Receipt) -> Stored | None:
    rows = query(DONE_ROW, {"p": receipt.program, "d": receipt.user, "e": receipt.erasure_id})
    if not rows or not rows[0]["n"]:
        return None
    at = rows[0]["erased_at"]
    at_text = at.replace(tzinfo=UTC).isoformat() if isinstance(at, datetime) else str(at)
    return Stored(at_text, int(rows[0]["rows_deleted"]))


# -- the gateway's live page ------------------------------------------------------------------
def forget_user(events: list[dict[str, Any]], dead: deque[dict[str, Any]],
                value: bytes) -> tuple[list[dict[str, Any]], deque[dict[str, Any]]]:
    """The live page's newest events and dead letters without the erased user's: the
    events it shows by (program, user), the letters by the user's id in their excerpt
    (they name it as the event line does, ``"user_id":"..."``)."""
    try:
        erasure = decode(value)
    except InvalidEvent:
        return events, dead
    kept = [e for e in events if (e.get("program_id"), e.get("user_id"))
            != (erasure.program_id, erasure.user_id)]
    named = orjson.dumps({"user_id": erasure.user_id})[1:-1].decode()
    letters = deque((d for d in dead if named not in str(d.get("value", ""))), dead.maxlen)
    return kept, letters
