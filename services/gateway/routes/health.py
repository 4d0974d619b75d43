"""Liveness and readiness, for load balancers and Kubernetes probes."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from services.gateway.deps import GatewayDep

router = APIRouter(tags=["Operations"])


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="This gateway can take events now: broker reachable, producer healthy, local "
    "queue under its bound, consumers not too far behind (backpressure), ClickHouse "
    "reachable, and the asset catalog caught up",
    responses={503: {"description": "Not ready; `checks` says which check failed and why"}},
)
async def readyz(gateway: GatewayDep) -> JSONResponse:
    problem = await asyncio.to_thread(gateway.publisher.problem)
    # reads must not serve a cold view: wait (briefly) until the views have caught up
    caught_up = gateway.views.caught_up
    views = caught_up.is_set() or await asyncio.to_thread(caught_up.wait, 2.0)
    checks = {"broker": problem or "ok",
              "views": "caught up" if views else "catching up with the asset catalog"}
    refused = gateway.backpressure.reason if gateway.backpressure is not None else None
    checks["backpressure"] = f"refusing events: {refused}" if refused else "ok"
    ready = problem is None and views and refused is None
    if gateway.store is None:
        checks["clickhouse"] = "not used by this process (embedded, owned by the sink)"
    else:
        store_ok = await asyncio.to_thread(gateway.store.ping)
        checks["clickhouse"] = "ok" if store_ok else "unreachable"
        ready = ready and store_ok
    return JSONResponse(
        {"status": "ready" if ready else "unavailable", "checks": checks},
        status_code=200 if ready else 503,
    )
