"""ActionHub's ``POST /events`` and the read-back ``GET /events``.

POST: body -> :mod:`validate` -> canonical events -> :mod:`publish` -> 200 once the
broker acked them all. GET: the user's stored events from ClickHouse, newest first.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel

from services.gateway.auth import ReadKey, WriteKey
from services.gateway.body import json_body_doc, read_json_body
from services.gateway.deps import GatewayDep, ProgramId, require_store
from services.gateway.ingest import ingest
from services.gateway.receipts import Level
from services.gateway.validate import EVENT_LIST, parse_event_list

router = APIRouter(tags=["ActionHub"])


class SuccessMessage(BaseModel):
    result: str


class StoredEvent(BaseModel):
    program_id: str
    event_id: str
    user_id: str
    event_timestamp: datetime
    client_timestamp: datetime | None = None  # as the client sent it, where it was corrected
    event_type: str
    asset_id: str
    labels: list[str]
    received_at: datetime
    queue_updates: bool
    process_user_actions: bool
    asset_labels: list[str]
    source: str
    client_event_id: str
    session_id: str
    anonymous_id: str
    email: str
    properties: str  # JSON text
    value: float | None


class StoredEvents(BaseModel):
    events: list[StoredEvent]


EVENT_LIST_SCHEMA = EVENT_LIST.json_schema(ref_template="#/components/schemas/{model}")
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"description": "wait=user|stored: the broker holds the batch, but it did not reach "
          "that level within SLUICE_WAIT_TIMEOUT_S; `GET /receipts/{receipt}` says when it does",
          "content": {"application/json": {"example": {"receipt": "kwGkc2hvcKZzdG9yZWSBAAc",
                                                       "status": "pending"}}}},
    413: {"description": "Body larger than the gateway's limit"},
    503: {"description": "Broker unavailable: nothing was accepted; retry after Retry-After"},
    504: {"description": "queue_updates=false: the events are durable, but user state was not "
          "updated within the timeout (it still will be); do not resend"},
}


@router.post(
    "/events",
    response_model=SuccessMessage,
    summary="Post Events",
    description="Add events to the event store. Answers 200 once the broker holds every "
    "event of the batch (acks=all). With process_user_actions=true new events update the "
    "users' label weights and action recommendations.",
    openapi_extra=json_body_doc({"$ref": "#/components/schemas/EventList"}),
    responses=ERROR_RESPONSES,
)
async def post_events(
    _auth: WriteKey,
    request: Request,
    gateway: GatewayDep,
    program_id: ProgramId,
    queue_updates: Annotated[
        bool | None,
        Query(description="false: answer once user state includes the batch; true: ack only. "
              "Default: the server's SLUICE_QUEUE_UPDATES_DEFAULT (false)."),
    ] = None,
    process_user_actions: Annotated[
        bool, Query(description="false: store only, no user-state update (bulk back-fill)")
    ] = True,
    wait: Annotated[
        Level | None,
        Query(description="When to answer: `broker` at the broker's ack (acks=all), `user` once "
              "every user's state includes the batch, `stored` once ClickHouse holds every "
              "event of it (nothing acked this way is lost, even by a crash of the embedded "
              "stack). Past SLUICE_WAIT_TIMEOUT_S: 202 with a receipt. Unset: queue_updates "
              "decides (true: broker, false: user)."),
    ] = None,
) -> Response:
    settings = gateway.settings
    events = parse_event_list(await read_json_body(request, settings.max_body_bytes))
    queue = settings.queue_updates_default if queue_updates is None else queue_updates
    if wait is not None:
        queue = wait != "user"
    await ingest(gateway, program_id, events, queue_updates=queue,
                 process_user_actions=process_user_actions, source="actionhub", wait=wait)
    body = orjson.dumps({"result": f"accepted {len(events)} events"})
    return Response(body, media_type="application/json")


@router.get(
    "/events",
    response_model=StoredEvents,
    summary="Read a user's stored events",
    description="The user's events as stored in ClickHouse, newest first (each once).",
    responses={503: {"description": "ClickHouse unavailable to this process"}},
)
async def get_events(
    _auth: ReadKey,
    gateway: GatewayDep,
    program_id: ProgramId,
    user_id: Annotated[str, Query(min_length=1, max_length=512)],
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> dict[str, Any]:
    store = require_store(gateway)
    rows = await asyncio.to_thread(store.user_events, program_id, user_id, limit)
    for row in rows:
        for field in ("event_timestamp", "received_at"):
            row[field] = row[field].replace(tzinfo=UTC)
    return {"events": rows}
