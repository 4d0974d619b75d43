"""``GET /metrics``: Prometheus' exposition of this process (and, in ``sluice up``, of the
sink that shares it; with ``--workers N``, of every worker: see services.shared.metrics)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import Response

from services.shared.metrics import CONTENT_TYPE_LATEST, render

router = APIRouter(tags=["Operations"])


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics() -> Response:
    # off the event loop: the sink's lag is read from the broker at scrape time
    return Response(await asyncio.to_thread(render), media_type=CONTENT_TYPE_LATEST)
