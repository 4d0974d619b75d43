"""The sluice command's own decisions, without a broker."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from services import cli
from services.shared.migrations import ON_CLUSTER, TOPOLOGIES, Target, ledger_ddl, load, rendered
from services.shared.settings import Settings


def test_rebuild_state_refuses_while_agents_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("services.shared.kafka.ensure_topics", lambda settings: None)
    monkeypatch.setattr("streams.rebuild.running_agents", lambda settings: 2)
    opened = []
    monkeypatch.setattr("services.shared.clickhouse.Store", lambda settings: opened.append(1))
    result = CliRunner().invoke(cli.app, ["rebuild-state"])
    assert result.exit_code == 2
    assert "2 agent workers are running" in result.output
    assert opened == []  # nothing was rebuilt


def test_a_held_agents_worker_is_told_on_its_input(monkeypatch: pytest.MonkeyPatch) -> None:
    """`sluice up` starts the next worker during a roll held before its recovery: the worker
    reads its word on stdin (streams.recovery.recover_when_told; tested with a real worker in
    tests/integration/test_broker_roll_carry.py); a worker started by hand is not held."""
    seen: list[Any] = []
    monkeypatch.setattr("streams.worker.run_worker",
                        lambda settings, loglevel, told=None: seen.append(told))
    assert CliRunner().invoke(cli.app, ["agents", "--recover-on-stdin"], input="go\n").exit_code == 0
    assert CliRunner().invoke(cli.app, ["agents"]).exit_code == 0
    assert len(seen) == 2 and seen[0] is not None and seen[0].readline() == "go\n"
    assert seen[1] is None


# -- sluice migrate ---------------------------------------------------------------------

def _statements(script: str) -> list[str]:
    """The statements of a dry run: comment lines out, then up to each ';' at a line's end."""
    body = "\n".join(line for line in script.splitlines() if not line.startswith("--"))
    parts = re.split(r";\n", body.strip() + "\n")
    assert parts[-1].strip() == "", "text after the last ';'"
    return [p.strip() for p in parts[:-1]]


def _no_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("a dry run connected to ClickHouse")

    monkeypatch.setattr("services.shared.clickhouse.connect", refuse)
    monkeypatch.setattr("clickhouse_connect.get_client", refuse)
    monkeypatch.setenv("SLUICE_DATA_DIR", str(tmp_path / "data"))
    for name in ("SLUICE_CLICKHOUSE_URL", "SLUICE_CLICKHOUSE_TOPOLOGY", "SLUICE_CLICKHOUSE_CLUSTER"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_migrate_dry_run_prints_every_statement_and_touches_nothing(
        topology: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _no_server(monkeypatch, tmp_path)
    args = ["migrate", "--dry-run", "--topology", topology]
    if topology in ON_CLUSTER:
        args += ["--cluster", "prod"]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    target = Target(topology, "prod" if topology in ON_CLUSTER else None)  # type: ignore[arg-type]
    found = load(Settings().ddl_dir)
    expected = [ledger_ddl(target)] + [s for m in found for s in rendered(m, target)]
    assert _statements(result.stdout) == expected
    assert all(f"-- {m.name} " in result.stdout for m in found)
    assert ("ON CLUSTER 'prod'" in result.stdout) == (topology in ON_CLUSTER)
    assert not (tmp_path / "data").exists()  # not even the embedded directory


def test_migrate_dry_run_takes_the_topology_from_settings(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _no_server(monkeypatch, tmp_path)
    monkeypatch.setenv("SLUICE_CLICKHOUSE_TOPOLOGY", "sharded")
    monkeypatch.setenv("SLUICE_CLICKHOUSE_CLUSTER", "analytics")
    result = CliRunner().invoke(cli.app, ["migrate", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "Distributed('analytics', currentDatabase(), 'events_local'" in result.stdout
    # --topology single drops the environment's cluster, which belongs to another topology
    result = CliRunner().invoke(cli.app, ["migrate", "--dry-run", "--topology", "single"])
    assert result.exit_code == 0, result.output
    assert "ON CLUSTER" not in result.stdout and "ENGINE = ReplacingMergeTree\n" in result.stdout


@pytest.mark.parametrize(("args", "error"), [
    (["--topology", "sharded"], "needs SLUICE_CLICKHOUSE_CLUSTER"),
    (["--topology", "galaxy"], "Input should be 'single', 'replicated', 'sharded' or 'cloud'"),
])
def test_migrate_refuses_an_incomplete_topology(args: list[str], error: str,
                                                monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _no_server(monkeypatch, tmp_path)
    result = CliRunner().invoke(cli.app, ["migrate", "--dry-run", *args])
    assert result.exit_code == 2
    assert error in result.output


def test_migrate_applies_what_is_missing_on_the_embedded_store(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SLUICE_DATA_DIR", str(tmp_path / "data"))
    for name in ("SLUICE_CLICKHOUSE_URL", "SLUICE_CLICKHOUSE_TOPOLOGY", "SLUICE_CLICKHOUSE_CLUSTER"):
        monkeypatch.delenv(name, raising=False)
    names = [m.name for m in load(Settings().ddl_dir)]
    first = CliRunner().invoke(cli.app, ["migrate"])
    assert first.exit_code == 0, first.output
    assert [line.removeprefix("applied ") for line in first.stdout.splitlines()[:-1]] == names
    again = CliRunner().invoke(cli.app, ["migrate"])
    assert again.exit_code == 0, again.output
    assert again.stdout.splitlines() == [
        f"ClickHouse schema (single) is up to date: {len(names)} migrations, 0 applied now"]


# -- sluice dlq / replay ----------------------------------------------------------------

def test_dlq_and_replay_refuse_a_time_that_is_not_iso() -> None:
    for command in ("dlq", "replay"):
        result = CliRunner().invoke(cli.app, [command, "--since", "yesterday"])
        assert result.exit_code == 2
        assert "ISO 8601" in result.output


def test_dlq_and_replay_end_in_one_line_when_the_broker_is_unreachable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from services.sink.letters import BrokerError

    def unreachable(*_: object, **__: object) -> None:
        raise BrokerError("broker 127.0.0.1:1 unreachable: timed out")

    monkeypatch.setattr("services.sink.letters.read_all", unreachable)
    monkeypatch.setattr("services.sink.replay.read_all", unreachable)
    monkeypatch.setattr("services.sink.replay.ensure_marker_topic", lambda settings: None)
    for args in (["dlq"], ["replay"], ["replay", "--dry-run"]):
        result = CliRunner().invoke(cli.app, args)
        assert result.exit_code == 1, result.output
        assert result.output.strip().splitlines() == [
            f"sluice {args[0]}: broker 127.0.0.1:1 unreachable: timed out"]
