"""The sluice command's own decisions, without a broker."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from services import cli


def test_rebuild_state_refuses_while_agents_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("services.shared.kafka.ensure_topics", lambda settings: None)
    monkeypatch.setattr("streams.rebuild.running_agents", lambda settings: 2)
    opened = []
    monkeypatch.setattr("services.shared.clickhouse.Store", lambda settings: opened.append(1))
    result = CliRunner().invoke(cli.app, ["rebuild-state"])
    assert result.exit_code == 2
    assert "2 agent workers are running" in result.output
    assert opened == []  # nothing was rebuilt
