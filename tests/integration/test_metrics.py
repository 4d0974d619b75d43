"""Each role's /metrics, scraped and parsed with prometheus-client's own parser: counters
move by exactly what was posted, and the lag of both consumer groups is reported."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from confluent_kafka import Producer
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from services.shared.broker import free_port
from services.shared.kafka import ensure_topics
from services.shared.lag import group_lag, offsets_reader
from services.shared.settings import Settings
from tests.integration.conftest import Agents, env_for, event, wait_for
from tests.integration.test_failures import wire

H = {"program-id": "shop"}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def lags(samples: Samples, group: str, topic: str) -> dict[int, float]:
    """partition -> sluice_consumer_lag of ``group`` on ``topic``."""
    out = {}
    for (name, labels), v in samples.items():
        d = dict(labels)
        if name == "sluice_consumer_lag" and d["group"] == group and d["topic"] == topic:
            out[int(d["partition"])] = v
    return out


def batch(n: int, prefix: str) -> dict[str, object]:
    return {"events": [event(f"{prefix}-{i}", f"a{i}") for i in range(n)]}


def test_gateway_and_sink_count_exactly_what_was_posted(settings: Settings,
                                                        client: TestClient) -> None:
    """`sluice up`'s composition: the gateway's /metrics carries the sink's too."""
    scrape = client.get("/metrics")
    assert scrape.headers["content-type"].startswith("text/plain")
    before = parse(scrape.text)
    for n in (7, 5, 1):
        assert client.post("/events", json=batch(n, f"u{n}"), headers=H).status_code == 200
    assert client.post("/events", json={"events": [{"user_id": "x"}]}, headers=H).status_code == 422
    # no agents run here: the read finds no owner for the user (503, counted as such)
    settings.agents_read_timeout_s = 0.3
    assert client.get("/users/secret-user-42/label-weights", headers=H).status_code == 503

    def after() -> Samples:
        return parse(client.get("/metrics").text)

    wait_for(lambda: value(after(), "sluice_sink_rows_total", table="events")
             - value(before, "sluice_sink_rows_total", table="events") >= 13)
    now = after()

    def moved(name: str, **labels: str) -> float:
        return value(now, name, **labels) - value(before, name, **labels)

    assert moved("sluice_events_accepted_total", source="actionhub") == 13
    assert moved("sluice_http_requests_total", route="/events", status="200") == 3
    assert moved("sluice_http_requests_total", route="/events", status="422") == 1
    assert moved("sluice_requests_rejected_total", reason="invalid") == 1
    assert moved("sluice_publish_seconds_count") == 3
    assert 0 < moved("sluice_publish_seconds_sum") < 3 * settings.publish_timeout_s
    assert moved("sluice_sink_rows_total", table="events") == 13
    assert moved("sluice_sink_batch_rows_sum") == 13
    assert moved("sluice_sink_insert_seconds_count", table="events") >= 1
    assert ("sluice_producer_queue_messages", frozenset()) in now
    # bounded labels: the route template, never the raw path with the user in it
    assert moved("sluice_http_requests_total", route="/users/{user_id}/label-weights",
                 status="503") == 1
    assert not any("secret-user-42" in v for _, labels in now for _, v in labels)
    # the sink's group: every partition of both its topics, caught up once committed
    assert set(lags(now, settings.sink_group, settings.topic_events)) == set(range(4))
    assert set(lags(now, settings.sink_group, settings.topic_assets))
    wait_for(lambda: set(lags(after(), settings.sink_group, settings.topic_events).values()) == {0})


def produce_one_by_one(settings: Settings, messages: list[tuple[bytes, bytes]]) -> None:
    """One message per produce request: Tansu's high watermark is exact then (see lag.py)."""
    producer = Producer({"bootstrap.servers": settings.bootstrap})
    for key, val in messages:
        producer.produce(settings.topic_events, value=val, key=key)
        assert producer.flush(10) == 0


@contextmanager
def sink_process(settings: Settings, port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = env_for(settings) | {"SLUICE_SINK_METRICS_PORT": str(port)}
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "services.cli", "sink"], env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(60)


def test_standalone_sink_serves_its_metrics_and_its_lag_on_its_own_port(
        settings: Settings, tmp_path: Path) -> None:
    ensure_topics(settings)
    produce_one_by_one(settings, wire("v", 6))
    reader = offsets_reader(settings, settings.sink_group)
    try:  # nothing committed yet: the group lags by all 6
        assert sum(r.lag for r in group_lag(reader, settings.sink_group,
                                            [settings.topic_events])) == 6
    finally:
        reader.close()
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"

    def scrape() -> Samples:
        try:
            return parse(httpx.get(url, timeout=5).text)
        except httpx.HTTPError:
            return {}

    with sink_process(settings, port, tmp_path / "sink.log"):
        wait_for(lambda: value(scrape(), "sluice_sink_rows_total", table="events") == 6,
                 timeout_s=60)
        produce_one_by_one(settings, wire("w", 4))
        wait_for(lambda: value(scrape(), "sluice_sink_rows_total", table="events") == 10)
        wait_for(lambda: set(lags(scrape(), settings.sink_group,
                                  settings.topic_events).values()) == {0})
        samples = scrape()
    assert value(samples, "sluice_sink_batch_rows_sum") == 10
    assert value(samples, "sluice_dlq_messages_total", reason="invalid_event") == 0
    assert set(lags(samples, settings.sink_group, settings.topic_events)) == set(range(4))


def test_agents_count_events_freshness_and_their_lag(settings: Settings, gateway: TestClient,
                                                     agents: Agents) -> None:
    # posted before any worker runs: the agents' group lags behind them
    for n in (4, 3):
        response = client_post(gateway, n)
        assert response.status_code == 200, response.text
    reader = offsets_reader(settings, settings.agents_app_id)
    try:  # >= 1: Tansu reports a lower bound (see lag.py)
        assert sum(r.lag for r in group_lag(reader, settings.agents_app_id,
                                            [settings.topic_events])) >= 1
    finally:
        reader.close()
    agents.start()
    url = f"http://127.0.0.1:{settings.agents_web_port}/metrics"

    def scrape() -> Samples:
        return parse(httpx.get(url, timeout=5).text)

    wait_for(lambda: value(scrape(), "sluice_agents_events_total") == 7, timeout_s=30)
    response = client_post(gateway, 5, queue_updates="false")  # answers once state has them
    assert response.status_code == 200, response.text
    wait_for(lambda: value(scrape(), "sluice_agents_events_total") == 12)
    wait_for(lambda: set(lags(scrape(), settings.agents_app_id,
                              settings.topic_events).values()) == {0}, timeout_s=30)
    samples = scrape()
    assert set(lags(samples, settings.agents_app_id, settings.topic_events)) == set(range(4))
    assert value(samples, "sluice_agents_state_users") == 12
    messages = value(samples, "sluice_state_freshness_seconds_count")
    assert 3 <= messages <= 12  # one per source message: a request's share of a partition
    assert 0 < value(samples, "sluice_state_freshness_seconds_sum") < 120 * messages


def client_post(gateway: TestClient, n: int, queue_updates: str = "true") -> httpx.Response:
    return gateway.post(f"/events?queue_updates={queue_updates}", json=batch(n, f"u{n}"),
                        headers=H)


def test_gateway_workers_sum_their_metrics(settings: Settings, tmp_path: Path) -> None:
    """`sluice gateway --workers 2`: whichever worker answers a scrape reports all of them."""
    ensure_topics(settings)
    port = free_port()
    env = env_for(settings) | {"SLUICE_HTTP_PORT": str(port),
                               "SLUICE_QUEUE_UPDATES_DEFAULT": "true"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    base = f"http://127.0.0.1:{port}"
    with open(tmp_path / "gateway.log", "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "services.cli", "gateway", "--workers", "2"],
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: _up(base), timeout_s=60)
        with httpx.Client(base_url=base, timeout=10) as http:
            for i in range(10):  # new connections: both workers take some
                with httpx.Client(base_url=base, timeout=10) as one:
                    assert one.post("/events", json=batch(3, f"w{i}"), headers=H).status_code == 200
            samples = parse(http.get("/metrics").text)
        assert value(samples, "sluice_events_accepted_total", source="actionhub") == 30
        assert value(samples, "sluice_http_requests_total", route="/events", status="200") == 10
        assert value(samples, "sluice_publish_seconds_count") == 10
        files = os.listdir(settings.data_dir / "metrics")
        assert len({f.rsplit("_", 1)[-1] for f in files if f.startswith("counter")}) == 2, files
    finally:
        proc.terminate()
        proc.wait(30)


def _up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
