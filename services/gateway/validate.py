"""Request body -> checked events, for ActionHub's ``POST /events`` contract.

The whole body is validated in one call straight from the JSON bytes. Good bodies take
msgspec's decoder (measured 1.3 us/event against pydantic-core's 3.5 us/event here: the
largest single cost of the front door); a body msgspec refuses goes to pydantic, which
is the authority: it either accepts it (it is a little more lenient, e.g. on timestamp
formats) or lists every error in FastAPI's ``{"detail": [{"loc", "msg", "type"}]}``
shape. msgspec is never more lenient than pydantic on these types, so both paths accept
the same bodies.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any, NotRequired

import msgspec
from fastapi.exceptions import RequestValidationError
from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    with_config,
)
from typing_extensions import TypedDict

MAX_EVENTS = 1000  # the contract: "from minimum of 1 event to maximum 1000 events"
MAX_LABELS = 100

Id = Annotated[str, StringConstraints(min_length=1, max_length=512)]
Label = Annotated[str, StringConstraints(min_length=1, max_length=256)]


def _storable(ts: datetime) -> datetime:
    # ClickHouse DateTime64 holds 1900..2299: refuse here what could never be stored.
    if not 1900 <= ts.year <= 2299:
        raise ValueError("event_timestamp must lie between years 1900 and 2299")
    return ts


Timestamp = Annotated[
    datetime,
    Strict(),  # an ISO 8601 string, not a bare number
    AfterValidator(_storable),
    Field(description="Time the event occurred, ISO 8601 (no offset = UTC)"),
]


def _numbers(value: Any) -> Iterator[int | float]:
    """Every number in a parsed JSON value (booleans are no numbers), without recursion."""
    stack: list[Any] = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, int | float) and not isinstance(node, bool):
            yield node


def finite_json(value: dict[str, Any]) -> dict[str, Any]:
    """Free-form JSON stored as JSON text (a dialect event's properties): finite numbers
    only. NaN and Infinity are not JSON: the parser lets them through, and the stored text
    would not parse (an integer beyond 64 bits is written exactly, and stays JSON)."""
    if any(isinstance(n, float) and not math.isfinite(n) for n in _numbers(value)):
        raise ValueError("NaN and Infinity are not JSON numbers")
    return value


def _storable_json(value: dict[str, Any]) -> dict[str, Any]:
    """Free-form JSON (asset attributes) that Kafka's and ClickHouse's JSON can carry:
    integers within 64 bits (orjson's range: a larger one was a 500), finite numbers
    (NaN and Infinity are not JSON: the parser lets them through, orjson would store null)."""
    for node in _numbers(finite_json(value)):
        if isinstance(node, int) and not -(2**63) <= node < 2**64:
            raise ValueError(f"integers must fit in 64 bits, not {str(node)[:40]}")
    return value


FreeJson = Annotated[dict[str, Any], AfterValidator(_storable_json)]
Properties = Annotated[dict[str, Any], AfterValidator(finite_json)]  # stored as JSON text


@with_config(ConfigDict(extra="ignore", title="Event"))
class Event(TypedDict):
    user_id: Id
    event_timestamp: Timestamp
    event_type: Id
    asset_id: Id
    labels: Annotated[
        list[Label],
        Field(
            max_length=MAX_LABELS,
            description="Labels of this instance of the event (asset labels are managed "
            "separately)",
        ),
    ]
    event_id: NotRequired[Annotated[
        Annotated[str, StringConstraints(min_length=1, max_length=256)] | None, Field(
            description="Optional: the client's own id of the event. An event whose id this "
            "program sent before (a retry) is stored once and changes user state once "
            "(within SLUICE_DEDUP_WINDOW_S, 24 h by default); null: none")]]


@with_config(ConfigDict(extra="ignore", title="EventList"))
class EventList(TypedDict):
    events: Annotated[
        list[Event],
        Field(min_length=1, max_length=MAX_EVENTS, description="1 to 1000 events"),
    ]


EVENT_LIST = TypeAdapter(EventList)


class ApiEvent(msgspec.Struct, gc=False, omit_defaults=True):
    """One checked event of ``POST /events``, as the hot path carries it to the wire: a
    Struct decodes faster than a dict (measured in instructions: the whole parse and
    ingest of a 1000-event request 15% fewer) and msgspec encodes it back in field order.
    ``gc=False``: it holds no cycles, so the collector never scans the thousands a request
    makes. ``event_timestamp`` is always timezone-aware (no offset means UTC)."""

    user_id: Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
    event_timestamp: datetime
    event_type: Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
    asset_id: Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
    labels: Annotated[
        list[Annotated[str, msgspec.Meta(min_length=1, max_length=256)]],
        msgspec.Meta(max_length=MAX_LABELS),
    ]
    # the client's own id (None: not encoded, omit_defaults); see services.gateway.ingest
    event_id: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | None = None


class _ApiEventList(msgspec.Struct, gc=False):
    events: Annotated[list[ApiEvent], msgspec.Meta(min_length=1, max_length=MAX_EVENTS)]


_FAST = msgspec.json.Decoder(_ApiEventList)


def parse_event_list(body: bytes) -> list[ApiEvent]:
    """Validate a raw JSON body; raise FastAPI's RequestValidationError (-> 422) if bad."""
    try:
        events = _FAST.decode(body).events
        if _storable_and_aware(events):
            return events
    except (msgspec.DecodeError,  # also msgspec.ValidationError
            RecursionError):  # msgspec nests without a limit of its own: pydantic has one
        pass
    try:
        checked = EVENT_LIST.validate_json(body)["events"]
    except ValidationError as exc:
        raise RequestValidationError(errors_of(exc)) from None
    events = [ApiEvent(**event) for event in checked]
    _storable_and_aware(events)
    return events


def _storable_and_aware(events: list[ApiEvent]) -> bool:
    """Give naive timestamps UTC; whether every year is one ClickHouse can store."""
    storable = True
    for event in events:
        ts = event.event_timestamp
        if ts.tzinfo is None:
            ts = event.event_timestamp = ts.replace(tzinfo=UTC)
        storable = storable and 1900 <= ts.year <= 2299
    return storable


def errors_of(exc: ValidationError) -> list[dict[str, Any]]:
    """pydantic errors -> FastAPI's detail items, located in the body, input not echoed."""
    return [
        {"loc": ["body", *err["loc"]], "msg": err["msg"], "type": err["type"]}
        for err in exc.errors(include_url=False, include_input=False)
    ]


_VERSION_4 = bytes((b & 0x0F) | 0x40 for b in range(256))  # byte 6: version nibble 4
_VERSION_7 = bytes((b & 0x0F) | 0x70 for b in range(256))
_RFC_4122 = bytes((b & 0x3F) | 0x80 for b in range(256))  # byte 8: variant bits 10
# where each of a UUID's 32 hex digits goes in its 36-character text (after the dashes)
_TEXT_POSITIONS = [i + (i >= 8) + (i >= 12) + (i >= 16) + (i >= 20) for i in range(32)]


class _RandomBytes:
    """os.urandom's bytes, drawn 64 KiB at a time: each draw is a system call, measured
    (py-spy) at a sixth of a single-event request's time here. Ids need uniqueness, which
    urandom's bytes give however they are sliced; a forked child (uvicorn's workers) drops
    what it inherited and draws its own (at fork: an os.getpid() per take was a system
    call per id)."""

    CHUNK = 65536

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buf = b""
        self._pos = 0
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._buf, self._pos = b"", 0

    def take(self, n: int) -> bytes:
        with self._lock:
            if self._pos + n > len(self._buf):
                self._buf, self._pos = os.urandom(max(self.CHUNK, n)), 0
            out = self._buf[self._pos:self._pos + n]
            self._pos += n
            return out


_RANDOM = _RandomBytes()


def uuid_text(raw: bytes | bytearray) -> str:
    """16 bytes as a UUID's 36-character text."""
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def made_up_ids() -> tuple[str, str]:
    """(client id, event_id) of an event whose client sent no id of its own: a UUIDv7, as
    PostHog's capture makes one, and a random (version 4) event_id. No retry can repeat an
    id the server made up, so deriving the event_id from it (SHA-1, as from a client's id)
    would buy nothing: it was ~5% of a single-event PostHog or Segment request (py-spy).
    RFC 9562's version 7 is the Unix milliseconds, then random bits laid out as a version
    4's: a fresh id's with its first 48 bits replaced (the uuid6 package made two random
    draws per id and, past 1000 ids a second, moved its milliseconds ahead of the clock to
    keep them strictly increasing)."""
    ms = f"{time.time_ns() // 1_000_000:012x}"
    random = _FRESH.take()
    return f"{ms[:8]}-{ms[8:]}-7{random[15:]}", _FRESH.take()


class _FreshIds:
    """Random (version 4) UUID texts, made BATCH at a time by new_event_ids: one made alone
    cost ~1 us of Python (py-spy: ~3% of a single-event request, which needs one or two).
    A forked child drops what it inherited (its parent would hand out the same ones)."""

    BATCH = 256

    def __init__(self) -> None:
        self._ids: list[str] = []
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._ids = []

    def take(self) -> str:
        try:
            return self._ids.pop()  # atomic: each id is taken once, whichever thread asks
        except IndexError:
            self._ids = new_event_ids(self.BATCH)
            return self._ids.pop()


def new_event_id() -> str:
    """One random (version 4) UUID string, ready-made (_FreshIds)."""
    return _FRESH.take()


def new_event_ids(n: int) -> list[str]:
    """n random (version 4) UUID strings from the random pool (_RandomBytes), formatted by slice
    assignments over all n at once: uuid.uuid4() per event costs about 2 us, and even
    per-id string slicing about 1 us, a large part of the gateway's per-event budget. Below
    four ids the 32 slice assignments cost more (10 us) than taking ready ones (_FreshIds)."""
    if n < 4:
        return [_FRESH.take() for _ in range(n)]
    raw = bytearray(_RANDOM.take(16 * n))
    raw[6::16] = raw[6::16].translate(_VERSION_4)
    raw[8::16] = raw[8::16].translate(_RFC_4122)
    digits = raw.hex().encode()
    text = bytearray(b"-" * (37 * n))  # 36 characters and a comma per id
    for digit, position in enumerate(_TEXT_POSITIONS):
        text[position::37] = digits[digit::32]
    text[36::37] = b"," * n
    return text[:-1].decode().split(",")


_FRESH = _FreshIds()
