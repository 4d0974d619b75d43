"""rebuild's ClickHouse rows -> user records, without ClickHouse."""

from __future__ import annotations

from contextlib import contextmanager

import pytest

from services.shared.ranking import ModelConfigs
from services.shared.settings import Settings
from streams.rebuild import _users

HOUR_US = 3600 * 10**6


class RowsStore:
    def __init__(self, rows: list[tuple]) -> None:
        self.rows = rows

    @contextmanager
    def stream_rows(self, sql: str):  # type: ignore[no-untyped-def]
        assert "ORDER BY program_id, user_id, event_timestamp" in sql
        yield iter([self.rows])


def row(user: str, hours: float, session: bool, labels: list[str]) -> tuple:
    return ("p", user, int(hours * HOUR_US), "view", labels, [], f"a{hours}", session)


def test_rebuild_restores_weights_events_and_sessions_per_user() -> None:
    rows = [
        row("u1", 0.0, True, ["x"]),
        row("u1", 0.25, True, ["x"]),  # 15 min later: same session
        row("u1", 2.0, True, ["y"]),  # 105 min later: a second session
        row("u1", 3.0, False, ["y"]),  # not session activity
        row("u2", 1.0, False, ["z"]),
    ]
    advanced: list[int] = []
    u1, u2 = _users(RowsStore(rows), ModelConfigs(Settings()), advanced.append)  # type: ignore[arg-type]
    assert (u1.user_id, u1.events, u1.sessions) == ("u1", 4, 2)
    assert u1.session_started == pytest.approx(2 * 3600) and u1.last_seen == pytest.approx(2 * 3600)
    assert set(u1.state.weights) == {"x", "y"}
    assert (u2.user_id, u2.events, u2.sessions, u2.last_seen) == ("u2", 1, 0, None)
    assert advanced == [5]
