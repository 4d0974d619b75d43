"""`sluice status`: lag per partition of both groups, recent rates and the DLQ count."""

from __future__ import annotations

import subprocess
import sys

from fastapi.testclient import TestClient
from rich.console import Console

from services.shared.settings import Settings
from services.status import gather, render
from tests.integration.conftest import env_for, event, wait_for
from tests.integration.test_failures import produce_raw
from tests.integration.test_metrics import lags, parse

H = {"program-id": "shop"}


def test_status_reads_lag_rates_and_dead_letters(settings: Settings, client: TestClient) -> None:
    assert client.post("/events", json={"events": [event(f"u{i}") for i in range(10)]},
                       headers=H).status_code == 200
    produce_raw(settings, [(b"poison", b"{not json")])
    # the sink stored and committed everything: its lag is 0, the DLQ holds the poison
    wait_for(lambda: set(lags(parse(client.get("/metrics").text), settings.sink_group,
                              settings.topic_events).values()) == {0}, timeout_s=30)
    calls = []

    def scrape(url: str) -> str | None:  # the gateway (with the sink, as in sluice up) only
        calls.append(url)
        if len(calls) == 4:  # between the two scrapes: 20 more events arrive
            assert client.post("/events", json={"events": [event("v")] * 20},
                               headers=H).status_code == 200
        return client.get("/metrics").text if url == "gateway" else None

    status = gather(settings, {"gateway": "gateway", "sink": "sink", "agents": "agents"},
                    interval_s=0.5, scrape=scrape)
    assert len(calls) == 6
    assert {r.partition for r in status.lag[settings.sink_group]
            if r.topic == settings.topic_events} == set(range(4))
    assert sum(r.lag for r in status.lag[settings.sink_group]) == 0
    agents = status.lag[settings.agents_app_id]  # no agents run: they lag behind everything
    assert {r.partition for r in agents} == set(range(4)) and sum(r.lag for r in agents) >= 1
    assert all(r.committed == -1 for r in agents)
    assert status.dlq_messages == 1
    accepted = status.rates["events accepted/s"]
    assert accepted is not None and 0 < accepted <= 20 / 0.5
    assert status.rates["agent events/s"] is None  # did not answer
    console = Console(record=True, width=160)
    console.print(render(status))
    text = console.export_text()
    assert settings.sink_group in text and settings.agents_app_id in text
    assert "DLQ topic holds (messages)" in text


def test_sluice_status_command_prints_the_groups(settings: Settings, client: TestClient) -> None:
    assert client.post("/events", json={"events": [event()]}, headers=H).status_code == 200
    done = subprocess.run([sys.executable, "-m", "services.cli", "status", "--interval", "0.2"],
                          env=env_for(settings) | {"COLUMNS": "160"}, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert settings.sink_group in done.stdout and settings.agents_app_id in done.stdout
    assert "events accepted/s" in done.stdout
