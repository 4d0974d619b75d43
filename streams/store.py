"""The agents' local store of the ``user-state`` table (one RocksDB per changelog
partition, in a worker's slot: streams.slots): how the agent reads and writes it without
Faust's per-write changelog path. The store is a cache of the changelog topic, which stays
the source of truth: each partition's database keeps the offset of the last changelog
record it holds, and Faust's recovery reads the changelog only from there (see
:class:`LocalStates`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from services.shared.settings import Settings

MIB = 1024 * 1024


def worker_rocksdb_options(settings: Settings) -> Any:
    """RocksDB options for every partition database of this worker, within one memory budget
    (``SLUICE_AGENTS_ROCKSDB_MEMORY_MB``): one block cache for them all, and their memtables
    charged to it. Faust's defaults are per database (one per partition): 3 x 64 MiB
    memtables and a 2 GiB block cache each, so a worker's memory would grow with the
    partitions it holds."""
    import rocksdict
    from faust.stores.rocksdb import RocksDBOptions

    budget = settings.agents_rocksdb_memory_mb * MIB
    cache = rocksdict.Cache(budget)
    memtables = rocksdict.WriteBufferManager.new_write_buffer_manager_with_cache(
        budget // 2, False, cache)

    class SharedBudget(RocksDBOptions):
        def as_options(self) -> Any:
            options = super().as_options()  # Faust's, with a table factory of its own cache:
            table = rocksdict.BlockBasedOptions()  # replaced by one on the shared cache
            table.set_bloom_filter(self.bloom_filter_size, True)
            table.set_block_cache(cache)
            table.set_index_type(rocksdict.BlockBasedIndexType.binary_search())
            options.set_block_based_table_factory(table)
            options.set_write_buffer_manager(memtables)
            return options

    options = SharedBudget(write_buffer_size=max(MIB, min(8 * MIB, budget // 8)),
                           max_write_buffer_number=2, block_cache_size=MIB,
                           use_rocksdict=True)
    options.cache, options.memtables = cache, memtables  # type: ignore[attr-defined]
    return options


COUNT_KEY = b"__sluice\0users__"  # next to Faust's offset key: the users a partition holds


class LocalStates:
    """The agent's access to the ``user-state`` table's local store, by changelog partition
    (= the source partition of the user's events).

    Writes land only after the changelog acked them (:meth:`commit`): a store that ran ahead
    of the changelog would, after a crash, skip the replayed events as applied and never
    publish their state. Each partition's records, its user count and the changelog offset
    of the last of them go in one RocksDB write batch, so the persisted offset (Faust's
    ``offset_key``, from which its recovery reads the changelog) never claims a record the
    store does not hold. Faust's recovery and standby writes (``apply_changelog_batch``)
    are replaced by the same kind of batch. A record read again from the changelog on
    recovery is written once more: harmless.

    With ``memory://`` (``SLUICE_AGENTS_STORE=memory``) the table is the store's dict and no
    offset is kept: a restarted worker reads the whole changelog, as Faust does."""

    def __init__(self, table: Any, settings: Settings) -> None:
        self.table = table
        self.store = table.data  # Faust's store: faust.stores.rocksdb.Store or memory.Store
        self.on_disk = settings.agents_store == "rocksdb"
        # partition -> a database Faust let go of: a partition this worker lost at the last
        # assignment, or every one when Faust stopped the table (see _keep_lost_copies)
        self.kept: dict[int, Any] = {}
        if self.on_disk:
            import rocksdict

            # before any partition's database opens (on assignment)
            self.store.rocksdb_options = worker_rocksdb_options(settings)
            self._write_batch = lambda: rocksdict.WriteBatch(raw_mode=True)
            self._offset_key: bytes = self.store.offset_key
            self.store.apply_changelog_batch = self._apply_changelog_batch
            self._keep_lost_copies()

    def _db(self, partition: int) -> Any:
        # Faust's own per-partition handle (opened on assignment, or now); private API of
        # faust.stores.rocksdb.Store, pinned by faust-streaming<0.16 in pyproject.toml
        return self.store._db_for_partition(partition)

    def _keep_lost_copies(self) -> None:
        """Faust drops (without closing) the database of a partition it loses at an
        assignment, and every one when it stops; keep the handles instead, for reads until
        the new owner serves (:meth:`copy_offset`), and give one back to Faust if its
        partition comes back (a second handle on the same files would wait for the first's
        lock)."""
        store = self.store
        revoke, open_for_partition = store.revoke_partitions, store._open_for_partition

        def revoke_partitions(table: Any, tps: Any) -> None:
            self.kept = {tp.partition: db for tp in tps
                         if tp.topic in table.changelog_topic.topics
                         and (db := store._dbs.get(tp.partition)) is not None}
            revoke(table, tps)

        def reopen(partition: int) -> Any:
            db = self.kept.pop(partition, None)
            return db if db is not None else open_for_partition(partition)

        store.revoke_partitions = revoke_partitions
        store._open_for_partition = reopen
        stop = store.stop

        async def keep_then_stop() -> None:
            # a stopping worker still answers reads of what it served (streams.handover)
            # after Faust stopped the table, which drops every database
            self.kept.update(store._dbs)
            await stop()

        store.stop = keep_then_stop

    def copy_offset(self, partition: int) -> int | None:
        """The changelog offset of the last record this worker's copy of ``partition``
        holds (-1: none yet): its active store, a standby's, or the one kept when the
        partition moved away; None without a copy (or with the memory store)."""
        db = self._copy(partition)
        if db is None:
            return None
        raw = db.get(self._offset_key)
        return int(raw) if raw is not None else -1

    def copy_get(self, partition: int, key: bytes) -> bytes | None:
        db = self._copy(partition)
        return db.get(key) if db is not None else None

    def _copy(self, partition: int) -> Any:
        if not self.on_disk:
            return None
        db = self.store._dbs.get(partition)
        return db if db is not None else self.kept.get(partition)

    def get(self, partition: int, key: bytes) -> bytes | None:
        if self.on_disk:
            value: bytes | None = self._db(partition).get(key)
            return value
        return self.store.get(key)  # type: ignore[no-any-return]

    def commit(self, written: Sequence[tuple[int, bytes, bytes | None, bool]],
               positions: Sequence[tuple[int, int]]) -> None:
        """``written``: (partition, key, value, whether the user is new) as published, a
        value None being a tombstone (an erased user: the key leaves the store);
        ``positions``: where the changelog put each, (partition, offset), in that order."""
        if not self.on_disk:
            for _, key, value, _ in written:
                if value is None:
                    self.store.pop(key, None)
                else:
                    self.store[key] = value
            return
        batches: dict[int, Any] = defaultdict(self._write_batch)
        last: dict[int, int] = {}
        added: dict[int, int] = defaultdict(int)
        for (_, key, value, new), (partition, offset) in zip(written, positions, strict=True):
            if value is None:
                added[partition] -= self._db(partition).get(key) is not None
                batches[partition].delete(key)
            else:
                batches[partition].put(key, value)
            last[partition] = max(offset, last.get(partition, -1))
            added[partition] += new
        self._write(batches, last, added)

    def _apply_changelog_batch(self, batch: Iterable[Any], to_key: Any = None,
                               to_value: Any = None) -> None:
        """Faust's recovery and standby path."""
        self.apply_changelog((event.message.partition, event.message.offset, event.message.key,
                              event.message.value) for event in batch)

    def apply_changelog(self, records: Iterable[tuple[int, int, bytes, bytes | None]]) -> None:
        """Changelog records (partition, offset, key, value) -> the store, each partition's
        in one batch with its user count and offset."""
        batches: dict[int, Any] = defaultdict(self._write_batch)
        last: dict[int, int] = {}
        added: dict[int, int] = defaultdict(int)
        fresh: dict[int, set[bytes]] = defaultdict(set)  # new keys of this batch
        for partition, offset, key, value in records:
            last[partition] = max(offset, last.get(partition, -1))
            known = key in fresh[partition] or self._db(partition).get(key) is not None
            if value is None:  # a tombstone: an erased user (streams.update)
                batches[partition].delete(key)
                added[partition] -= known
                fresh[partition].discard(key)
            else:
                batches[partition].put(key, value)
                if not known:
                    added[partition] += 1
                    fresh[partition].add(key)
        self._write(batches, last, added)

    def _write(self, batches: dict[int, Any], last: dict[int, int],
               added: dict[int, int]) -> None:
        for partition, batch in batches.items():
            if added[partition]:
                count = self._count(partition) + added[partition]
                batch.put(COUNT_KEY, str(count).encode())
            batch.put(self._offset_key, str(last[partition]).encode())
            self._db(partition).write(batch)

    def _count(self, partition: int) -> int:
        raw = self._db(partition).get(COUNT_KEY)
        return int(raw) if raw is not None else 0

    def users(self, partitions: Iterable[int]) -> int:
        """User records held for ``partitions``."""
        if not self.on_disk:
            return len(self.store)
        return sum(self._count(partition) for partition in partitions
                   if partition in self.store._dbs)
