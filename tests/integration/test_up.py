"""`sluice up` (what `make run` starts) as a user runs it: a process of its own on a data
directory, stopped with SIGTERM, started again on the same directory."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from services.shared.broker import free_port
from tests.integration.conftest import wait_for

H = {"program-id": "shop"}
EVENTS = {"events": [
    {"user_id": "u1", "event_timestamp": "2026-11-23T10:00:00Z", "event_type": "purchase",
     "asset_id": "sku-1", "labels": ["summer"]},
    {"user_id": "u2", "event_timestamp": "2026-11-23T10:01:00Z", "event_type": "view",
     "asset_id": "sku-2", "labels": []},
]}


@contextmanager
def sluice_up(data_dir: Path, log: Path, extra_env: dict[str, str] | None = None) -> Iterator[str]:
    """``extra_env``: more SLUICE_* settings (an external broker, TLS)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")} | {
        "SLUICE_DATA_DIR": str(data_dir), "SLUICE_HTTP_PORT": str(port := free_port()),
        "SLUICE_EMBEDDED_BROKER_PORT": str(free_port()), "SLUICE_AGENTS_WEB_PORT": str(free_port()),
    } | (extra_env or {})
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "services.cli", "up"], env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ready(base) or proc.poll() is not None, timeout_s=120)
        assert proc.poll() is None, log.read_text()[-3000:]
        yield base
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(90) == 0, log.read_text()[-3000:]
    finally:  # a failed test must not leave its Tansu and agents behind
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # its broker and agents die with it
        proc.wait()


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def stored(base: str) -> list[dict[str, object]]:
    return list(httpx.get(f"{base}/events", params={"user_id": "u1"}, headers=H).json()["events"])


def test_up_serves_drains_on_sigterm_and_restores_state_on_restart(tmp_path: Path) -> None:
    log = tmp_path / "up.log"
    with sluice_up(tmp_path / "data", log) as base:
        assets = {"assets": [{"asset_id": "sku-1", "labels": ["shoes", "red"]},
                             {"asset_id": "sku-2", "labels": ["shoes"]}]}
        assert httpx.put(f"{base}/assets", json=assets, headers=H).status_code == 200
        # up opens the gateway once the agents own their partitions: no group-join wait here
        posted = httpx.post(f"{base}/events?queue_updates=false", json=EVENTS, headers=H, timeout=30)
        assert posted.status_code == 200, posted.text
        assert posted.elapsed.total_seconds() < 3
        weights = httpx.get(f"{base}/users/u1/label-weights", headers=H).json()["label_weights"]
        assert weights == [{"label": "red", "weight": 5.0}, {"label": "shoes", "weight": 5.0},
                           {"label": "summer", "weight": 5.0}]
        wait_for(lambda: len(stored(base)) == 1, timeout_s=5)
        [row] = stored(base)
        assert row["event_type"] == "purchase" and row["labels"] == ["summer"]
        assert row["asset_labels"] == ["shoes", "red"] and row["program_id"] == "shop"
    assert "stopped; the sink wrote 2 rows" in log.read_text()

    with sluice_up(tmp_path / "data", log) as base:  # the broker kept nothing: rebuilt from ClickHouse
        assert httpx.get(f"{base}/users/u1/label-weights", headers=H).json()["label_weights"] == weights
        assert httpx.get(f"{base}/assets/sku-1", headers=H).json()["labels"] == ["shoes", "red"]
        assert len(stored(base)) == 1
    assert "restored 2 users (2 events) and 2 assets" in log.read_text()
