"""Where the agents' local stores of the ``user-state`` table live, and what outlives a
worker of them.

Layout: ``SLUICE_DATA_DIR/agents/<app id>/<slot>/`` is one worker's Faust data directory
(Faust adds ``v1/tables/user-state-<partition>.db``, one RocksDB per changelog partition).
A worker claims the first slot no live worker holds (an exclusive ``flock`` kept for its
lifetime), so several workers can share one data directory and a restarted worker finds
its own store again. The store is a cache of the changelog topic, which stays the source of
truth (streams.store.LocalStates).
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from services.shared.settings import Settings

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


def app_dir(settings: Settings) -> Path:
    """Every slot of this app id (the changelog topic is named after it: another app id
    is another table, whose offsets mean nothing here)."""
    return settings.data_dir / "agents" / settings.agents_app_id


class Slot:
    """A worker's claim on one data directory under :func:`app_dir`; released when the
    process exits (the kernel drops the lock, even on SIGKILL)."""

    def __init__(self, path: Path, lock: BinaryIO) -> None:
        self.path, self._lock = path, lock

    @classmethod
    def claim(cls, settings: Settings, fresh: bool = False) -> Slot:
        """The first slot no live worker holds; ``fresh``: the first that does not exist
        yet (a roll's next worker: the slot its predecessor left, which the roll reads,
        holds the previous broker's offsets)."""
        root = app_dir(settings)
        root.mkdir(parents=True, exist_ok=True)
        n = 0
        while True:
            path = root / str(n)
            n += 1
            try:
                path.mkdir(exist_ok=not fresh)
            except FileExistsError:
                continue
            lock = open(path / LOCK_NAME, "ab")  # noqa: SIM115 - held for the process' life
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                continue
            if not path.is_dir():  # a reset removed it between the mkdir and the lock
                lock.close()
                continue
            return cls(path, lock)

    def release(self) -> None:
        self._lock.close()


@contextmanager
def unheld_slots(settings: Settings) -> Iterator[list[Path]]:
    """The slots of this app id that no live worker holds, locked until the block ends (no
    worker claims one meanwhile)."""
    root = app_dir(settings)
    locks: list[BinaryIO] = []
    free: list[Path] = []
    try:
        for path in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
            lock = open(path / LOCK_NAME, "ab")  # noqa: SIM115 - closed below
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                log.info("agents store %s is in use by a running worker", path)
                continue
            locks.append(lock)
            free.append(path)
        yield free
    finally:
        for held in locks:
            held.close()


def reset_local_state(settings: Settings) -> int:
    """Delete the local stores of this app id that no live worker holds; returns how many.
    For a changelog that started over (the embedded broker keeps nothing across restarts):
    a store's offsets would point into a log that no longer exists."""
    with unheld_slots(settings) as free:
        for path in free:
            shutil.rmtree(path)
        return len(free)


def store_bytes(settings: Settings) -> int:
    """Bytes on disk under :func:`app_dir` (every slot)."""
    total = 0
    for dirpath, _, files in os.walk(app_dir(settings)):
        for name in files:
            try:
                total += os.stat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass  # RocksDB removed it meanwhile (compaction)
    return total


TABLE = "user-state"  # streams.app's table: Faust keeps it in v1/tables/user-state-<p>.db


def stored_users(settings: Settings) -> dict[bytes, tuple[int, bytes]] | None:
    """Each user's record (key -> (partition, value)) as the store of the one slot that no
    live worker holds has it: in a roll of the embedded broker, the old worker's, stopped
    once it had caught up (its store then holds each user's newest changelog record, an
    erased user none). 1M users: ~1 s, where the changelog's history took ~17 s. None when
    no single such slot has tables (the memory store, a worker that never ran)."""
    import rocksdict
    from faust.stores.rocksdb import Store

    from streams.store import COUNT_KEY

    with unheld_slots(settings) as free:
        left = [tables for path in free
                if (tables := sorted((path / "v1" / "tables").glob(f"{TABLE}-*.db")))]
        if len(left) != 1:
            return None
        skip = {Store.offset_key, COUNT_KEY}
        users: dict[bytes, tuple[int, bytes]] = {}
        for table in left[0]:
            partition = int(table.name.removeprefix(f"{TABLE}-").removesuffix(".db"))
            db = rocksdict.Rdict(str(table), rocksdict.Options(raw_mode=True),
                                 access_type=rocksdict.AccessType.read_only())
            try:
                for key, value in db.items():
                    if isinstance(key, bytes) and key not in skip:  # raw mode: bytes
                        users[key] = (partition, value)
            finally:
                db.close()
        return users
