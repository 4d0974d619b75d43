"""tune_gc changes the process's collector: checked in a child process, so the test
session's own collector keeps Python's defaults."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import gc, json, sys
from services.shared.gc_tuning import tune_gc
from services.shared.settings import Settings
before = gc.get_threshold()
threshold = int(sys.argv[1]) if len(sys.argv) > 1 else Settings().gc_young_threshold
tune_gc(threshold)
print(json.dumps({"before": before, "after": gc.get_threshold(), "frozen": gc.get_freeze_count()}))
"""


def probe(*args: str) -> dict[str, list[int] | int]:
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                          check=True, cwd=".")
    return json.loads(done.stdout)


def test_default_setting_freezes_the_start_heap_and_raises_the_young_threshold() -> None:
    got = probe()
    assert got["after"] == [50_000, *got["before"][1:]]
    assert got["frozen"] > 1_000  # the imports (pydantic, settings) are out of the collector's way


def test_zero_keeps_pythons_defaults() -> None:
    got = probe("0")
    assert got["after"] == got["before"]
    assert got["frozen"] == 0


REFREEZE = """
import gc, weakref
from services.shared.gc_tuning import tune_gc
class Node: pass
node = Node(); node.me = node  # a cycle: only the collector frees it
gone = weakref.ref(node)
tune_gc(50_000)  # frozen with it
del node
tune_gc(50_000)  # as `sluice up` after a roll: what was frozen and is garbage now goes
print(gone() is None)
"""


def test_tuning_again_collects_what_the_last_freeze_kept_and_is_garbage_now() -> None:
    done = subprocess.run([sys.executable, "-c", REFREEZE], capture_output=True, text=True,
                          check=True, cwd=".")
    assert done.stdout.strip() == "True"


def test_the_gateway_role_tunes_its_process_but_create_app_alone_does_not() -> None:
    code = """
import gc, json
start = gc.get_threshold()[0]
from services.gateway.app import create_app
from services.shared.settings import Settings
create_app(Settings())
alone = gc.get_threshold()[0]
from services.gateway.main import app_from_env
app_from_env()
print(json.dumps([alone == start, gc.get_threshold()[0]]))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == [True, 50_000]


ARENAS = """
import ctypes, ctypes.util, sys, tempfile, threading
from services.shared.gc_tuning import limit_malloc_arenas
limited = limit_malloc_arenas(int(sys.argv[1]))
held, barrier = [], threading.Barrier(8)
def work():
    barrier.wait()  # all at once: contended, glibc hands out arenas
    held.extend(bytes(200_000 + i) for i in range(20))  # malloc'd, past Python's allocator
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.fopen.restype = ctypes.c_void_p
with tempfile.NamedTemporaryFile(suffix=".xml") as out:
    fp = libc.fopen(out.name.encode(), b"w")
    libc.malloc_info(0, ctypes.c_void_p(fp))
    libc.fclose(ctypes.c_void_p(fp))
    print(limited, open(out.name).read().count("<heap nr="))
"""


def arenas_after_threads(limit: int) -> tuple[bool, int]:
    done = subprocess.run([sys.executable, "-c", ARENAS, str(limit)], capture_output=True,
                          text=True, check=True, cwd=".")
    limited, heaps = done.stdout.split()
    return limited == "True", int(heaps)


def test_malloc_arenas_are_limited_for_the_threads_started_after() -> None:
    """`sluice up` keeps to SLUICE_MALLOC_ARENAS: each broker roll's new threads otherwise
    got arenas of their own, and what they freed stayed (~30 MiB a roll)."""
    assert arenas_after_threads(2) == (True, 2)
    limited, heaps = arenas_after_threads(0)  # glibc's default: up to 8 per core
    assert not limited and heaps > 2, heaps
