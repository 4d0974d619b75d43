"""Every role through TLS only, as against a managed Kafka.

Tansu listens in plaintext on a loopback port and advertises a TLS terminator's port
(bench/tls_terminator.py; Tansu itself cannot speak TLS): clients reach the brokers only
through TLS, certificates verified against a CA of the test's own (trustme). SASL cannot
be tried on Tansu here (FACTS.md): the renderer tests cover it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import trustme
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from bench.tls_terminator import TlsBroker
from services.shared.broker import free_port
from tests.integration.conftest import wait_for
from tests.integration.test_up import H, sluice_up

pytestmark = pytest.mark.integration

EVENTS = {"events": [
    {"user_id": "u1", "event_timestamp": "2026-11-23T10:00:00Z", "event_type": "purchase",
     "asset_id": "sku-1", "labels": ["summer"]},
    {"user_id": "u1", "event_timestamp": "2026-11-23T10:01:00Z", "event_type": "view",
     "asset_id": "sku-2", "labels": ["winter"]},
    {"user_id": "u2", "event_timestamp": "2026-11-23T10:02:00Z", "event_type": "click",
     "asset_id": "sku-2", "labels": ["winter"]},
]}


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[TlsBroker]:
    broker = TlsBroker(tmp_path / "tls").start()
    yield broker
    broker.stop()


def tls_env(broker: TlsBroker, ca: Path | None = None) -> dict[str, str]:
    return {"SLUICE_KAFKA_BOOTSTRAP": broker.bootstrap, "SLUICE_KAFKA_SECURITY_PROTOCOL": "SSL",
            "SLUICE_KAFKA_SSL_CA_LOCATION": str(ca or broker.ca)}


def role_env(extra: dict[str, str], data_dir: Path) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")} | {
        "SLUICE_DATA_DIR": str(data_dir), "SLUICE_HTTP_PORT": str(free_port()),
        "SLUICE_AGENTS_WEB_PORT": str(free_port()), "SLUICE_SINK_METRICS_PORT": str(free_port()),
    } | extra


def connections_to(port: int) -> set[int]:
    """Pids of the processes with a connection established to ``port`` on this host."""
    return {c.pid for c in psutil.net_connections(kind="tcp")
            if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
            and c.pid is not None}


def test_the_whole_pipeline_runs_through_tls_only(tls_broker: TlsBroker, tmp_path: Path) -> None:
    env = tls_env(tls_broker)
    with sluice_up(tmp_path / "data", tmp_path / "up.log", env) as base:
        posted = httpx.post(f"{base}/events?queue_updates=false&wait=stored", json=EVENTS,
                            headers=H, timeout=60)
        assert posted.status_code == 200, posted.text
        rows = httpx.get(f"{base}/events", params={"user_id": "u1"}, headers=H).json()["events"]
        assert sorted(r["event_type"] for r in rows) == ["purchase", "view"]
        weights = httpx.get(f"{base}/users/u1/label-weights", headers=H).json()["label_weights"]
        # purchase 5, view 1; the older one decayed over the minute between them
        assert [w["label"] for w in weights] == ["summer", "winter"]
        assert [w["weight"] for w in weights] == pytest.approx([5.0, 1.0], rel=1e-3)
        ready = httpx.get(f"{base}/readyz")
        assert ready.status_code == 200 and ready.json()["checks"]["broker"] == "ok", ready.text
        # the sink's lag, read from the broker through TLS at scrape time
        metrics = httpx.get(f"{base}/metrics").text
        assert 'sluice_consumer_lag{group="sluice-sink"' in metrics
        status = subprocess.run([sys.executable, "-m", "services.cli", "status", "--interval", "0.5"],
                                check=False,
                                env=role_env(env, tmp_path / "data") | {
                                    "SLUICE_HTTP_PORT": base.rsplit(":", 1)[1]},
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stderr
        assert "sluice-sink" in status.stdout and "Kafka:" not in status.stdout, status.stdout
        # every byte went through TLS: only the terminator talks to the plaintext port
        terminator = tls_broker.process
        assert terminator is not None
        assert connections_to(tls_broker.broker.port) == {terminator.pid}
        up_log = (tmp_path / "up.log").read_text()
        assert f"{tls_broker.bootstrap}   (external; SSL)" in up_log
    # a plaintext client at the TLS port gets nowhere
    with pytest.raises(KafkaException):
        AdminClient({"bootstrap.servers": tls_broker.bootstrap,
                     "log_level": 0}).list_topics(timeout=3)


@pytest.mark.parametrize("role", ["gateway", "sink", "agents", "up"])
def test_a_ca_that_does_not_match_stops_each_role_with_one_clear_line(
        tls_broker: TlsBroker, tmp_path: Path, role: str) -> None:
    wrong = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(wrong))
    env = role_env(tls_env(tls_broker, ca=wrong), tmp_path / "data")
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "services.cli", role], env=env, check=False,
                          capture_output=True, text=True, timeout=90)
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("sluice: cannot start: " + tls_broker.bootstrap), last
    assert "certificate verify failed" in last and "SLUICE_KAFKA_SSL_CA_LOCATION" in last, last
    assert "Traceback" not in done.stderr
    assert time.monotonic() - began < 45  # waiting cannot fix a certificate: no 30 s retries


def test_a_broker_certificate_no_longer_trusted_makes_readyz_say_why(
        tls_broker: TlsBroker, tmp_path: Path) -> None:
    env = role_env(tls_env(tls_broker), tmp_path / "data")
    base = f"http://127.0.0.1:{env['SLUICE_HTTP_PORT']}"
    log = tmp_path / "gateway.log"
    with open(log, "ab") as out:
        gateway = subprocess.Popen([sys.executable, "-m", "services.cli", "gateway"], env=env,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: _status(f"{base}/readyz") == 200, timeout_s=60)
        tls_broker.rotate()  # a certificate of another CA; open connections dropped
        wait_for(lambda: _status(f"{base}/readyz") == 503, timeout_s=30)
        checks = httpx.get(f"{base}/readyz", timeout=10).json()["checks"]
        assert "certificate verify failed" in checks["broker"], checks
        # events are refused with a retryable answer, never a 500 or a hang
        posted = httpx.post(f"{base}/events", json=EVENTS, headers=H, timeout=30)
        assert posted.status_code == 503, posted.text
        assert "certificate verify failed" in log.read_text()
    finally:
        gateway.send_signal(signal.SIGTERM)
        try:
            gateway.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(gateway.pid, signal.SIGKILL)
            gateway.wait()


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=10).status_code
    except httpx.HTTPError:
        return 0
