"""``/ui``: a live page of what flows (newest events, counts by dialect, dead letters, lag).

The page and its assets ship in the package (services/gateway/ui/, no CDN). The page polls
``GET /ui/live`` every second. With API keys, the page asks for a read key and shows that
key's program only; without, every program (filter by program and user in the page).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from services.gateway.auth import ReadKey
from services.gateway.live import Live
from services.shared.metrics import EVENTS_ACCEPTED

UI_DIR = Path(__file__).resolve().parent.parent / "ui"

router = APIRouter(tags=["Operations"])


@router.get("/ui", include_in_schema=False)
async def ui_page() -> FileResponse:
    return FileResponse(UI_DIR / "index.html")


@router.get("/ui/live", summary="What /ui shows: the newest events and dead letters, events "
            "accepted by dialect, and the consumer groups' lag")
async def ui_live(_auth: ReadKey, request: Request) -> dict[str, Any]:
    live: Live = request.app.state.live
    snapshot = await asyncio.to_thread(live.snapshot)  # a first one waits for the read-back
    program = request.headers.get("program-id") or None  # with keys: the key's program
    if program is not None:
        snapshot = {name: [e for e in entries if e.get("program_id") == program]
                    for name, entries in snapshot.items()}
    lag = await asyncio.to_thread(live.lag)
    return snapshot | {"lag": lag, "accepted_by_source": accepted_by_source()}


def accepted_by_source() -> dict[str, float]:
    """Events this gateway process accepted since it started, by dialect."""
    return {s.labels["source"]: s.value for family in EVENTS_ACCEPTED.collect()
            for s in family.samples if s.name.endswith("_total")}
