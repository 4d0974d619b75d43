"""RowWriter against a fake store: retry while ClickHouse is down, isolate refused rows."""

from __future__ import annotations

from services.sink.write import RowWriter


class FakeStore:
    def __init__(self, down_for: int = 0, refuse: frozenset[bytes] = frozenset(),
                 refusing_inserts_for: int = 0) -> None:
        self.down_for = down_for
        self.refusing_inserts_for = refusing_inserts_for  # answers pings all the while
        self.refuse = refuse
        self.rows: list[bytes] = []
        self.inserts = 0

    def insert_json_rows(self, table: str, rows: bytes) -> None:
        self.inserts += 1
        if self.down_for > 0:
            raise ConnectionError("connection refused")
        if self.refusing_inserts_for > 0:
            self.refusing_inserts_for -= 1
            raise RuntimeError("Code: 252. DB::Exception: Too many parts (300). Merges are "
                               "processing significantly slower than inserts")
        lines = rows.split(b"\n")
        if any(line in self.refuse for line in lines):
            raise ValueError("Code: 27. DB::Exception: Cannot parse input: expected '{'")
        self.rows.extend(lines)

    def ping(self) -> bool:
        """Each failed ping brings ClickHouse one step closer to coming back."""
        if self.down_for > 0:
            self.down_for -= 1
            return False
        return True


def test_happy_path_is_one_insert() -> None:
    store = FakeStore()
    written = RowWriter(store, "events", 0.01).write([b"a\nb", b"c"], lambda i, r, why: None)  # type: ignore[arg-type]
    assert written == 3 and store.rows == [b"a", b"b", b"c"] and store.inserts == 1


def test_retries_while_clickhouse_is_down_and_loses_nothing() -> None:
    store = FakeStore(down_for=3)
    rejected: list[int] = []
    written = RowWriter(store, "events", 0.01).write([b"a", b"b"], lambda i, r, why: rejected.append(i))  # type: ignore[arg-type]
    assert written == 2 and store.rows == [b"a", b"b"] and rejected == []
    assert store.inserts == 4


def test_inserts_refused_for_the_servers_own_reasons_are_retried_not_dead_lettered() -> None:
    store = FakeStore(refusing_inserts_for=4)  # too many parts, pings fine all along
    rejected: list[int] = []
    written = RowWriter(store, "events", 0.01).write([b"a", b"b"], lambda i, r, why: rejected.append(i))  # type: ignore[arg-type]
    assert written == 2 and store.rows == [b"a", b"b"] and rejected == []
    assert store.inserts == 5


def test_refused_rows_are_isolated_and_the_rest_written() -> None:
    rows = [b"r%d" % i for i in range(10)]
    store = FakeStore(refuse=frozenset({b"r3", b"r7"}))
    rejected: list[tuple[int, bytes, str]] = []
    written = RowWriter(store, "events", 0.01).write(rows, lambda i, r, why: rejected.append((i, r, why)))  # type: ignore[arg-type]
    assert written == 8
    assert [(i, r) for i, r, _ in rejected] == [(3, b"r3"), (7, b"r7")]
    assert "Cannot parse input" in rejected[0][2]
    assert sorted(store.rows) == sorted(r for r in rows if r not in {b"r3", b"r7"})


def test_a_refused_row_inside_a_message_is_isolated_and_named_with_its_message() -> None:
    chunks = [b"a\nb", b"c\nbad\nd", b"e"]  # three messages of 2, 3 and 1 rows
    store = FakeStore(refuse=frozenset({b"bad"}))
    rejected: list[tuple[int, bytes]] = []
    written = RowWriter(store, "events", 0.01).write(chunks, lambda i, r, why: rejected.append((i, r)))  # type: ignore[arg-type]
    assert written == 5 and rejected == [(1, b"bad")]
    assert sorted(store.rows) == [b"a", b"b", b"c", b"d", b"e"]
