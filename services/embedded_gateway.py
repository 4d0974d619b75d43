"""The gateway ``sluice up`` serves for its whole life: one generation's app after another.

Each generation of the embedded stack (services.embedded) has a gateway app of its own: its
producer, views and positions belong to the broker it started on. Stopping uvicorn to
replace it closed the clients' keep-alive connections, and a request sent on one just as it
closed failed (httpx's RemoteProtocolError: 2 of ~250 requests across two rolls of the
broker in tests/integration/test_broker_roll.py). So one uvicorn server serves this front
for good: it hands each request to the current generation's app, and between two
generations requests wait on their open connections until the next one is up (after a
broker's death), or go to the next app at once while the current one answers those it took
(a roll). Each app's
lifespan (its producer, threads) is entered and left here, on the server's event loop, as
uvicorn would. :class:`GatewayServer` is that server's life as the supervisor sees it: open
with an app, pause between generations, stop at the end.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Coroutine
from contextlib import AsyncExitStack
from typing import Any

import orjson
import uvicorn
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from services.gateway.deps import Gateway
from services.shared.logs import log_config
from services.shared.settings import Settings

log = logging.getLogger(__name__)

CATALOG_WAIT_S = 10.0  # for a next app's asset catalog to be read from its broker


def forget_endpoints() -> None:
    """Let an ended app go. FastAPI memoizes, per endpoint function, whether it is a coroutine
    or a generator, in lru_caches of 4,096 entries keyed by the function itself; an app's
    endpoints are closures over it, so every app a roll ended stayed alive (~2,000 objects,
    its routes' validators) until enough later ones pushed it out: `sluice up` grew ~5 MiB a
    roll. Cleared, the caches refill from the current app's first requests."""
    from fastapi.dependencies import models

    for name in ("_is_gen_callable_cached", "_is_async_gen_callable_cached",
                 "_is_coroutine_callable_cached"):
        if callable(clear := getattr(getattr(models, name, None), "cache_clear", None)):
            clear()


class _Serving:
    """One generation's app as the server runs it: its lifespan and its requests in flight."""

    def __init__(self, app: FastAPI, lifespan: AsyncExitStack) -> None:
        self.app, self.lifespan = app, lifespan
        self.inflight = 0
        self.idle = asyncio.Event()
        self.idle.set()


class Generations:
    """The ASGI app uvicorn serves; ``switch_to`` and ``pause`` are called from another
    thread (the supervisor's), ``close`` once at the end."""

    def __init__(self, retry_after_s: int = 1) -> None:
        self.closed = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.retry_after_s = retry_after_s
        self._changed: asyncio.Event | None = None  # set while there is an app (or closed)
        self._serving: _Serving | None = None

    @property
    def app(self) -> FastAPI | None:
        serving = self._serving
        return serving.app if serving is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # uvicorn's own: the loop is known from here on
            await self._serve_lifespan(receive, send)
            return
        changed = self._events()
        while self._serving is None and not self.closed:
            await changed.wait()
        serving = self._serving
        if serving is None:  # closed: `sluice up` is stopping
            await self._unavailable(send)
            return
        serving.inflight += 1
        serving.idle.clear()
        try:
            await serving.app(scope, receive, send)
        finally:
            serving.inflight -= 1
            if not serving.inflight:
                serving.idle.set()

    # -- from the supervisor's thread -----------------------------------------------------
    def switch_to(self, app: FastAPI, timeout_s: float = 60.0) -> None:
        """Start ``app``'s lifespan and hand it every request, those waiting first. An app
        still serving answers the requests it has, then ends (a roll: requests never wait)."""
        self._run(self._enter(app, timeout_s), timeout_s + 30)

    def pause(self, timeout_s: float = 60.0) -> None:
        """Hold new requests; let the current app answer those it has, then end its
        lifespan (its producer flushes). Requests wait for the next ``switch_to``."""
        self._run(self._leave(timeout_s), timeout_s + 30)

    def close(self, timeout_s: float = 60.0) -> None:
        """As ``pause``, and from then on every request is answered 503 (stopping)."""
        self.closed = True
        self._run(self._leave(timeout_s), timeout_s + 30)

    # -- on the server's loop --------------------------------------------------------------
    def _events(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
            if self._serving is not None or self.closed:
                self._changed.set()
        return self._changed

    async def _enter(self, app: FastAPI, timeout_s: float) -> None:
        stack = AsyncExitStack()
        await stack.enter_async_context(app.router.lifespan_context(app))
        gateway = getattr(app.state, "gateway", None)
        if gateway is not None:  # its catalog read before its first request
            await asyncio.to_thread(gateway.views.caught_up.wait, CATALOG_WAIT_S)
        before, self._serving = self._serving, _Serving(app, stack)
        self._events().set()
        if before is not None:
            await self._end(before, timeout_s)

    async def _leave(self, timeout_s: float) -> None:
        changed = self._events()
        before, self._serving = self._serving, None
        if self.closed:
            changed.set()  # the waiting requests get their 503
        else:
            changed.clear()
        if before is not None:
            await self._end(before, timeout_s)

    async def _end(self, serving: _Serving, timeout_s: float) -> None:
        """Once ``serving`` answered what it took (or after ``timeout_s``), its lifespan ends."""
        try:
            await asyncio.wait_for(serving.idle.wait(), timeout_s)
        except TimeoutError:
            log.error("the gateway still answers %d requests after %.0f s; stopping it anyway",
                      serving.inflight, timeout_s)
        await serving.lifespan.aclose()
        forget_endpoints()

    def _run(self, coroutine: Coroutine[Any, Any, None], timeout_s: float) -> None:
        if self.loop is None:
            coroutine.close()
            raise RuntimeError("the gateway's server has not started")
        asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout_s)

    async def _serve_lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.loop = asyncio.get_running_loop()
                self._events()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _unavailable(self, send: Send) -> None:
        body = orjson.dumps({"detail": "Sluice is stopping; retry later"})
        await send({"type": "http.response.start", "status": 503, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(self.retry_after_s).encode())]})
        await send({"type": "http.response.body", "body": body})


class GatewayServer:
    """`sluice up`'s HTTP server: one uvicorn server on its own thread for the whole run,
    serving each generation's gateway app in turn (:class:`Generations`). Off the main
    thread uvicorn installs no signal handlers: the supervisor's stay."""

    def __init__(self, settings: Settings, stop_wait_s: float) -> None:
        self.settings = settings
        self.stop_wait_s = stop_wait_s
        self.generations = Generations(settings.retry_after_s)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def gateway(self) -> Gateway | None:
        """The current app's per-process objects (None between generations)."""
        app = self.generations.app
        return getattr(app.state, "gateway", None) if app is not None else None

    def died(self) -> bool:
        """The server stopped on its own (started, and its thread ended)."""
        return self._thread is not None and not self._thread.is_alive()

    def open(self, app: FastAPI) -> None:
        """Serve ``app`` from now on (starting the server on the first call)."""
        if self._server is None:
            self._start()
        self.generations.switch_to(app, self.stop_wait_s)

    def hold_user_states(self, most_s: float, reads: bool) -> None:
        """The app's waits of user state, and its reads with ``reads``, wait for the release
        (a roll's next agents join; services.gateway.user_states)."""
        if (gateway := self.gateway) is not None:
            gateway.user_states.hold(most_s, reads=reads)

    def answer_user_states_from(self, snapshot: dict[bytes, tuple[int, bytes]]) -> None:
        """The app's reads of user state are answered from a roll's carried records until
        the release (services.gateway.user_states)."""
        if (gateway := self.gateway) is not None:
            gateway.user_states.answer_from(snapshot)

    def release_user_states(self) -> None:
        """The app's held reads and waits of user state go ahead (a roll's agents joined)."""
        if (gateway := self.gateway) is not None:
            gateway.user_states.release()

    def stop(self, final: bool = False) -> None:
        """The app answers what it took, then ends (its producer flushes); new requests
        wait for the next one, or, ``final``, get a 503 and the server stops."""
        began = time.monotonic()
        serving = self.generations.app is not None
        self.release_user_states()  # held reads answer (a stop while the agents join)
        if self.generations.loop is not None and final:
            # also when a roll had paused it: the requests waiting for the next get a 503
            self.generations.close(self.stop_wait_s)
        elif self.generations.loop is not None and serving:
            self.generations.pause(self.stop_wait_s)
        if serving:
            log.info("gateway stopped in %.1f s", time.monotonic() - began)
        if final and self._server and self._thread:
            self._server.should_exit = True
            self._thread.join(self.stop_wait_s)
            if self._thread.is_alive():
                log.error("the gateway's server did not stop in %.0f s", self.stop_wait_s)
            self._server = self._thread = None

    def _start(self) -> None:
        server = self._server = uvicorn.Server(uvicorn.Config(
            self.generations, host=self.settings.http_host, lifespan="on",
            port=self.settings.http_port, log_level="warning", access_log=False,
            log_config=log_config(self.settings.log_format),
        ))
        self._thread = threading.Thread(target=server.run, name="gateway")
        self._thread.start()
        deadline = time.monotonic() + 30
        while not server.started and self._thread.is_alive():
            if time.monotonic() > deadline:
                raise RuntimeError("the gateway did not start in 30 s")
            time.sleep(0.02)
        if not server.started:
            raise RuntimeError(f"the gateway could not serve on port {self.settings.http_port}")
