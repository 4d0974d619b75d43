"""The HTTP front door: ``create_app(settings)`` assembles routers, errors and lifespan.

The lifespan opens the Kafka producer (and ClickHouse for reads when this process may
open it) and, on shutdown, flushes every queued event to the broker before exiting.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.types import Receive, Scope, Send

from services.gateway import auth, errors
from services.gateway.backpressure import Backpressure
from services.gateway.deps import Gateway
from services.gateway.dialects import crowdpower, personalize, posthog, retail, segment, userflux
from services.gateway.hotpath import HotPath
from services.gateway.live import Live
from services.gateway.observe import RequestMetrics
from services.gateway.progress import GroupProgress
from services.gateway.routes import (
    assets,
    erasure,
    events,
    health,
    metrics,
    profiles,
    receipts,
    ui,
    users,
)
from services.gateway.views import Views
from services.shared.clickhouse import Store
from services.shared.metrics import PRODUCER_QUEUE, mark_dead
from services.shared.publish import Publisher
from services.shared.settings import Settings

TAGS = [
    {"name": "ActionHub", "description": "ActionHub's `POST /events` contract, and read-back."},
    {"name": "Assets", "description": "The asset catalog: labels managed apart from events."},
    {"name": "Users", "description": "Real-time user state: label weights, recommendations."},
    {"name": "Operations", "description": "Health and readiness."},
    {"name": "Amazon Personalize", "description": "PutEvents, PutItems, PutUsers as the AWS "
     "SDKs send them (endpoint_url = <gateway>/compat/personalize), signed with SigV4 keys."},
    {"name": "Retail", "description": "Retail typed events (`EventSale`, `EventProductViewed`, "
     "...): one or up to 100 per POST, under /compat/retail."},
    {"name": "UserFlux", "description": "UserFlux's Events API (`/event/ingest`, batch of up "
     "to 50), under /compat/userflux."},
    {"name": "CrowdPower", "description": "CrowdPower's customer events (single, bulk of up to "
     "100) and the user's session, under /compat/crowdpower."},
    {"name": "PostHog", "description": "PostHog's capture API as posthog-python and posthog-js "
     "send it (host = <gateway>/compat/posthog); the token names the program."},
    {"name": "Segment", "description": "Segment's HTTP Tracking API (`/v1/batch`, `/v1/track`, "
     "...) as its SDKs and RudderStack's send it (host = <gateway>/compat/segment)."},
]


class GatewayApp(FastAPI):
    """FastAPI with the ingest routes' hot path in front (services.gateway.hotpath): before
    FastAPI's own ``__call__``, whose per-request OpenTelemetry check alone costs more than
    a small request's validation."""

    hot_path: HotPath | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.hot_path is None or not await self.hot_path.serve(self, scope, receive, send):
            await super().__call__(scope, receive, send)


def create_app(settings: Settings, store: Store | None = None, hot_path: bool = True,
               broker_bytes: Callable[[], int | None] | None = None,
               hold_waits_s: float = 0.0) -> FastAPI:
    """``store``: a Store shared with the sink (embedded mode); else one is opened here
    only when ClickHouse is a server, since embedded chDB belongs to the sink's process.
    ``hot_path`` False: every request through FastAPI's routing (tests compare the two).
    ``broker_bytes``: the embedded broker's memory, for backpressure (``sluice up``).
    ``hold_waits_s``: waits for user state (``queue_updates=false``, ``wait=user``) hold
    until released, at most that long: a roll of ``sluice up``'s broker opens this app
    before its agents join; the old agents answer reads meanwhile."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own_store = store is None and not settings.clickhouse_is_embedded
        progress = GroupProgress(settings).start()
        gw = Gateway(
            settings=settings,
            publisher=Publisher(settings, queue_gauge=PRODUCER_QUEUE),
            store=Store(settings) if own_store else store,
            views=Views(settings).start(),
            progress=progress,
            keys=auth.keyring_for(settings),
            backpressure=Backpressure(settings, progress.readers(), broker_bytes).start(),
        )
        if hold_waits_s > 0:
            gw.user_states.hold(hold_waits_s, reads=False)
        app.state.gateway = gw
        try:
            yield
        finally:
            gw.views.stop()
            if gw.backpressure is not None:
                gw.backpressure.stop()
            await gw.user_states.close()
            app.state.live.stop()
            gw.progress.stop()
            await gw.group_commit.drain()
            await gw.tallies.close()  # the last tallies, before the producer closes
            gw.publisher.close()
            if own_store and gw.store is not None:
                gw.store.close()
            mark_dead()

    # Swagger UI's and ReDoc's assets come from the fastapi-offline package, served under
    # /static-offline-docs: FastAPI's own /docs loads them from a CDN (blank page offline)
    app = FastAPIOffline(
        title="Sluice",
        version="0.1.0",
        summary="Streaming ingestion of user events: HTTP -> Kafka -> ClickHouse and user state.",
        openapi_tags=TAGS,
        lifespan=lifespan,
    )
    app.include_router(events.router)
    app.include_router(assets.router)
    app.include_router(users.router)
    app.include_router(erasure.router)
    app.include_router(receipts.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(ui.router)
    app.mount("/ui/static", StaticFiles(directory=ui.UI_DIR), name="ui")
    app.state.live = Live(settings)
    app.include_router(personalize.router)
    app.include_router(profiles.router)
    app.include_router(retail.router)
    app.include_router(userflux.router)
    app.include_router(crowdpower.router)
    app.include_router(posthog.router)
    app.include_router(segment.router)
    errors.install(app, settings.retry_after_s)
    app.add_middleware(RequestMetrics)
    app.__class__ = GatewayApp  # FastAPIOffline builds a plain FastAPI
    app.hot_path = HotPath() if hot_path else None  # type: ignore[attr-defined]
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus the raw-body models the handlers validate themselves."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, summary=app.summary,
            routes=app.routes, tags=app.openapi_tags,
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name, raw in (("EventList", events.EVENT_LIST_SCHEMA),
                          ("AssetList", assets.ASSET_LIST_SCHEMA)):
            body = dict(raw)
            components.update(body.pop("$defs", {}))
            components[name] = body  # ReDoc renders nothing when one $ref is dangling
        app.openapi_schema = schema
    return app.openapi_schema
