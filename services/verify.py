"""`sluice verify`: did every event a gateway acknowledged reach ClickHouse and the agents?

For a window of minutes of receipt, per program, it compares three counts
(services.shared.tallies says how they are kept and why they are lines, not rows):

- **acked**: the events the gateways published and the broker acked (their tallies);
- **stored** and **dead-lettered**: the lines the sink inserted, or sent to the DLQ (a dead
  letter is not lost: `sluice dlq`, `sluice replay`);
- **applied**: acked events below the agents group's committed offset of their partition.
  The agents apply a partition in offset order and commit after applying (events with
  process_user_actions=false are read and skipped: applied too), so an offset is enough.

A gap is ``acked > stored + dead`` for a (program, minute, partition) -- ``missing``, named
with the offsets of the acked messages no stored batch covers -- or acked events at or
beyond the agents' committed offset -- ``not applied``. ``extra`` (stored + dead > acked)
is no gap: a request answered 503 whose messages landed anyway, replayed dead letters.
The newest SLUICE_VERIFY_SETTLE_S are left out by default: events on their way.

What it reads: only ``event_tallies`` (a few rows per program, minute and partition; never
``events``), the agents group's committed offsets, and the first message of each partition
(its time says which tallies belong to this topic's life: the embedded broker starts empty,
so offsets of an earlier run mean nothing to today's agents group; the fetch's end offset
says whether the minute it began also holds an earlier broker's offsets, as the minute of a
roll of `sluice up`'s broker does: that minute is then not judged against the agents).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from services.shared.clickhouse import Store
from services.shared.tallies import TABLE


@dataclass(frozen=True, slots=True)
class Cell:
    """One (program, minute, partition): both sides' counts."""

    program: str
    minute: datetime
    partition: int
    acked: int
    stored: int
    dead: int
    acked_last: int  # the last acked message's offset (-1: none acked)


@dataclass(slots=True)
class Totals:
    acked: int = 0
    stored: int = 0
    dead: int = 0
    missing: int = 0
    extra: int = 0
    applied: int = 0
    unapplied: int = 0
    unjudged: int = 0  # acked before this topic's first message: an earlier broker's offsets


@dataclass(slots=True)
class Gap:
    kind: str  # "missing" (not in ClickHouse nor the DLQ) or "not applied" (agents)
    program: str
    minute: datetime
    partition: int
    events: int
    offsets: list[tuple[int, int]] = field(default_factory=list)  # inclusive ranges

    def describe(self) -> str:
        where = ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in self.offsets) or "?"
        what = ("acked but neither stored nor dead-lettered" if self.kind == "missing"
                else "acked but not yet applied by the agents")
        return (f"{self.program} {self.minute:%Y-%m-%d %H:%M} partition {self.partition}: "
                f"{self.events} events {what}; look at offsets {where}")


@dataclass
class Report:
    since: datetime
    until: datetime
    programs: dict[str, Totals]
    gaps: list[Gap]
    agents_checked: bool

    @property
    def total(self) -> Totals:
        out = Totals()
        for t in self.programs.values():
            for name in Totals.__slots__:
                setattr(out, name, getattr(out, name) + getattr(t, name))
        return out

    @property
    def ok(self) -> bool:
        return not self.gaps


def compare(cells: Iterable[Cell], committed: dict[int, int] | None,
            starts: dict[int, datetime] | None = None, *, since: datetime,
            until: datetime, ends: dict[int, int] | None = None) -> Report:
    """The pure comparison. ``committed``: the agents group's committed offset per partition
    (None: the agents are not checked); ``starts``: each partition's first retained
    message's time: tallies of earlier minutes, or of a partition empty now, are not judged
    against the agents (an earlier broker's offsets, or beyond retention); ``ends``: each
    partition's end offset: in the minute the topic began, acked offsets at or past it are
    an earlier broker's too (a roll of `sluice up`'s broker mixes both in that minute), and
    that minute is not judged."""
    programs: dict[str, Totals] = defaultdict(Totals)
    gaps: list[Gap] = []
    for c in sorted(cells, key=lambda c: (c.program, c.minute, c.partition)):
        t = programs[c.program]
        t.acked, t.stored, t.dead = t.acked + c.acked, t.stored + c.stored, t.dead + c.dead
        short = c.acked - c.stored - c.dead
        if short > 0:
            t.missing += short
            gaps.append(Gap("missing", c.program, c.minute, c.partition, short))
        else:
            t.extra -= short
        if committed is None or c.acked == 0:
            continue
        start = None if starts is None else starts.get(c.partition)
        began = None if start is None else start.replace(second=0, microsecond=0)
        if starts is not None and (began is None or c.minute < began or (
                ends is not None and c.minute == began
                and c.acked_last >= ends.get(c.partition, 0))):
            t.unjudged += c.acked
        elif committed.get(c.partition, -1) > c.acked_last:
            t.applied += c.acked
        else:
            t.unapplied += c.acked
            done = max(committed.get(c.partition, -1), 0)
            gaps.append(Gap("not applied", c.program, c.minute, c.partition, c.acked,
                            [(done, c.acked_last)]))
    return Report(since, until, dict(programs), gaps, committed is not None)


def uncovered(acked: Iterable[tuple[int, int]], stored: Iterable[tuple[int, int]],
              ) -> list[tuple[int, int]]:
    """The offsets of ``acked`` ranges that no ``stored`` range covers (inclusive ranges)."""
    out: list[tuple[int, int]] = []
    covers = sorted(stored)
    for first, last in _merged(acked):
        at = first
        for a, b in covers:
            if b < at or a > last:
                continue
            if a > at:
                out.append((at, a - 1))
            at = max(at, b + 1)
            if at > last:
                break
        if at <= last:
            out.append((at, last))
    return out


def _merged(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


# --- reading ---------------------------------------------------------------------------------
_CELLS = (
    "SELECT program_id, minute, partition, sumIf(events, kind = 'acked') AS acked, "
    "sumIf(events, kind = 'stored') AS stored, sumIf(dead, kind = 'stored') AS dead, "
    "maxIf(last_offset, kind = 'acked') AS acked_last "
    f"FROM {TABLE} FINAL "
    "WHERE minute >= {since:DateTime('UTC')} AND minute < {until:DateTime('UTC')}"
)
_GROUPS = " GROUP BY program_id, minute, partition"


def read_cells(store: Store, since: datetime, until: datetime,
               program: str | None = None) -> list[Cell]:
    """Both sides' counts in the window, per (program, minute, partition): one aggregate
    over the window's tally rows."""
    where = "" if program is None else " AND program_id = {program:String}"
    rows = store.query(_CELLS + where + _GROUPS,
                       {"since": since, "until": until, "program": program})
    return [Cell(str(r["program_id"]), _utc(r["minute"]), int(r["partition"]), int(r["acked"]),
                 int(r["stored"]), int(r["dead"]),
                 int(r["acked_last"]) if int(r["acked"]) else -1) for r in rows]


def _utc(minute: datetime) -> datetime:
    return minute if minute.tzinfo is not None else minute.replace(tzinfo=UTC)


def locate(store: Store, gaps: list[Gap], most: int = 1000) -> None:
    """Fill in where the first ``most`` missing gaps' events are: the acked messages'
    offsets that no stored batch covers (the acked span when every offset is covered: look
    at all of it). One query for all of them."""
    wanted = [g for g in gaps if g.kind == "missing"][:most]
    if not wanted:
        return
    keys = [(g.minute, g.program, g.partition) for g in wanted]
    rows = store.query(
        f"SELECT minute, program_id, partition, kind, first_offset, last_offset FROM {TABLE} "
        "FINAL WHERE minute >= {lo:DateTime('UTC')} AND minute <= {hi:DateTime('UTC')} "
        "AND (minute, program_id, partition) IN {keys:Array(Tuple(DateTime('UTC'), String, UInt32))}",
        {"lo": min(k[0] for k in keys), "hi": max(k[0] for k in keys), "keys": keys})
    ranges: dict[tuple[datetime, str, int, str], list[tuple[int, int]]] = defaultdict(list)
    for r in rows:
        key = (_utc(r["minute"]), str(r["program_id"]), int(r["partition"]), str(r["kind"]))
        ranges[key].append((int(r["first_offset"]), int(r["last_offset"])))
    for g in wanted:
        acked = ranges[(g.minute, g.program, g.partition, "acked")]
        g.offsets = uncovered(acked, ranges[(g.minute, g.program, g.partition, "stored")]) \
            or _merged(acked)


def verify(store: Store, since: datetime, until: datetime, committed: dict[int, int] | None,
           starts: dict[int, datetime] | None = None, program: str | None = None,
           ends: dict[int, int] | None = None) -> Report:
    report = compare(read_cells(store, since, until, program), committed, starts,
                     since=since, until=until, ends=ends)
    locate(store, report.gaps)
    return report


def window(settle_s: float, minutes: int, now: datetime) -> tuple[datetime, datetime]:
    """The default window: ``minutes`` whole minutes ending ``settle_s`` before ``now``."""
    until = (now - timedelta(seconds=settle_s)).replace(second=0, microsecond=0)
    return until - timedelta(minutes=minutes), until
