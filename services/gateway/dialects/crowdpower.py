"""CrowdPower's customer events: ``POST /compat/crowdpower/events`` and ``.../events/bulk``,
and ``GET /compat/crowdpower/users/{user_id}`` (the user's session, as the agents keep it).

In: one event ``{user_id | email, action, properties, created_at, update_session}``
(``created_at`` epoch seconds, default the time of receipt; ``update_session`` default
true), or ``{user_id | email, events: [{action, properties, created_at, update_session}]}``
with 1 to 100 events (CrowdPower documents no limit: ours, the retail vendor's figure).
Optional fields may be null; unknown fields are ignored.

Mapping: user_id = ``user_id``, or the ``email`` when there is no user_id (CrowdPower
identifies a customer by either); ``email`` is stored as email; event_type = ``action``;
asset_id = "" (CrowdPower events name no item); properties -> JSON text;
``update_session`` -> canonical update_session: the agents count the event as session
activity, which ``GET .../users/{user_id}`` (and ``GET /users/{user_id}``) shows.
Auth: ``Authorization: Bearer`` key, scope write for events, read for users.

Out: CrowdPower's envelope. 200 ``{"success": true, "code": 200, "data": null}`` once the
broker holds every event. Failures keep it: ``{"success": false, "code": <HTTP status>,
"data": null, "message": "..."}``; 422 (invalid) has ``data: {"errors": [{"field",
"message"}]}``. 401/403 key, 413 body too large, 503 + Retry-After broker unavailable
(nothing accepted), 504 user state late (events durable: do not resend).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, NotRequired

from fastapi import APIRouter, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import (
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    with_config,
)
from typing_extensions import TypedDict

from services.gateway.body import json_body_doc, read_json_body
from services.gateway.deps import GatewayDep
from services.gateway.dialects.common import (
    ReadProgram,
    WriteProgram,
    error_route,
    inline_defs,
    json_text,
)
from services.gateway.ingest import ingest
from services.gateway.routes.profiles import profile
from services.gateway.validate import Id, Properties

SOURCE = "crowdpower"
MAX_BULK = 100

Email = Annotated[str, StringConstraints(min_length=3, max_length=512, pattern=r"^[^@\s]+@[^@\s]+$")]
# Epoch seconds of years 1900..2299, what ClickHouse DateTime64 can hold.
EpochSeconds = Annotated[
    float, Strict(), Field(ge=-2_208_988_800, lt=10_413_792_000, allow_inf_nan=False,
                           description="When the event happened, UNIX seconds")
]
StrictBool = Annotated[bool, Strict()]


@with_config(ConfigDict(extra="ignore", title="CrowdPowerBulkEvent"))
class BulkEvent(TypedDict):
    action: Id
    properties: NotRequired[Properties | None]
    created_at: NotRequired[EpochSeconds | None]
    update_session: NotRequired[StrictBool | None]


@with_config(ConfigDict(extra="ignore", title="CrowdPowerEvent"))
class CustomerEvent(BulkEvent):
    user_id: NotRequired[Id | None]
    email: NotRequired[Email | None]


@with_config(ConfigDict(extra="ignore", title="CrowdPowerBulk"))
class Bulk(TypedDict):
    user_id: NotRequired[Id | None]
    email: NotRequired[Email | None]
    events: Annotated[list[BulkEvent], Field(min_length=1, max_length=MAX_BULK)]


ONE = TypeAdapter(CustomerEvent)
BULK = TypeAdapter(Bulk)


class CrowdPowerError(Exception):
    def __init__(self, status: int, message: str, errors: list[dict[str, str]] | None = None):
        self.status, self.message, self.errors = status, message, errors


def _field(loc: Any) -> str:
    return ".".join(str(p) for p in loc)


def _invalid(errors: list[dict[str, str]]) -> CrowdPowerError:
    return CrowdPowerError(422, "; ".join(f"{e['field']}: {e['message']}" if e["field"]
                                          else e["message"] for e in errors), errors)


def _validate(adapter: TypeAdapter[Any], body: bytes) -> dict[str, Any]:
    try:
        parsed: dict[str, Any] = adapter.validate_json(body)
    except ValidationError as exc:
        errors = []
        for err in exc.errors(include_url=False, include_input=False):
            msg = err["msg"]
            if err["type"] in ("too_long", "too_short") and err["loc"] == ("events",):
                msg = f"a bulk request holds 1 to {MAX_BULK} events, not {err['ctx']['actual_length']}"
            errors.append({"field": _field(err["loc"]), "message": msg})
        raise _invalid(errors) from None
    if not (parsed.get("user_id") or parsed.get("email")):
        raise _invalid([{"field": "user_id", "message": "user_id or email is required"}])
    return parsed


def canonical(user_id: str | None, email: str | None, event: BulkEvent,
              now: datetime) -> dict[str, Any]:
    seconds = event.get("created_at")
    update_session = event.get("update_session")
    return {
        "user_id": user_id or email,
        "email": email or "",
        "event_timestamp": now if seconds is None else datetime.fromtimestamp(seconds, UTC),
        "event_type": event["action"],
        "asset_id": "",
        "labels": [],
        "properties": json_text(event.get("properties") or {}),
        "update_session": True if update_session is None else update_session,
    }


# -- HTTP ------------------------------------------------------------------------------
def _envelope(status: int, message: str | None = None, data: Any = None,
              headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"success": status == 200, "code": status, "data": data}
    if message is not None:
        body["message"] = message
    return JSONResponse(body, status_code=status, headers=headers)


def _failure(_: Request, exc: CrowdPowerError | RequestValidationError) -> JSONResponse:
    if isinstance(exc, RequestValidationError):  # header, path, content type
        exc = _invalid([{"field": _field(e["loc"]), "message": e["msg"]} for e in exc.errors()])
    data = {"errors": exc.errors} if exc.errors is not None else None
    return _envelope(exc.status, exc.message, data)


# Every failure of a CrowdPower route -> its envelope with success false.
CrowdPowerRoute = error_route(_envelope, (CrowdPowerError, RequestValidationError), _failure)
router = APIRouter(prefix="/compat/crowdpower", tags=["CrowdPower"], route_class=CrowdPowerRoute)
_OK = b'{"success":true,"code":200,"data":null}'
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "`{success: true, code: 200, data: null}`"},
    **{code: {"description": "`{success: false, code, data, message}`"}
       for code in (401, 403, 413, 422, 503, 504)},
}


async def _accept(request: Request, gateway: GatewayDep, program_id: str,
                  adapter: TypeAdapter[Any]) -> Response:
    parsed = _validate(adapter, await read_json_body(request, gateway.settings.max_body_bytes))
    now = datetime.now(UTC)
    user_id, email = parsed.get("user_id"), parsed.get("email")
    events = [canonical(user_id, email, e, now) for e in parsed.get("events", [parsed])]
    await ingest(gateway, program_id, events,
                 queue_updates=not gateway.settings.dialect_waits_for_state(program_id),
                 process_user_actions=True, source=SOURCE)
    return Response(_OK, media_type="application/json")


@router.post(
    "/events", summary="Create customer event",
    openapi_extra=json_body_doc(inline_defs(ONE.json_schema())),
    responses=_RESPONSES, response_class=Response,
)
async def create_event(request: Request, gateway: GatewayDep, program_id: WriteProgram) -> Response:
    return await _accept(request, gateway, program_id, ONE)


@router.post(
    "/events/bulk", summary="Create multiple customer events",
    description=f"1 to {MAX_BULK} events of one customer.",
    openapi_extra=json_body_doc(inline_defs(BULK.json_schema())),
    responses=_RESPONSES, response_class=Response,
)
async def create_events(request: Request, gateway: GatewayDep, program_id: WriteProgram) -> Response:
    return await _accept(request, gateway, program_id, BULK)


@router.get(
    "/users/{user_id}", summary="A customer's session",
    description="`data`: the user's events counted and session (`last_seen`, "
    "`session_started`: epoch seconds of event times; `sessions`), from the agents' state. "
    "An unknown user has 0 and nulls.",
    responses=_RESPONSES,
)
async def get_user(gateway: GatewayDep, program_id: ReadProgram,
                   user_id: Annotated[str, Path(min_length=1, max_length=512)]) -> Response:
    return _envelope(200, data=await profile(gateway, program_id, user_id))
