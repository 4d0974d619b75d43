"""Backpressure on the real stack (Tansu + chDB): a sink that stops consuming makes the
gateway refuse events once its lag passes SLUICE_MAX_LAG_EVENTS, in every dialect's shape,
and take them again by itself once the sink has caught up; every acked event is stored
once and no refused one at all."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from services.gateway.app import create_app
from services.shared.clickhouse import Store
from services.shared.settings import Settings
from tests.integration.conftest import count, event, running_sink, wait_for
from tests.integration.test_supervisor import sluice_up

H = {"program-id": "shop"}
BATCH = 100


def batch(n: int = BATCH) -> list[dict[str, object]]:
    return [event(f"u{i % 10}", event_id=str(uuid.uuid4())) for i in range(n)]


def posthog(client: TestClient) -> Any:
    return client.post("/compat/posthog/batch/", json={"api_key": "shop", "batch": [
        {"event": "view", "distinct_id": "ph", "uuid": str(uuid.uuid4())}]})


def segment(client: TestClient) -> Any:
    return client.post("/compat/segment/v1/batch", json={"writeKey": "shop", "batch": [
        {"type": "track", "event": "view", "userId": "sg", "messageId": str(uuid.uuid4())}]})


def test_a_stopped_sink_turns_the_gateway_away_until_it_catches_up(
        settings: Settings, store: Store) -> None:
    settings.max_lag_events = 500
    settings.backpressure_check_s = 0.1
    settings.queue_updates_default = True  # acked at the broker: no agents in this test
    acked = 0
    with TestClient(create_app(settings, store)) as client:
        with running_sink(settings, store):  # the sink's group commits: it runs
            assert client.post("/events", headers=H, json={"events": batch()}).status_code == 200
            acked += BATCH
            wait_for(lambda: count(store) == acked)
        # the sink is gone: its lag grows with every acked batch until the gateway refuses
        refused = None
        for _ in range(200):
            response = client.post("/events", headers=H, json={"events": batch()})
            if response.status_code != 200:
                refused = response
                break
            acked += BATCH
            time.sleep(0.02)
        assert refused is not None, f"never refused after {acked} events"
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert "behind" in refused.json()["detail"]
        assert acked >= 500  # not before the bound
        began = time.monotonic()
        late = client.post("/events?queue_updates=false", headers=H, json={"events": batch(1)})
        assert late.status_code == 503 and time.monotonic() - began < 2  # fails fast
        for answer in (posthog(client), segment(client)):  # their SDKs' "slow down"
            assert answer.status_code == 429 and answer.headers["retry-after"] == "1"
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["backpressure"].startswith("refusing events")
        assert "sluice_gateway_backpressure 1.0" in client.get("/metrics").text

        with running_sink(settings, store):  # the sink is back: the lag drains
            def taken() -> bool:
                return client.post("/events", headers=H, json={"events": batch(1)}).status_code == 200
            wait_for(taken, timeout_s=30, every_s=0.2)
            acked += 1
            assert client.get("/readyz").status_code == 200
            assert posthog(client).status_code == 200 and segment(client).status_code == 200
            acked += 2
            wait_for(lambda: count(store) >= acked, timeout_s=30)
            time.sleep(1)  # anything refused that was stored anyway would show now
            assert count(store) == acked


BROKER_MB = 48  # Tansu starts at ~20 MiB: refused from ~43 MiB, after ~100k plain events


def test_the_embedded_broker_bound_refuses_before_memory_runs_out(tmp_path: Path) -> None:
    # rolls off: the bound is what is left when the broker cannot be rolled over
    env = {"SLUICE_EMBEDDED_BROKER_MAX_MB": str(BROKER_MB), "SLUICE_BACKPRESSURE_CHECK_S": "0.1",
           "SLUICE_EMBEDDED_BROKER_ROLL_SHARE": "0",
           "SLUICE_KAFKA_COMPRESSION": "none", "SLUICE_QUEUE_UPDATES_DEFAULT": "true"}
    with sluice_up(tmp_path / "data", tmp_path / "up.log", env=env) as up:
        body = {"events": [event(f"u{i % 50}", properties={"pad": "x" * 200})
                           for i in range(1000)]}
        acked, refused = 0, None
        deadline = time.monotonic() + 120
        with httpx.Client(base_url=up.base, headers=H, timeout=30) as http:
            while refused is None and time.monotonic() < deadline:
                response = http.post("/events", json=body)
                if response.status_code == 200:
                    acked += 1000
                else:
                    refused = response
            assert refused is not None, f"never refused after {acked} events: {up.tail()}"
            assert refused.status_code == 503 and refused.headers["retry-after"]
            assert f"SLUICE_EMBEDDED_BROKER_MAX_MB={BROKER_MB}" in refused.json()["detail"]
            held = up.child("tansu").memory_info().rss
            assert held >= 0.9 * BROKER_MB * 2**20
            assert held < 2 * BROKER_MB * 2**20  # refused well before it ran away
            metrics = gauges(http.get("/metrics").text)
            assert metrics["sluice_gateway_backpressure"] == 1
            assert metrics["sluice_embedded_broker_bytes"] >= 0.9 * BROKER_MB * 2**20
            assert http.get("/readyz").status_code == 503
            # still refusing: Tansu does not give memory back; every acked event is stored
            assert http.post("/events", json=body).status_code == 503
            wait_for(lambda: gauges(http.get("/metrics").text)
                     .get("sluice_sink_rows_total", 0) >= acked, timeout_s=60)
            assert gauges(http.get("/metrics").text)["sluice_sink_rows_total"] == acked


def gauges(text: str) -> dict[str, float]:
    """Each sample's value summed over its labels."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out
