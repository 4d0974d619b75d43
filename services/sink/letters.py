"""The DLQ topic -> dead letters, read back: what ``sluice dlq`` lists and ``sluice replay`` puts back.

A letter is one record the sink (services.sink.dlq) wrote: the original bytes, the reason
and category, where it came from, read from the start of each partition to its end outside
any group (services.shared.topic_read).

Pure parts (:class:`Filter`, :func:`summarize`, :func:`excerpt`) need no broker.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson
from confluent_kafka import Message
from rich.table import Table

from services.shared.settings import Settings
from services.shared.topic_read import TopicUnread, read_to_end
from services.sink.dlq import REPLAY_OF


class BrokerError(Exception):
    """The broker did not answer, or refused: the message is the one line to show."""


@dataclass(frozen=True)
class DeadLetter:
    partition: int
    offset: int
    timestamp_ms: int  # the letter's Kafka timestamp: when it was dead-lettered
    value: bytes
    key: bytes | None
    headers: dict[str, bytes] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        """``partition:offset``: names the letter in replay markers and ``replay_of``."""
        return f"{self.partition}:{self.offset}"

    def header(self, name: str) -> str:
        return self.headers.get(name, b"").decode(errors="replace")

    @property
    def reason(self) -> str:
        return self.header("reason")

    @property
    def category(self) -> str:
        """The ``category`` header; for letters written before it existed, from the reason."""
        if found := self.header("category"):
            return found
        if self.reason.startswith("ClickHouse refused"):
            return "clickhouse_refused"
        if self.reason.startswith("empty message (tombstone)"):
            return "empty"
        return "invalid_asset" if self.reason.startswith("asset ") else "invalid_event"

    @property
    def program(self) -> str | None:
        """The program the (first) line names, where it is a JSON object that names one."""
        try:
            first = orjson.loads(self.value.split(b"\n", 1)[0])
        except orjson.JSONDecodeError:
            return None
        program = first.get("program_id") if isinstance(first, dict) else None
        return program if isinstance(program, str) else None

    @property
    def replay_of(self) -> str | None:
        """Set when a replay already tried this letter's line (services.sink.replay)."""
        return self.header(REPLAY_OF) or None

    @property
    def time(self) -> datetime:
        return datetime.fromtimestamp(self.timestamp_ms / 1000, UTC)


def parse_time(text: str) -> datetime:
    """An ISO 8601 time (``2026-12-05T03:00``, ``...Z``, ``...+01:00``); naive means UTC."""
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Filter:
    """Which letters a command takes. ``reason`` matches the category exactly or any part
    of the free-text reason (case-insensitive); times bound the letter's Kafka timestamp,
    ``since`` inclusive, ``until`` exclusive."""

    since: datetime | None = None
    until: datetime | None = None
    program: str | None = None
    reason: str | None = None

    def __call__(self, letter: DeadLetter) -> bool:
        if self.since is not None and letter.time < self.since:
            return False
        if self.until is not None and letter.time >= self.until:
            return False
        if self.program is not None and letter.program != self.program:
            return False
        if self.reason is not None:
            wanted = self.reason.lower()
            return letter.category == self.reason or wanted in letter.reason.lower()
        return True


@dataclass
class Group:
    """Letters of one category and program: how many, when, one reason as an example."""

    category: str
    program: str | None
    letters: int = 0
    replayed: int = 0  # marked done by a replay (services.sink.replay)
    first: datetime | None = None
    last: datetime | None = None
    example: str = ""


def summarize(letters: Iterable[DeadLetter],
              replayed: Callable[[DeadLetter], bool] = lambda _: False) -> list[Group]:
    """Letters grouped by (category, program), most letters first; ``replayed`` says
    whether a replay already did a letter (services.sink.replay.is_done)."""
    groups: dict[tuple[str, str | None], Group] = {}
    for letter in letters:
        group = groups.setdefault((letter.category, letter.program),
                                  Group(letter.category, letter.program, example=letter.reason))
        group.letters += 1
        group.replayed += replayed(letter)
        group.first = min(group.first or letter.time, letter.time)
        group.last = max(group.last or letter.time, letter.time)
    return sorted(groups.values(), key=lambda g: (-g.letters, g.category, g.program or ""))


def excerpt(value: bytes, width: int = 80) -> str:
    """The start of a letter's bytes, on one line."""
    text = value.decode(errors="replace").replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 1] + "…"


def read_all(settings: Settings, topic: str, timeout_s: float = 30.0) -> Iterator[DeadLetter]:
    """Every record of ``topic``, partition by partition in offset order; none if the topic
    does not exist. :class:`BrokerError` when the broker does not answer."""
    by_partition: dict[int, list[DeadLetter]] = defaultdict(list)
    try:
        for message in read_to_end(settings, topic, timeout_s):
            by_partition[message.partition() or 0].append(_letter(message))
    except TopicUnread as exc:
        raise BrokerError(str(exc)) from None
    for partition in sorted(by_partition):
        yield from by_partition[partition]


def _letter(message: Message) -> DeadLetter:
    headers: list[tuple[str, bytes | None]] = message.headers() or []  # type: ignore[assignment]
    return DeadLetter(
        partition=message.partition() or 0, offset=message.offset() or 0,
        timestamp_ms=message.timestamp()[1], value=message.value() or b"", key=message.key(),
        headers={name: raw or b"" for name, raw in headers},
    )


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S")


def groups_table(groups: list[Group]) -> Table:
    table = Table(title="Dead letters by category and program")
    for name in ("category", "program", "letters", "replayed", "first", "last", "a reason"):
        table.add_column(name, justify="right" if name in ("letters", "replayed") else "left")
    for g in groups:
        table.add_row(g.category, g.program or "-", str(g.letters), str(g.replayed),
                      _when(g.first), _when(g.last), g.example[:60])
    table.add_row("total", "", str(sum(g.letters for g in groups)),
                  str(sum(g.replayed for g in groups)), "", "", "", end_section=True)
    return table


def letters_table(letters: list[DeadLetter]) -> Table:
    table = Table(title=f"First {len(letters)} letters")
    for name in ("offset", "time", "category", "reason", "excerpt"):
        table.add_column(name, no_wrap=name in ("offset", "time"))
    for x in letters:
        table.add_row(x.ref, _when(x.time), x.category, x.reason[:80], excerpt(x.value, 60))
    return table
