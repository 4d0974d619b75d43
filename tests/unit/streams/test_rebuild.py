"""rebuild's ClickHouse rows -> user records, without ClickHouse."""

from __future__ import annotations

import time
import uuid
from contextlib import contextmanager

import pytest

from services.shared.ranking import ModelConfigs
from services.shared.settings import Settings
from streams.rebuild import _users
from streams.update import Dedup

HOUR_US = 3600 * 10**6


class RowsStore:
    def __init__(self, rows: list[tuple]) -> None:
        self.rows = rows

    @contextmanager
    def stream_rows(self, sql: str):  # type: ignore[no-untyped-def]
        assert "ORDER BY program_id, user_id, event_timestamp" in sql
        yield iter([self.rows])


def row(user: str, hours: float, session: bool, labels: list[str],
        client_id: str | None = None, received: int = 0) -> tuple:
    event_id = str(uuid.uuid5(uuid.NAMESPACE_URL, client_id)) if client_id else str(uuid.uuid4())
    return ("p", user, int(hours * HOUR_US), "view", labels, [], f"a{hours}", session,
            client_id is not None, event_id, received)


def test_rebuild_restores_weights_events_and_sessions_per_user() -> None:
    rows = [
        row("u1", 0.0, True, ["x"]),
        row("u1", 0.25, True, ["x"]),  # 15 min later: same session
        row("u1", 2.0, True, ["y"]),  # 105 min later: a second session
        row("u1", 3.0, False, ["y"]),  # not session activity
        row("u2", 1.0, False, ["z"]),
    ]
    advanced: list[int] = []
    u1, u2 = _users(RowsStore(rows), ModelConfigs(Settings()), advanced.append,  # type: ignore[arg-type]
                    Dedup())
    assert (u1.user_id, u1.events, u1.sessions) == ("u1", 4, 2)
    assert u1.session_started == pytest.approx(2 * 3600) and u1.last_seen == pytest.approx(2 * 3600)
    assert set(u1.state.weights) == {"x", "y"}
    assert (u2.user_id, u2.events, u2.sessions, u2.last_seen) == ("u2", 1, 0, None)
    assert advanced == [5]


def test_rebuild_counts_a_client_id_once_and_remembers_the_recent_ones() -> None:
    """Copies ClickHouse kept apart (a retry sent with another timestamp) count once, as
    live; the ids received within the window are carried, so a retry after the rebuild is
    still recognised; older ones are not."""
    now = int(time.time())
    rows = [
        row("u1", 0.0, False, ["x"], "e1", now - 100),
        row("u1", 0.5, False, ["x"], "e1", now - 90),  # the retry, stored as its own row
        row("u1", 1.0, False, ["y"], "e2", now - 2 * 86400),  # past the window
        row("u1", 2.0, False, ["z"]),
    ]
    [u1] = _users(RowsStore(rows), ModelConfigs(Settings()), lambda n: None,  # type: ignore[arg-type]
                  Dedup(window_s=86400))
    assert u1.events == 3 and set(u1.state.weights) == {"x", "y", "z"}
    assert len(u1.seen or {}) == 1  # e1 only
    assert u1.first_time(next(iter(u1.seen or {})), now, 86400, 1000) is False
