"""UserFlux's Events API: ``POST /compat/userflux/event/ingest`` and ``.../ingest/batch``.

In: an ``IngestEventRequest`` (``userId``, ``anonymousId``: at least one; ``name``;
``timestamp`` epoch milliseconds, default the time of receipt; ``properties`` object),
or ``{"events": [...]}`` with 1 to 50 of them (UserFlux's batch limit). Optional fields
may be null, as UserFlux's SDKs send an anonymous user's ``userId``; unknown fields are
ignored. Query ``locationEnrichment`` (boolean) is accepted and stored with each event
as the property ``"$locationEnrichment"`` (only when given; it overrides a property of
that name); Sluice does no enrichment itself.

Mapping: user_id = ``userId``, or ``anonymousId`` when there is no userId (so an
anonymous visitor has state of its own); anonymous_id = ``anonymousId``; event_type =
``name``; asset_id = "" (UserFlux events name no item); properties -> JSON text.
Auth: UserFlux's write-only key as ``Authorization: Bearer``, scope write.

Out: 204, no body, once the broker holds every event. Failures (UserFlux documents
none, so in the common JSON error shape of JS APIs):
``{"statusCode": N, "error": "<reason phrase>", "message": "...", "details": [...]}``
(``details`` only for 400: ``[{"path": "events.3.name", "message": "..."}]``).
400 invalid, 401/403 key, 413 body too large, 503 + Retry-After broker unavailable
(nothing accepted), 504 user state late (events durable: do not resend).
"""

from __future__ import annotations

from datetime import UTC, datetime
from http import HTTPStatus
from typing import Annotated, Any, NotRequired

from fastapi import APIRouter, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ConfigDict, Field, Strict, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict

from services.gateway.body import json_body_doc, read_json_body
from services.gateway.deps import GatewayDep
from services.gateway.dialects.common import WriteProgram, error_route, inline_defs, json_text
from services.gateway.ingest import ingest
from services.gateway.validate import Id, Properties

SOURCE = "userflux"
MAX_BATCH = 50  # "The Batch endpoint accepts up to 50 events per request"
LOCATION_PROPERTY = "$locationEnrichment"

# Epoch milliseconds of years 1900..2299, what ClickHouse DateTime64 can hold.
EpochMillis = Annotated[
    float, Strict(), Field(ge=-2_208_988_800_000, lt=10_413_792_000_000, allow_inf_nan=False,
                           description="When the event occurred, epoch milliseconds")
]


@with_config(ConfigDict(extra="ignore", title="IngestEventRequest"))
class IngestEvent(TypedDict):
    userId: NotRequired[Id | None]
    anonymousId: NotRequired[Id | None]
    name: Id
    timestamp: NotRequired[EpochMillis | None]
    properties: NotRequired[Properties | None]


@with_config(ConfigDict(extra="ignore", title="IngestEventBatch"))
class IngestBatch(TypedDict):
    events: Annotated[list[IngestEvent], Field(min_length=1, max_length=MAX_BATCH)]


ONE = TypeAdapter(IngestEvent)
BATCH = TypeAdapter(IngestBatch)


class UserFluxError(Exception):
    def __init__(self, status: int, message: str, details: list[dict[str, str]] | None = None):
        self.status, self.message, self.details = status, message, details


def _path(loc: Any) -> str:
    return ".".join(str(p) for p in loc)


def _invalid(details: list[dict[str, str]]) -> UserFluxError:
    return UserFluxError(400, "; ".join(f"{d['path']}: {d['message']}" if d["path"]
                                        else d["message"] for d in details), details)


def parse(adapter: TypeAdapter[Any], body: bytes, prefix: list[Any]) -> list[IngestEvent]:
    try:
        parsed = adapter.validate_json(body)
    except ValidationError as exc:
        details = []
        for err in exc.errors(include_url=False, include_input=False):
            msg = err["msg"]
            if err["type"] in ("too_long", "too_short") and err["loc"] == ("events",):
                msg = f"a batch holds 1 to {MAX_BATCH} events, not {err['ctx']['actual_length']}"
            details.append({"path": _path(err["loc"]), "message": msg})
        raise _invalid(details) from None
    events: list[IngestEvent] = parsed["events"] if prefix else [parsed]
    missing = [{"path": _path([*prefix, i, "userId"] if prefix else ["userId"]),
                "message": "userId or anonymousId is required"}
               for i, e in enumerate(events) if not (e.get("userId") or e.get("anonymousId"))]
    if missing:
        raise _invalid(missing)
    return events


def canonical(event: IngestEvent, now: datetime, location: bool | None) -> dict[str, Any]:
    millis = event.get("timestamp")
    properties = dict(event.get("properties") or {})
    if location is not None:
        properties[LOCATION_PROPERTY] = location
    anonymous = event.get("anonymousId") or ""
    return {
        "user_id": event.get("userId") or anonymous,
        "anonymous_id": anonymous,
        "event_timestamp": now if millis is None else datetime.fromtimestamp(millis / 1000, UTC),
        "event_type": event["name"],
        "asset_id": "",
        "labels": [],
        "properties": json_text(properties),
    }


# -- HTTP ------------------------------------------------------------------------------
def _error(status: int, message: str, headers: dict[str, str] | None = None,
           details: list[dict[str, str]] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"statusCode": status, "error": HTTPStatus(status).phrase,
                            "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse(body, status_code=status, headers=headers)


def _failure(_: Request, exc: UserFluxError | RequestValidationError) -> JSONResponse:
    if isinstance(exc, RequestValidationError):  # header, query, content type
        exc = _invalid([{"path": _path(e["loc"]), "message": e["msg"]} for e in exc.errors()])
    return _error(exc.status, exc.message, details=exc.details)


# Every failure of a UserFlux route -> UserFlux's error shape (never FastAPI's).
UserFluxRoute = error_route(_error, (UserFluxError, RequestValidationError), _failure)
router = APIRouter(prefix="/compat/userflux", tags=["UserFlux"], route_class=UserFluxRoute)


LocationEnrichment = Annotated[
    bool | None,
    Query(alias="locationEnrichment",
          description=f"Stored with each event as the property `{LOCATION_PROPERTY}`"),
]


_RESPONSES: dict[int | str, dict[str, Any]] = {
    204: {"description": "Accepted: the broker holds every event"},
    **{code: {"description": "`{statusCode, error, message}` (400 adds `details`)"}
       for code in (400, 401, 403, 413, 503, 504)},
}


async def _accept(request: Request, gateway: GatewayDep, program_id: str,
                  location: bool | None, batch: bool) -> Response:
    body = await read_json_body(request, gateway.settings.max_body_bytes)
    events = parse(BATCH, body, ["events"]) if batch else parse(ONE, body, [])
    now = datetime.now(UTC)
    await ingest(gateway, program_id, [canonical(e, now, location) for e in events],
                 queue_updates=not gateway.settings.dialect_waits_for_state(program_id),
                 process_user_actions=True, source=SOURCE)
    return Response(status_code=204)


@router.post(
    "/event/ingest", status_code=204, summary="Ingest a new user event",
    openapi_extra=json_body_doc(inline_defs(ONE.json_schema())),
    responses=_RESPONSES, response_class=Response,
)
async def ingest_event(request: Request, gateway: GatewayDep, program_id: WriteProgram,
                       location: LocationEnrichment = None) -> Response:
    return await _accept(request, gateway, program_id, location, batch=False)


@router.post(
    "/event/ingest/batch", status_code=204, summary="Ingest a batch of user events",
    description=f"1 to {MAX_BATCH} events.",
    openapi_extra=json_body_doc(inline_defs(BATCH.json_schema())),
    responses=_RESPONSES, response_class=Response,
)
async def ingest_batch(request: Request, gateway: GatewayDep, program_id: WriteProgram,
                       location: LocationEnrichment = None) -> Response:
    return await _accept(request, gateway, program_id, location, batch=True)
