"""`sluice up`'s one HTTP server across generations (services.embedded_gateway): switching
to the next app while the current one serves hands every new request to the next at once,
lets the current one answer what it took, and only then ends its lifespan (a roll: requests
never wait)."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from services.embedded_gateway import GatewayServer
from services.shared.broker import free_port
from services.shared.settings import Settings


def app(name: str, events: list[str]) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        events.append(f"{name} up")
        yield
        events.append(f"{name} down")

    served = FastAPI(lifespan=lifespan)

    @served.get("/who")
    async def who(slow: float = 0.0) -> dict[str, str]:
        await asyncio.sleep(slow)
        events.append(f"{name} answered")
        return {"app": name, "title": served.title}  # a closure over its app, as Sluice's

    return served


def test_the_next_app_takes_new_requests_while_the_current_one_answers_its_own() -> None:
    events: list[str] = []
    settings = Settings(http_port=free_port())
    server = GatewayServer(settings, stop_wait_s=10)
    base = f"http://{settings.http_host}:{settings.http_port}"
    server.open(app("first", events))
    try:
        slow: list[str] = []
        taken = threading.Thread(target=lambda: slow.append(
            httpx.get(f"{base}/who", params={"slow": 1.5}, timeout=10).json()["app"]))
        taken.start()
        time.sleep(0.3)  # the slow request is in the first app
        switching = threading.Thread(target=server.open, args=(app("second", events),))
        switching.start()
        time.sleep(0.3)
        assert httpx.get(f"{base}/who", timeout=10).json()["app"] == "second"
        taken.join(10)
        switching.join(10)
        assert slow == ["first"]
        # the first app ended only once it had answered what it took
        assert events.index("first answered") < events.index("first down")
        # the new request did not wait for the old app's slow one
        assert events.index("second answered") < events.index("first answered")
    finally:
        server.stop(final=True)
    assert events[-1] == "second down"


def test_an_ended_app_is_let_go() -> None:
    """A roll ends an app: it must become garbage (FastAPI's caches of endpoint functions
    kept every ended app of `sluice up` alive: ~5 MiB a roll)."""
    settings = Settings(http_port=free_port())
    server = GatewayServer(settings, stop_wait_s=10)
    base = f"http://{settings.http_host}:{settings.http_port}"
    first = app("first", [])
    gone = weakref.ref(first)
    server.open(first)
    try:
        assert httpx.get(f"{base}/who", timeout=10).json()["app"] == "first"
        del first
        for name in ("second", "third"):
            server.open(app(name, []))
            assert httpx.get(f"{base}/who", timeout=10).json()["app"] == name
        gc.collect()
        assert gone() is None, gc.get_referrers(gone())
    finally:
        server.stop(final=True)
