"""Dead letters -> the events topic again, each at most once per letter: ``sluice replay``.

In: the letters of the DLQ topic (services.sink.letters), in DLQ offset order, that a
:class:`~services.sink.letters.Filter` takes. Each is checked again with the sink's own
check of a line from outside the gateway (``lines`` + ``decode`` of services.shared.events):

- it passes: its lines go to the events topic, unchanged (so each keeps its ``event_id``,
  and a replay of an event ClickHouse in fact stored collapses in the ReplacingMergeTree
  like any retry), each keyed ``program_id\\x1fuser_id`` so it lands on its user's
  partition, with the header ``sluice-replay-of: <dlq partition>:<offset>``. They carry no
  ``sluice-wire`` header: the sink checks them again, and what ClickHouse still refuses it
  dead-letters again, keeping that header as ``replay_of``.
- it fails: a new letter with the new reason and ``replay_of`` goes to the DLQ; the old
  one stays where it is. Nothing is lost either way.

Never twice: a compacted marker topic ``<dlq>.replayed`` (1 partition), keyed by the
letter's ``partition:offset``, its value JSON (outcome, where it went, the letter's
timestamp). A replay reads it whole first and leaves out every letter it names. Why not a
consumer group whose committed offset is the progress: the filters (--reason, --program,
times) replay any subset, so progress is not one offset; one marker per letter covers every
subset, costs a small record per replayed letter, and compaction keeps one per letter.
The letter's timestamp in the marker guards against a DLQ topic deleted and re-created
(offsets restart: a marker of the old topic does not match). A tombstone on a key un-marks
that letter. Letters with ``replay_of`` (a replay already tried their line, and it was
refused again) are left out unless ``retry_refused``: running replay twice never loops a
letter that nothing has fixed.

Order of writes, per batch of letters: produce events and new letters (acks=all,
idempotent), wait for every delivery, then produce markers of the letters whose records
were all delivered, and wait for those. A crash between the two replays those letters
again on the next run: their events keep their ids, so ClickHouse collapses them (the
agents count them again unless they carry a client event id: see docs/operating.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from services.shared.events import InvalidEvent, decode, lines, message_key
from services.shared.kafka import (
    ensure_compacted_topic,
    produce_waiting,
    producer_config,
)
from services.shared.settings import Settings
from services.shared.topic_read import kafka_reason
from services.sink.dlq import REPLAY_HEADER, REPLAY_OF
from services.sink.erased_letters import erased_topic, erased_users, is_erased
from services.sink.letters import (
    BrokerError,
    DeadLetter,
    Filter,
    excerpt,
    read_all,
)

MARKER_SUFFIX = ".replayed"


class ReplayError(Exception):
    """The broker did not take what the replay produced; the message says what is safe."""


def marker_topic(settings: Settings) -> str:
    return settings.topic_dlq + MARKER_SUFFIX


def marker_value(letter: DeadLetter, outcome: str, to: str) -> bytes:
    return orjson.dumps({"outcome": outcome, "to": to, "letter_ts": letter.timestamp_ms,
                         "at": datetime.now(UTC).isoformat()})


def done_markers(records: Iterable[DeadLetter]) -> dict[str, int | None]:
    """Marker records in offset order -> letter ref -> the letter's timestamp (None when
    the marker has none). A later record of a key wins; a tombstone un-marks it."""
    done: dict[str, int | None] = {}
    for record in records:
        ref = (record.key or b"").decode()
        if not record.value:
            done.pop(ref, None)
            continue
        try:
            ts = orjson.loads(record.value).get("letter_ts")
        except (orjson.JSONDecodeError, AttributeError):
            ts = None
        done[ref] = ts if isinstance(ts, int) else None
    return done


def is_done(letter: DeadLetter, done: dict[str, int | None]) -> bool:
    if letter.ref not in done:
        return False
    ts = done[letter.ref]
    return ts is None or ts == letter.timestamp_ms


@dataclass(frozen=True)
class Step:
    """One letter to replay: the (key, line)s to produce, or why it is refused now."""

    letter: DeadLetter
    lines: list[tuple[bytes, bytes]]
    refused: str | None = None


def check(letter: DeadLetter) -> Step:
    """The sink's check of lines from outside the gateway, on the letter's bytes."""
    try:
        rows = lines(letter.value)
        events = [decode(row) for row in rows]
    except InvalidEvent as exc:
        return Step(letter, [], str(exc))
    return Step(letter, [(message_key(e["program_id"], e["user_id"]), row)
                         for e, row in zip(events, rows, strict=True)])


@dataclass
class Plan:
    steps: list[Step] = field(default_factory=list)  # in DLQ offset order
    filtered: int = 0  # not taken by the filter
    already: int = 0  # marked: an earlier replay did them
    tried: int = 0  # replay_of letters, left out without retry_refused
    other: int = 0  # letters of another topic (assets)
    erased: int = 0  # lines of users erased since (services.sink.erased_letters)


def plan(letters: Iterable[DeadLetter], done: dict[str, int | None], wanted: Filter,
         events_topic: str, retry_refused: bool = False,
         erased: Callable[[DeadLetter], bool] = lambda _: False) -> Plan:
    """What a replay would do, letter by letter; pure. ``erased``: whether a letter holds
    a line of a user erased after it (never replayed)."""
    out = Plan()
    for letter in sorted(letters, key=lambda x: (x.partition, x.offset)):
        source = letter.header("source_topic")
        if not wanted(letter):
            out.filtered += 1
        elif is_done(letter, done):
            out.already += 1
        elif erased(letter):
            out.erased += 1
        elif letter.replay_of and not retry_refused:
            out.tried += 1
        elif source and source != events_topic:
            out.other += 1
        else:
            out.steps.append(check(letter))
    return out


def requeued_headers(letter: DeadLetter, reason: str) -> dict[str, bytes]:
    """A letter refused again: its origin kept, the new reason, which letter it replaces."""
    kept = {k: v for k, v in letter.headers.items() if k.startswith("source_")}
    return kept | {
        "reason": reason.encode()[:2000],
        "category": b"empty" if not letter.value else b"invalid_event",
        REPLAY_OF: letter.ref.encode(),
        "replayed_at": datetime.now(UTC).isoformat().encode(),
    }


@dataclass
class Outcome:
    plan: Plan
    replayed: int = 0  # letters whose lines went to the events topic
    events: int = 0  # lines produced
    refused: int = 0  # letters refused again: a new letter each


def load_plan(settings: Settings, wanted: Filter, retry_refused: bool = False) -> Plan:
    done = done_markers(read_all(settings, marker_topic(settings)))
    erased = erased_users(read_all(settings, erased_topic(settings)))
    return plan(read_all(settings, settings.topic_dlq), done, wanted, settings.topic_events,
                retry_refused, lambda letter: is_erased(letter, erased))


def replay(settings: Settings, wanted: Filter, retry_refused: bool = False,
           show_progress: bool = True, batch: int = 500, timeout_s: float = 30.0) -> Outcome:
    """Replay what :func:`load_plan` finds; :class:`ReplayError` when the broker does not
    acknowledge (letters marked so far stay done, the rest are tried on the next run)."""
    ensure_marker_topic(settings)
    outcome = Outcome(load_plan(settings, wanted, retry_refused))
    producer = Producer(producer_config(settings))
    steps = outcome.plan.steps
    with Progress(console=Console(stderr=True), disable=not show_progress) as progress:
        task = progress.add_task("replaying dead letters", total=len(steps))
        for start in range(0, len(steps), batch):
            chunk = steps[start:start + batch]
            _replay_batch(settings, producer, chunk, outcome, timeout_s)
            progress.advance(task, len(chunk))
    return outcome


def _replay_batch(settings: Settings, producer: Producer, chunk: list[Step], outcome: Outcome,
                  timeout_s: float) -> None:
    delivered: dict[str, list[str]] = {}  # letter ref -> where its records went
    errors: list[str] = []

    def report(ref: str) -> Callable[[KafkaError | None, Message], None]:
        def delivered_cb(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                errors.append(err.str())
            else:
                delivered.setdefault(ref, []).append(f"{msg.topic()}:{msg.partition()}:{msg.offset()}")
        return delivered_cb

    for step in chunk:
        ref = step.letter.ref
        if step.refused is None:
            for key, line in step.lines:
                produce_waiting(producer, settings.topic_events, line, key,
                                headers=[(REPLAY_HEADER, ref.encode())], on_delivery=report(ref))
        else:
            headers: list[tuple[str, str | bytes | None]] = list(
                requeued_headers(step.letter, step.refused).items())
            produce_waiting(producer, settings.topic_dlq, step.letter.value, step.letter.key,
                            headers=headers, on_delivery=report(ref))
    left = producer.flush(timeout_s)
    whole = [s for s in chunk if len(delivered.get(s.letter.ref, ())) == max(1, len(s.lines))]
    for step in whole:
        outcome_name = "replayed" if step.refused is None else "refused"
        produce_waiting(producer, marker_topic(settings), marker_value(
            step.letter, outcome_name, delivered[step.letter.ref][0]), step.letter.ref.encode())
    if producer.flush(timeout_s) > 0:
        raise ReplayError(f"broker {settings.bootstrap} did not acknowledge the replay's "
                          "markers: those letters may be replayed again (their events keep "
                          "their ids, so ClickHouse stores them once)")
    for step in whole:
        if step.refused is None:
            outcome.replayed += 1
            outcome.events += len(step.lines)
        else:
            outcome.refused += 1
    if left or errors or len(whole) < len(chunk):
        why = errors[0] if errors else f"{left} records not acknowledged in {timeout_s:.0f}s"
        raise ReplayError(f"broker {settings.bootstrap} did not take the replay ({why}); "
                          f"{len(chunk) - len(whole)} letters stay unreplayed: run again")


def ensure_marker_topic(settings: Settings, timeout_s: float = 10.0) -> None:
    """The compacted marker topic, created if missing."""
    topic = marker_topic(settings)
    try:
        ensure_compacted_topic(settings, topic, timeout_s)
    except KafkaException as exc:
        raise BrokerError(f"broker {settings.bootstrap}: cannot create {topic}: "
                          f"{kafka_reason(exc)}") from None


def plan_table(steps: list[Step]) -> Table:
    """A dry run: what would go, and why each letter was dead-lettered."""
    table = Table(title=f"Would replay {len(steps)} letters (dry run: nothing produced)")
    for name in ("offset", "time", "now", "dead-lettered for", "excerpt"):
        table.add_column(name, no_wrap=name in ("offset", "time"))
    for s in steps:
        n = len(s.lines)
        now = f"goes: {n} event{'s' * (n != 1)}" if s.refused is None else \
            f"stays in the DLQ: {s.refused[:60]}"
        table.add_row(s.letter.ref, s.letter.time.strftime("%Y-%m-%d %H:%M:%S"), now,
                      s.letter.reason[:80], excerpt(s.letter.value, 50))
    return table


def left_out(p: Plan) -> str:
    return (f"left out: {p.already} already replayed, {p.tried} refused at an earlier replay "
            f"(--retry-refused), {p.filtered} not matching the filters, {p.other} of other topics, "
            f"{p.erased} of users erased since")
