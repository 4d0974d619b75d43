"""A gateway under uvicorn on a real port, for the tests that drive vendors' own SDKs
(they speak HTTP to a URL, not to a TestClient), with the sink writing to ClickHouse."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI

from services.gateway.app import create_app
from services.shared.broker import free_port
from services.shared.clickhouse import Store
from services.shared.settings import Settings
from tests.integration.conftest import running_sink, wait_for


@contextmanager
def serve(settings: Settings, store: Store) -> Iterator[tuple[str, FastAPI]]:
    """(the gateway's base URL, its app) while the gateway and a sink run."""
    app = create_app(settings, store)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name="test-gateway")
    with running_sink(settings, store):
        thread.start()
        try:
            wait_for(lambda: server.started, timeout_s=30)
            yield f"http://127.0.0.1:{port}", app
        finally:
            server.should_exit = True
            thread.join(30)
