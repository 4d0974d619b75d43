"""Segment's HTTP Tracking API under ``/compat/segment``: ``/v1/batch``, ``/v1/import`` and
``/v1/track|identify|page|screen|group|alias``, so ``analytics.Client(write_key,
host=<gateway>/compat/segment)`` of segment-analytics-python (and rudder-sdk-python, and
analytics-python 1.x) works unchanged.

In: a batch ``{"batch": [message, ...], "context", "writeKey"}`` (``/v1/batch``,
``/v1/import``; each message has its ``type``) or one message (the route names its type).
The write key: HTTP Basic's username (as the SDKs send it), else the body's ``writeKey``;
it names the program as PostHog's token does (services.gateway.dialects.posthog). Nulls
are accepted where a field is optional; unknown fields are ignored. Segment's limits: 32 KB
a message, 500 KB a request (400); a gzip body (rudder-sdk-python's default) is inflated to
at most SLUICE_MAX_BODY_BYTES (413 beyond).

Mapping: userId (else anonymousId; strings or numbers) -> user_id, anonymousId ->
anonymous_id, ``event`` (track) or the type (``identify``, ``page``, ...) -> event_type,
messageId -> client_event_id (absent: a UUIDv7), timestamp (else originalTimestamp, else
receipt time) -> event_timestamp, corrected for the client's clock by ``sentAt`` (see
common.skew_corrected; the raw one -> client_timestamp), properties -> properties, with ``$traits``,
``$context`` (the batch's context under the message's), ``$name``, ``$groupId`` and
``$previousId`` added where sent. Asset and labels, for label weights and recommendations:
asset_id = property ``asset_id``, else ``product_id`` (Segment's e-commerce spec); labels =
properties ``category`` and ``labels``. A message with ``products[]`` (Order Completed, Cart
Viewed, ...) becomes one event per product: each product's ``product_id`` its asset, its
``category`` its labels, ``properties.products`` only that product, client_event_id
``<messageId>#<index>`` (so a retried message is still stored once).

Out: 200 ``{"success": true}`` once the broker holds every event (analytics-python 1.x and
rudder-sdk-python take only 200). Failures: ``{"success": false, "code", "message"}`` (the
SDKs log ``code`` and ``message``): 400 malformed or over a limit, 401 bad key (403 a read
key), 413 too large, 503 + Retry-After broker unavailable, 504 user state late (durable).
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from functools import partial
from typing import Any, NotRequired

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ConfigDict, TypeAdapter, with_config
from typing_extensions import TypedDict

from services.gateway.body import header, json_body_doc, read_body
from services.gateway.deps import Gateway, GatewayDep
from services.gateway.dialects.common import (
    GZIP_MAGIC,
    MAX_ID,
    asset_of,
    error_route,
    gunzip,
    inline_defs,
    iso_time,
    json_text,
    key_program,
    labels_of,
    skew_corrected,
    text_id,
)
from services.gateway.ingest import ingest
from services.gateway.validate import made_up_ids

SOURCE = "segment"
PREFIX = "/compat/segment"
MAX_MESSAGE = 32 * 1024  # "32KB per call"
MAX_REQUEST = 500 * 1024  # "500KB per batch request"
TYPES = ("track", "identify", "page", "screen", "group", "alias")
# message field -> the property it is kept as
EXTRAS = {"traits": "$traits", "context": "$context", "name": "$name", "groupId": "$groupId",
          "previousId": "$previousId"}
REQUIRED = {"alias": "previousId", "group": "groupId"}  # a type -> the field it needs
_CODES = {401: "unauthorized", 403: "forbidden", 413: "payload_too_large",
          503: "service_unavailable", 504: "timeout"}


class SegmentError(Exception):
    def __init__(self, status: int, message: str, code: str = "invalid_request") -> None:
        self.status, self.message, self.code = status, message, code


def _invalid(message: str, code: str = "invalid_request") -> SegmentError:
    return SegmentError(400, message, code)


# -- body -> events -----------------------------------------------------------------------
def write_key(authorization: str | None, body: dict[str, Any]) -> str | None:
    """The write key: Basic's username (``Bearer <key>`` too), else the body's writeKey."""
    scheme, _, value = (authorization or "").strip().partition(" ")
    if scheme.lower() == "basic":
        try:
            user = base64.b64decode(value.strip(), validate=True).decode().partition(":")[0]
        except (binascii.Error, UnicodeDecodeError):
            raise SegmentError(401, "malformed Basic credentials", "unauthorized") from None
        if user:
            return user
    elif scheme.lower() == "bearer" and value.strip():
        return value.strip()
    key = body.get("writeKey")
    return key if isinstance(key, str) and key else None


def parse(body: bytes, kind: str | None) -> tuple[dict[str, Any], list[Any]]:
    """(the request object, its messages); Segment's size limits checked."""
    if len(body) > MAX_REQUEST:
        raise _invalid(f"the request is larger than {MAX_REQUEST // 1024} KB", "batch_too_large")
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _invalid(f"the body is not valid JSON: {exc}", "invalid_json") from None
    if not isinstance(parsed, dict):
        raise _invalid("the body must be a JSON object")
    messages = [parsed] if kind else parsed.get("batch")
    if not isinstance(messages, list) or not messages:
        raise _invalid("batch: must be an array of 1 or more messages")
    if len(body) > MAX_MESSAGE:  # else no message can be larger
        for i, message in enumerate(messages):
            if len(orjson.dumps(message)) > MAX_MESSAGE:
                raise _invalid(f"{_at(kind, i)}message is larger than {MAX_MESSAGE // 1024} KB",
                               "message_too_large")
    return parsed, messages


def _at(kind: str | None, i: int) -> str:
    return "" if kind else f"batch.{i}."


def canonical(message: Any, kind: str | None, where: str, shared_context: Any,
              now: datetime, batch_sent_at: Any = None) -> list[dict[str, Any]]:
    """One Segment message -> its canonical events (one per product of ``products[]``)."""
    if not isinstance(message, dict):
        raise _invalid(f"{where.rstrip('.') or 'the body'}: a message must be an object")
    kind = kind or message.get("type")
    if kind not in TYPES:
        raise _invalid(f"{where}type: must be one of {', '.join(TYPES)}")
    user, anonymous = _id(message, "userId", where), _id(message, "anonymousId", where)
    if not (user or anonymous):
        raise _invalid(f"{where}userId: userId or anonymousId is required")
    event_type = message.get("event") if kind == "track" else kind
    if not isinstance(event_type, str) or not 0 < len(event_type) <= MAX_ID:
        raise _invalid(f"{where}event: a track needs an event name of 1 to {MAX_ID} characters")
    required = REQUIRED.get(kind)
    if required and not _id(message, required, where):
        raise _invalid(f"{where}{required}: required for {kind}")
    properties = dict(_object(message, "properties", where))
    context = _object(message, "context", where)
    if isinstance(shared_context, dict) and shared_context:
        context = shared_context | context
    for field, name in EXTRAS.items():
        value = context if field == "context" else message.get(field)
        if value:
            properties[name] = value
    client_id, event_id = message.get("messageId"), None
    if client_id is None:
        client_id, event_id = made_up_ids()
    elif not isinstance(client_id, str) or not 0 < len(client_id) <= MAX_ID:
        raise _invalid(f"{where}messageId: must be a string of 1 to {MAX_ID} characters")
    event_ts, client_ts = _times(message, where, now, batch_sent_at)
    base = {"event_timestamp": event_ts, "user_id": user or anonymous,
            "anonymous_id": anonymous or "", "event_type": event_type}
    if client_ts is not None:
        base["client_timestamp"] = client_ts
    products = properties.get("products")
    items = [p for p in products if isinstance(p, dict)] if isinstance(products, list) else []
    if not items:
        return [base | {
            "asset_id": asset_of(properties) or asset_of(properties, "product_id"),
            "labels": labels_of(properties.get("category"), properties.get("labels")),
            "client_event_id": client_id, "event_id": event_id,
            "properties": json_text(properties)}]
    return [base | {
        "asset_id": asset_of(p) or asset_of(p, "product_id"),
        "labels": labels_of(p.get("category"), p.get("labels"), properties.get("labels")),
        "client_event_id": f"{client_id}#{i}",
        "properties": json_text(properties | {"products": [p]}),
    } for i, p in enumerate(items)]


def _id(message: dict[str, Any], field: str, where: str) -> str | None:
    value = message.get(field)
    text = text_id(value)
    if value is not None and (text is None or len(text) > MAX_ID):
        raise _invalid(f"{where}{field}: must be a string or number of at most {MAX_ID} "
                       "characters")
    return text or None


def _object(message: dict[str, Any], field: str, where: str) -> dict[str, Any]:
    value = message.get(field)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _invalid(f"{where}{field}: must be an object")
    return value


def _times(message: dict[str, Any], where: str, now: datetime,
           batch_sent_at: Any) -> tuple[datetime, datetime | None]:
    """(event_timestamp, client_timestamp): the client's time (``timestamp``, else
    ``originalTimestamp``) as it sent it, and corrected for its clock by ``sentAt`` (the
    message's, else the batch's); receipt time and None when it sent none."""
    value = message.get("timestamp")
    field = "timestamp"
    if value is None:
        value, field = message.get("originalTimestamp"), "originalTimestamp"
        if value is None:
            return now, None
    ts = iso_time(value)
    if ts is None:
        raise _invalid(f"{where}{field}: must be an ISO 8601 time of years 1900 to 2299")
    sent = message.get("sentAt")
    sent_at = None if sent is None else iso_time(sent)
    if sent_at is None and batch_sent_at is not None:
        sent_at = iso_time(batch_sent_at)
    return skew_corrected(ts, sent_at, now), ts


# -- HTTP ---------------------------------------------------------------------------------
def _error(status: int, message: str, *, headers: dict[str, str] | None = None,
           code: str | None = None) -> JSONResponse:
    return JSONResponse({"success": False, "code": code or _CODES.get(status, "error"),
                         "message": message}, status_code=status, headers=headers)


SegmentRoute = error_route(_error, (SegmentError,),
                           lambda _, exc: _error(exc.status, exc.message, code=exc.code),
                           slow_down=429)
router = APIRouter(prefix=PREFIX, tags=["Segment"], route_class=SegmentRoute)
_OK = b'{"success":true}'


async def accept(request: Request, gateway: Gateway, kind: str | None) -> Response:
    """A batch (``kind`` None) or one message of type ``kind``."""
    limit = gateway.settings.max_body_bytes
    body = await read_body(request, limit)
    if "gzip" in (header(request, b"content-encoding") or "").lower() or body[:2] == GZIP_MAGIC:
        try:
            body = gunzip(body, limit)
        except ValueError as exc:
            raise _invalid(str(exc)) from None
    parsed, messages = parse(body, kind)
    program_id = key_program(gateway, write_key(header(request, b"authorization"), parsed))
    now, shared = datetime.now(UTC), None if kind else parsed.get("context")
    sent_at = None if kind else parsed.get("sentAt")
    events = [event for i, message in enumerate(messages)
              for event in canonical(message, kind, _at(kind, i), shared, now, sent_at)]
    await ingest(gateway, program_id, events,
                 queue_updates=not gateway.settings.dialect_waits_for_state(program_id),
                 process_user_actions=True, source=SOURCE)
    return Response(_OK, media_type="application/json")


@with_config(ConfigDict(extra="allow", title="SegmentMessage"))
class SegmentMessage(TypedDict):
    type: NotRequired[str]
    userId: NotRequired[str | None]
    anonymousId: NotRequired[str | None]
    event: NotRequired[str | None]
    properties: NotRequired[dict[str, Any] | None]
    traits: NotRequired[dict[str, Any] | None]
    context: NotRequired[dict[str, Any] | None]
    timestamp: NotRequired[str | None]
    messageId: NotRequired[str | None]


@with_config(ConfigDict(extra="allow", title="SegmentBatch"))
class SegmentBatch(TypedDict):
    batch: list[SegmentMessage]
    writeKey: NotRequired[str]
    context: NotRequired[dict[str, Any] | None]


_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": '`{"success": true}`: the broker holds every event'},
    **{code: {"description": "`{success: false, code, message}`"}
       for code in (400, 401, 403, 413, 503, 504)},
}


def _endpoint(name: str, kind: str | None) -> Any:
    """Route ``/v1/<name>`` (a batch when ``kind`` is None); returns the hot path's call."""
    async def endpoint(request: Request, gateway: GatewayDep) -> Response:
        return await accept(request, gateway, kind)

    endpoint.__name__ = f"segment_{name}"
    schema = SegmentBatch if kind is None else SegmentMessage
    router.add_api_route(
        f"/v1/{name}", endpoint, methods=["POST"], response_class=Response,
        summary=name.capitalize(), responses=_RESPONSES,
        openapi_extra=json_body_doc(inline_defs(TypeAdapter(schema).json_schema())))
    return partial(accept, kind=kind)  # the hot path's: no coroutine around accept's


# path -> call: the routes, and the hot path's list of them (services.gateway.hotpath)
ENDPOINTS: dict[str, Any] = {
    f"{PREFIX}/v1/{name}": _endpoint(name, kind)
    for name, kind in (("batch", None), ("import", None), *((t, t) for t in TYPES))
}
