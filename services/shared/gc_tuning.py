"""Python's cyclic garbage collector, tuned for a process that turns requests into
short-lived containers; and giving freed heap back to the system.

A 1000-event request makes some 2,000 tracked objects (a dict and a list per event), so
with CPython's default young-generation threshold (700) the collector ran three times a
request, and every few requests a full collection walked the whole heap: FastAPI's and
pydantic's models, the views' user records. Measured on the gateway (2 cores, hey -c 4):
p99 ack latency at full load 148-163 ms with the defaults, 70-81 ms after ``freeze`` and a
threshold of 50,000; at half load p99 105-112 ms -> 27-36 ms; throughput 78-83k -> 96-103k
events/s. Nearly all of those objects die by reference counting anyway; the collector
only has to find cycles, and there are few.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from functools import cache
from typing import Any


def tune_gc(young_threshold: int) -> None:
    """Move everything alive now (imports, app, settings) out of the collector's sight and
    collect the young generation every ``young_threshold`` allocations; 0 keeps Python's
    defaults. Called again (`sluice up` after each roll of its broker), it first gives the
    collector back what it froze before: a frozen object that became garbage in a cycle is
    never collected (each roll left its old gateway app, ~2,000 objects, frozen for good)."""
    if young_threshold <= 0:
        return
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(young_threshold, older, oldest)


@cache
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def release_free_heap() -> None:
    """Return the heap's free pages to the system (glibc's ``malloc_trim``; a no-op
    elsewhere). After a large batch is applied its objects are freed, but glibc keeps the
    pages: measured on an agents worker applying a 1M-user backlog, RSS stayed at the
    batch's high-water mark (269 MiB) without it, 202 MiB with it."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)


def limit_malloc_arenas(arenas: int) -> bool:
    """At most ``arenas`` glibc malloc arenas for the threads started from now on (False
    where this is not glibc, or it refused). glibc gives threads arenas of their own, up
    to 8 per core, and keeps what is freed in each: `sluice up` starts a generation's
    threads anew at every roll of its broker (producers, consumers, the sink), and grew
    ~30 MiB a roll that way, 467 -> 671 MiB over 7 rolls in 5 minutes at 20k events/s;
    with 2 arenas 461 -> 519 MiB, flat after the first minute (docs/benchmarks.md, 13)."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt") or arenas <= 0:
        return False
    return bool(libc.mallopt(M_ARENA_MAX, arenas))
