"""Amazon Personalize (personalize-events) dialect: ``/compat/personalize/{events,items,users}``.

Point an AWS SDK at it: ``boto3.client("personalize-events",
endpoint_url="http://<gateway>/compat/personalize", region_name=<any>,
aws_access_key_id=..., aws_secret_access_key=...)`` with a key from ``sluice keys create
--sigv4 --program P --scope write``. Requests are checked for a valid SigV4 signature
(service ``personalize``) whenever the gateway requires keys.

PutEvents (``POST /events``) -> canonical events, source ``personalize``:
  ``trackingId`` names the program. user_id = ``userId``, or ``sessionId`` when there is no
  ``userId`` (Personalize ties anonymous events to the session; ``anonymous_id`` then holds
  the sessionId too, so such events can be told apart and re-keyed later); session_id =
  ``sessionId``; event_timestamp = ``sentAt`` (epoch seconds) in UTC; event_type =
  ``eventType``; asset_id = ``itemId`` or ""; labels = [] (the asset's labels come from the
  catalog); client_event_id = ``eventId`` (a retried call with the same eventId is stored
  once); value = ``eventValue``; properties = the ``properties`` JSON object (sent as a JSON
  string; not JSON or not an object -> 400) plus ``impression``, ``recommendationId`` and
  ``metricAttribution`` when given. Events are answered once the broker holds them: the SDK
  has no ``queue_updates`` knob, and waiting for user state would turn a late agent into a
  5xx that the SDK retries on its own (resending events that have no eventId), so this
  dialect always uses queue_updates=true.
PutItems (``POST /items``) -> the asset catalog, exactly as ``PUT /assets``: asset_id =
  ``itemId``, labels = the values of the categorical property named by
  ``SLUICE_PERSONALIZE_LABEL_PROPERTY`` (default CATEGORY; matched like Personalize maps
  schema fields to camelCase keys, so CATEGORY, category and Category all match; values
  split on ``|``), attributes = all the properties. Replaces the item, as Personalize does.
PutUsers (``POST /users``) -> one canonical event per user, event_type ``user_properties``,
  asset_id "", properties = the user's properties, event_timestamp = time of receipt,
  process_user_actions=false: the user's metadata is kept (in ClickHouse, with the user's
  events) and changes no label weights.
The program of PutItems/PutUsers is the dataset group named in ``datasetArn``
(``arn:aws:personalize:<region>:<account>:dataset/<program>/ITEMS`` or ``/USERS``).

Success: 200 with an empty body, as AWS answers. Errors as AWS shapes them, so the SDK
raises its modelled exceptions: header ``x-amzn-ErrorType`` and body ``{"__type",
"message"}``. 400 InvalidInputException: any invalid input (more than 10 events, missing
or bad fields, bad JSON). 403 MissingAuthenticationTokenException,
IncompleteSignatureException, InvalidSignatureException (wrong secret, or X-Amz-Date more
than 15 minutes off), UnrecognizedClientException (unknown or revoked key),
AccessDeniedException (a key of another program, or a read key). 413
RequestEntityTooLargeException. 503 ServiceUnavailableException + Retry-After: the broker
did not take the events (nothing is reported accepted; the SDK retries by itself).
Order: the signature is checked first, then the body (400), then the key's program (403).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, NotRequired

import orjson
from fastapi import APIRouter, Request, Response
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

from services.gateway.auth import AuthError, authenticate_sigv4, authorize
from services.gateway.body import json_body_doc, read_body
from services.gateway.deps import Gateway, GatewayDep
from services.gateway.dialects.common import error_route, inline_defs, retry_after, unavailable
from services.gateway.errors import UpdateTimeout
from services.gateway.ingest import ingest
from services.gateway.routes.assets import _publish as publish_assets
from services.gateway.routes.assets import _record as asset_record

SOURCE = "personalize"
MAX_EVENTS = 10
USER_PROPERTIES_EVENT = "user_properties"
# Personalize refuses these as keys of an event's properties (case-insensitive).
RESERVED_PROPERTIES = {"userid", "sessionid", "eventtype", "timestamp", "recommendationid",
                       "impression"}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MIN_TS, _MAX_TS = datetime(1900, 1, 1, tzinfo=UTC), datetime(2300, 1, 1, tzinfo=UTC)
_DATASET_ARN = re.compile(r"^arn:[a-z\d-]+:personalize:[^:]*:[^:]*:dataset/(?P<program>[^/]+)"
                          r"/(?P<kind>[A-Z_]+)$")


Text40 = Annotated[str, Strict(), StringConstraints(min_length=1, max_length=40)]
Text256 = Annotated[str, Strict(), StringConstraints(min_length=1, max_length=256)]
Text1024 = Annotated[str, Strict(), StringConstraints(min_length=1, max_length=1024)]
Text24000 = Annotated[str, Strict(), StringConstraints(min_length=1, max_length=24000)]
Text32000 = Annotated[str, Strict(), StringConstraints(min_length=1, max_length=32000)]
Number = Annotated[float, Strict(), Field(allow_inf_nan=False)]


@with_config(ConfigDict(extra="ignore", title="PersonalizeMetricAttribution"))
class MetricAttribution(TypedDict):
    eventAttributionSource: Text1024


@with_config(ConfigDict(extra="ignore", title="PersonalizeEvent"))
class PEvent(TypedDict):
    eventType: Text256
    sentAt: Annotated[Number, Field(description="Epoch seconds")]
    eventId: NotRequired[Text256]
    eventValue: NotRequired[Number]
    itemId: NotRequired[Text256]
    properties: NotRequired[Text1024]
    impression: NotRequired[Annotated[list[Text256], Field(min_length=1, max_length=25)]]
    recommendationId: NotRequired[Text40]
    metricAttribution: NotRequired[MetricAttribution]


@with_config(ConfigDict(extra="ignore", title="PersonalizePutEvents"))
class PutEvents(TypedDict):
    trackingId: Text256
    sessionId: Text256
    userId: NotRequired[Text256]
    eventList: Annotated[list[PEvent], Field(min_length=1, max_length=MAX_EVENTS)]


@with_config(ConfigDict(extra="ignore", title="PersonalizeItem"))
class PItem(TypedDict):
    itemId: Text256
    properties: NotRequired[Text32000]


@with_config(ConfigDict(extra="ignore", title="PersonalizePutItems"))
class PutItems(TypedDict):
    datasetArn: Text256
    items: Annotated[list[PItem], Field(min_length=1, max_length=10)]


@with_config(ConfigDict(extra="ignore", title="PersonalizeUser"))
class PUser(TypedDict):
    userId: Text256
    properties: NotRequired[Text24000]


@with_config(ConfigDict(extra="ignore", title="PersonalizePutUsers"))
class PutUsers(TypedDict):
    datasetArn: Text256
    users: Annotated[list[PUser], Field(min_length=1, max_length=10)]


PUT_EVENTS, PUT_ITEMS, PUT_USERS = TypeAdapter(PutEvents), TypeAdapter(PutItems), TypeAdapter(PutUsers)


# -- errors in AWS's shape ----------------------------------------------------------------
class AwsError(Exception):
    def __init__(self, status: int, type_: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.type, self.message, self.headers = status, type_, message, headers or {}


def invalid_input(message: str) -> AwsError:
    return AwsError(400, "InvalidInputException", message)


def _aws_response(exc: AwsError) -> JSONResponse:
    return JSONResponse({"__type": exc.type, "message": exc.message}, status_code=exc.status,
                        headers={"x-amzn-ErrorType": exc.type} | exc.headers)


# The failures every dialect shares (services.gateway.dialects.common), as AWS types them.
_SHARED_TYPES = {413: "RequestEntityTooLargeException", 503: "ServiceUnavailableException"}


def _shape(status: int, message: str, *, headers: dict[str, str] | None = None) -> JSONResponse:
    return _aws_response(AwsError(status, _SHARED_TYPES[status], message, headers))


def _failure(request: Request, exc: AwsError | AuthError | UpdateTimeout) -> JSONResponse:
    if isinstance(exc, AuthError):
        # AWS answers every authentication and authorisation failure with 403
        exc = AwsError(403, exc.aws_type, exc.message)
    elif isinstance(exc, UpdateTimeout):  # AWS has no 504: as if the broker had not taken them
        return _shape(503, unavailable(exc), headers=retry_after(request))
    return _aws_response(exc)


# Every failure of these routes answers in AWS's error shape, not FastAPI's.
AwsErrorRoute = error_route(_shape, (AwsError, AuthError, UpdateTimeout), _failure)
router = APIRouter(prefix="/compat/personalize", tags=["Amazon Personalize"],
                   route_class=AwsErrorRoute)


# -- request handling ----------------------------------------------------------------------
async def _authenticated(request: Request, gateway: Gateway) -> tuple[bytes, Any]:
    """The body, and the key that signed it (None when the gateway runs open)."""
    body = await read_body(request, gateway.settings.max_body_bytes)
    return body, authenticate_sigv4(gateway, request, body)


def _validate(adapter: TypeAdapter[Any], body: bytes) -> Any:
    if not body.strip():
        raise invalid_input("request body is empty")
    try:
        return adapter.validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        details = "; ".join(
            f"Value at '{'.'.join(str(p) for p in err['loc']) or 'body'}' failed to satisfy "
            f"constraint: {err['msg']}" for err in errors
        )
        n = len(errors)
        raise invalid_input(f"{n} validation error{'s' if n > 1 else ''} detected: {details}") from None


def _json_object(text: str | None, where: str) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise invalid_input(f"{where}: properties must be a JSON object in a string, "
                            f"e.g. '{{\"numberOfRatings\": \"12\"}}'") from None
    if not isinstance(value, dict):
        raise invalid_input(f"{where}: properties must be a JSON object, not "
                            f"{type(value).__name__}")
    return value


def _sent_at(seconds: float, where: str) -> datetime:
    try:
        ts = _EPOCH + timedelta(seconds=seconds)
    except OverflowError:
        ts = _MAX_TS
    if not _MIN_TS <= ts < _MAX_TS:
        raise invalid_input(f"{where}.sentAt: must be epoch seconds between the years 1900 "
                            "and 2299")
    return ts


def _program_of(dataset_arn: str, kind: Literal["ITEMS", "USERS"]) -> str:
    match = _DATASET_ARN.match(dataset_arn)
    if match is None or match["kind"] != kind:
        raise invalid_input(f"datasetArn must be arn:aws:personalize:<region>:<account>:dataset/"
                            f"<dataset group = program>/{kind}, not {dataset_arn!r}")
    return match["program"]


def to_canonical(request: PutEvents) -> list[dict[str, Any]]:
    """PutEvents -> canonical event dicts for :func:`ingest` (see the module docstring)."""
    session = request["sessionId"]
    user = request.get("userId")
    events = []
    for i, e in enumerate(request["eventList"]):
        where = f"eventList.{i}"
        props = _json_object(e.get("properties"), where)
        reserved = sorted(k for k in props if k.lower() in RESERVED_PROPERTIES)
        if reserved:
            raise invalid_input(f"{where}.properties: {', '.join(reserved)} cannot be a key of "
                                "properties (reserved by Personalize)")
        for name in ("impression", "recommendationId", "metricAttribution"):
            if name in e:
                props[name] = e[name]  # type: ignore[literal-required]
        event: dict[str, Any] = {
            "user_id": user or session,
            "event_timestamp": _sent_at(e["sentAt"], where),
            "event_type": e["eventType"],
            "asset_id": e.get("itemId", ""),
            "labels": [],
            "session_id": session,
            "properties": orjson.dumps(props).decode(),
        }
        if user is None:
            event["anonymous_id"] = session
        if "eventId" in e:
            event["client_event_id"] = e["eventId"]
        if "eventValue" in e:
            event["value"] = e["eventValue"]
        events.append(event)
    return events


def item_labels(properties: dict[str, Any], label_property: str, where: str) -> list[str]:
    """The labels of an item: its categorical ``label_property`` split on ``|``. Keys match
    without regard to case or underscores (schema field CATEGORY_L1 = key categoryL1)."""
    wanted = label_property.replace("_", "").lower()
    value = next((v for k, v in properties.items() if k.replace("_", "").lower() == wanted), None)
    if value is None:
        return []
    if isinstance(value, list):
        parts = [str(v) for v in value]
    elif isinstance(value, str | int | float) and not isinstance(value, bool):
        parts = str(value).split("|")
    else:
        raise invalid_input(f"{where}.properties.{label_property}: must be a string of "
                            "categories separated by |")
    labels = [p.strip() for p in parts if p.strip()]
    if any(len(label) > 256 for label in labels) or len(labels) > 1000:
        raise invalid_input(f"{where}.properties.{label_property}: at most 1000 categories "
                            "of at most 256 characters")
    return labels


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "InvalidInputException (x-amzn-ErrorType), body {__type, message}"},
    403: {"description": "Missing/invalid SigV4 signature, unknown or revoked key "
          "(UnrecognizedClientException, InvalidSignatureException, ...), or a key of another "
          "program or a read key (AccessDeniedException)"},
    503: {"description": "ServiceUnavailableException: the broker did not take the events; "
          "nothing was accepted"},
}


@router.post("/events", summary="PutEvents", status_code=200, response_class=Response,
             responses={200: {"description": "Recorded (empty body)"}, **ERRORS},
             description="Record 1 to 10 events of one session (trackingId = program).",
             openapi_extra=json_body_doc(inline_defs(PUT_EVENTS.json_schema())))
async def put_events(request: Request, gateway: GatewayDep) -> Response:
    body, key = await _authenticated(request, gateway)
    parsed: PutEvents = _validate(PUT_EVENTS, body)
    events = to_canonical(parsed)
    if key is not None:
        authorize(key, parsed["trackingId"], "write")
    await ingest(gateway, parsed["trackingId"], events, queue_updates=True,
                 process_user_actions=True, source=SOURCE)
    return Response(status_code=200)


@router.post("/items", summary="PutItems", status_code=200, response_class=Response,
             responses={200: {"description": "Upserted (empty body)"}, **ERRORS},
             description="Add or replace 1 to 10 items of the catalog (the dataset group in "
             "datasetArn = program); their categorical property "
             "SLUICE_PERSONALIZE_LABEL_PROPERTY becomes the asset's labels.",
             openapi_extra=json_body_doc(inline_defs(PUT_ITEMS.json_schema())))
async def put_items(request: Request, gateway: GatewayDep) -> Response:
    body, key = await _authenticated(request, gateway)
    parsed: PutItems = _validate(PUT_ITEMS, body)
    program_id = _program_of(parsed["datasetArn"], "ITEMS")
    label_property = gateway.settings.personalize_label_property
    records = []
    for i, item in enumerate(parsed["items"]):
        props = _json_object(item.get("properties"), f"items.{i}")
        labels = item_labels(props, label_property, f"items.{i}")
        records.append(asset_record(program_id, item["itemId"], labels, props, deleted=False))
    if key is not None:
        authorize(key, program_id, "write")
    await publish_assets(gateway, records)
    return Response(status_code=200)


@router.post("/users", summary="PutUsers", status_code=200, response_class=Response,
             responses={200: {"description": "Stored (empty body)"}, **ERRORS},
             description="Store 1 to 10 users' metadata (the dataset group in datasetArn = "
             "program) as `user_properties` events that change no label weights.",
             openapi_extra=json_body_doc(inline_defs(PUT_USERS.json_schema())))
async def put_users(request: Request, gateway: GatewayDep) -> Response:
    body, key = await _authenticated(request, gateway)
    parsed: PutUsers = _validate(PUT_USERS, body)
    program_id = _program_of(parsed["datasetArn"], "USERS")
    now = datetime.now(UTC)
    events = [
        {
            "user_id": user["userId"],
            "event_timestamp": now,
            "event_type": USER_PROPERTIES_EVENT,
            "asset_id": "",
            "labels": [],
            "properties": orjson.dumps(_json_object(user.get("properties"), f"users.{i}")).decode(),
        }
        for i, user in enumerate(parsed["users"])
    ]
    if key is not None:
        authorize(key, program_id, "write")
    await ingest(gateway, program_id, events, queue_updates=True, process_user_actions=False,
                 source=SOURCE)
    return Response(status_code=200)
