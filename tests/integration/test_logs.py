"""SLUICE_LOG_FORMAT=json: every line a role writes is one JSON object."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from services.shared.broker import free_port
from services.shared.kafka import ensure_topics
from services.shared.settings import Settings
from tests.integration.conftest import env_for, wait_for


def records(log: Path) -> list[dict[str, object]]:
    """Every line of ``log`` as a JSON object (fails on the first line that is not one)."""
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}")
        assert isinstance(record, dict) and {"time", "level", "logger", "message"} <= set(record)
        parsed.append(record)
    return parsed


def start(role: list[str], settings: Settings, log: Path, **env: str) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "services.cli", *role],
            env=env_for(settings) | {"SLUICE_LOG_FORMAT": "json"} | env,
            stdout=out, stderr=subprocess.STDOUT)


def test_every_role_logs_one_json_object_per_line(settings: Settings, tmp_path: Path) -> None:
    ensure_topics(settings)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = str(taken.getsockname()[1])
    try:
        # the gateway on a taken port: uvicorn's own error, through Sluice's formatter
        gateway = start(["gateway", "--workers", "2"], settings, tmp_path / "gateway.log",
                        SLUICE_HTTP_PORT=port)
        assert gateway.wait(60) != 0
        # the sink, its metrics port taken: it says so and goes on
        sink = start(["sink"], settings, tmp_path / "sink.log", SLUICE_SINK_METRICS_PORT=port)
        wait_for(lambda: any(r["level"] == "ERROR" for r in records(tmp_path / "sink.log")),
                 timeout_s=60)
        assert sink.poll() is None  # went on
        sink.terminate()
        sink.wait(60)
        # the agents at info: Faust's own lines too, and no banner on stdout
        agents = start(["agents", "--loglevel", "info"], settings, tmp_path / "agents.log",
                       SLUICE_AGENTS_WEB_PORT=str(free_port()))
        try:
            wait_for(lambda: any(str(r["message"]).endswith("Ready")
                                 for r in records(tmp_path / "agents.log")), timeout_s=60)
        finally:
            agents.terminate()
            agents.wait(60)
    finally:
        taken.close()
    gateway_lines = records(tmp_path / "gateway.log")
    assert any(r["level"] == "ERROR" and "address already in use" in str(r["message"]).lower()
               for r in gateway_lines), gateway_lines
    [error] = [r for r in records(tmp_path / "sink.log") if r["level"] == "ERROR"]
    assert error["logger"] == "sluice.sink" and "SLUICE_SINK_METRICS_PORT" in str(error["message"])
    agent_lines = records(tmp_path / "agents.log")
    assert len(agent_lines) >= 10
    assert any(str(r["logger"]).startswith("faust") for r in agent_lines)


def test_sluice_up_logs_json_only(tmp_path: Path) -> None:
    """The all-in-one too: its banner and progress bar become log records, uvicorn's and
    librdkafka's lines go through the same formatter."""
    import httpx

    from tests.integration.test_supervisor import PORTS, ready, up_env

    ports = {name: free_port() for name in PORTS}
    log = tmp_path / "up.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "services.cli", "up"],
                                env=up_env(tmp_path / "data", ports) | {"SLUICE_LOG_FORMAT": "json"},
                                stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{ports['SLUICE_HTTP_PORT']}"
    try:
        wait_for(lambda: ready(base) or proc.poll() is not None, timeout_s=120)
        assert proc.poll() is None, log.read_text()[-2000:]
        posted = httpx.post(f"{base}/events?wait=stored", headers={"program-id": "p"}, timeout=30,
                            json={"events": [{"user_id": "u", "event_timestamp": "2026-11-20T10:00:00Z",
                                              "event_type": "view", "asset_id": "a", "labels": []}]})
        assert posted.status_code == 200, posted.text
    finally:
        proc.terminate()
        assert proc.wait(90) == 0
    messages = [str(r["message"]) for r in records(log)]
    assert any(m.startswith("sluice up: gateway " + base) for m in messages), messages
    assert "stopped; the sink wrote 1 rows this run" in messages
