"""PostHog's capture API under ``/compat/posthog``: ``/batch/`` (posthog-python) and the
event routes ``/e/``, ``/i/v0/e/``, ``/capture/``, ``/track/`` (posthog-js), each with or
without the trailing slash, so ``Posthog(token, host=<gateway>/compat/posthog)`` works.

In: a batch ``{"api_key" | "token", "batch": [event, ...]}``, an array of events, or one
event ``{event, distinct_id, properties, timestamp, uuid, $set, $set_once}``. The body may
be gzip (``Content-Encoding: gzip``, ``?compression=gzip-js`` or just its magic bytes) and
is then inflated to at most SLUICE_MAX_BODY_BYTES (413 beyond: no decompression bombs);
a form body ``data=<base64 JSON>`` (posthog-js without gzip) is read on every route.
``lz64`` is refused (400): posthog-js falls back to gzip-js or base64.

The token (batch ``api_key``/``token``, else each event's ``api_key``/``token``/
``properties.token``, all the same) names the program: a live Sluice write key of it when
a keys file is configured; with none, the token itself is the program id.

Mapping: distinct_id (else ``properties.distinct_id``; strings or numbers) -> user_id,
event -> event_type, uuid -> client_event_id (absent: a UUIDv7, as PostHog's capture
makes), timestamp (ISO 8601; absent: receipt time less ``offset`` ms) -> event_timestamp,
properties -> properties with a top-level ``$set``/``$set_once`` moved in and ``token``
dropped (it is the write key); properties ``asset_id`` and ``labels`` (a string or list
of strings) -> asset_id and labels, so the events feed label weights. The timestamp is
corrected for the client's clock by the batch's ``sent_at`` (or posthog-js's ``_``) as
PostHog does (see common.skew_corrected); the raw one -> client_timestamp.

Out: 200 ``{"status": 1}`` once the broker holds every event (posthog-python takes only
200 as success). Failures in the shape of PostHog's API errors, ``{"type", "code",
"detail", "attr"}``: 400 malformed, 401 bad token (403 a read key), 413 too large, 503 +
Retry-After broker unavailable (nothing accepted), 504 user state late (durable).
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime, timedelta
from typing import Any, NotRequired
from urllib.parse import parse_qs

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

SOURCE = "posthog"
PREFIX = "/compat/posthog"
_CODES = {400: "invalid_payload", 401: "invalid_api_key", 403: "permission_denied",
          413: "payload_too_large", 503: "service_unavailable", 504: "timeout"}


class PostHogError(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status, self.message = status, message


def _invalid(message: str) -> PostHogError:
    return PostHogError(400, message)


# -- body -> events -----------------------------------------------------------------------
def decode(body: bytes, *, compression: str | None, encoding: str, form: bool,
           limit: int) -> Any:
    """The JSON a capture body carries, whichever way the SDK packed it."""
    if compression == "lz64":
        raise _invalid("lz64 compression is not supported: send gzip-js or base64")
    if compression in ("gzip", "gzip-js") or "gzip" in encoding or body[:2] == GZIP_MAGIC:
        body = _inflate(body, limit)
    if form or body[:5] == b"data=":
        body = _form_data(body, limit)
    if not body.strip():
        raise _invalid("the request body is empty")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _invalid(f"the body is not valid JSON: {exc}") from None


def _inflate(body: bytes, limit: int) -> bytes:
    try:
        return gunzip(body, limit)
    except ValueError as exc:
        raise _invalid(str(exc)) from None


def _form_data(body: bytes, limit: int) -> bytes:
    """``data=`` of a form body: JSON text, or base64 of it (as PostHog reads it: a ``+``
    that form decoding turned into a space is put back; padding may be missing)."""
    values = parse_qs(body.decode("latin-1"), keep_blank_values=True).get("data")
    if not values:
        raise _invalid("a form body needs its events in the field 'data'")
    data = values[-1].strip()
    if data[:1] in ("{", "["):
        return data.encode("latin-1")
    try:
        raw = base64.b64decode(data.replace(" ", "+").replace("-", "+").replace("_", "/") + "===")
    except (binascii.Error, ValueError):
        raise _invalid("the form field 'data' is neither JSON nor base64 of JSON") from None
    return _inflate(raw, limit) if raw[:2] == GZIP_MAGIC else raw


def events_of(parsed: Any) -> tuple[list[Any], str | None, str | None]:
    """(events, where they are located in errors: ``batch.``, ``""`` for an array, None for
    a single event; the batch's own token)."""
    if isinstance(parsed, dict) and "batch" in parsed:
        events, where, token = parsed["batch"], "batch.", _token(parsed, "")
        if not isinstance(events, list):
            raise _invalid("batch: must be an array of events")
    elif isinstance(parsed, list):
        events, where, token = parsed, "", None
    elif isinstance(parsed, dict):
        return [parsed], None, None
    else:
        raise _invalid("the body must be an event, an array of events or a batch object")
    if not events:
        raise _invalid(f"{where or 'the array'}: holds no events")
    return events, where, token


def item(where: str | None, i: int) -> str:
    """Where the ``i``-th event's fields are, in an error message."""
    return "" if where is None else f"{where}{i}."


def _token(obj: dict[str, Any], where: str) -> str | None:
    for name in ("api_key", "token"):
        value = obj.get(name)
        if value is not None:
            if not isinstance(value, str):
                raise _invalid(f"{where}{name}: must be a string")
            return value
    return None


def token_of(events: list[Any], batch_token: str | None, where: str | None) -> str | None:
    """The request's token: the batch's, else its events' (which must agree)."""
    if batch_token:
        return batch_token
    tokens = set()
    for i, event in enumerate(events):
        if isinstance(event, dict):
            props = event.get("properties")
            token = _token(event, item(where, i)) or (
                _token(props, f"{item(where, i)}properties.") if isinstance(props, dict) else None)
            if token:
                tokens.add(token)
    if len(tokens) > 1:
        raise _invalid("the events of one request carry different tokens")
    return tokens.pop() if tokens else None


def canonical(event: Any, where: str, now: datetime,
              sent_at: datetime | None = None) -> dict[str, Any]:
    """One PostHog event -> a canonical event dict (see the module docstring)."""
    if not isinstance(event, dict):
        raise _invalid(f"{where.rstrip('.') or 'the body'}: an event must be an object")
    name = event.get("event")
    if not isinstance(name, str) or not 0 < len(name) <= MAX_ID:
        raise _invalid(f"{where}event: required, a string of 1 to {MAX_ID} characters")
    properties = event.get("properties")
    if properties is None:
        properties = {}
    elif not isinstance(properties, dict):
        raise _invalid(f"{where}properties: must be an object")
    user = text_id(event.get("distinct_id"))
    if user is None:
        user = text_id(properties.get("distinct_id"))
    if not user or len(user) > MAX_ID:
        raise _invalid(f"{where}distinct_id: required, a string of 1 to {MAX_ID} characters")
    client_id, event_id = event.get("uuid"), None
    if client_id is None:
        client_id, event_id = made_up_ids()
    elif not isinstance(client_id, str) or not 0 < len(client_id) <= MAX_ID:
        raise _invalid(f"{where}uuid: must be a string of 1 to {MAX_ID} characters")
    properties.pop("token", None)  # the write key: never stored
    for key in ("$set", "$set_once"):
        if event.get(key) is not None and key not in properties:
            properties[key] = event[key]
    return _times(event, properties, now, sent_at, where) | {
        "user_id": user,
        "event_type": name,
        "asset_id": asset_of(properties),
        "labels": labels_of(properties.get("labels")),
        "client_event_id": client_id,
        "event_id": event_id,
        "properties": json_text(properties),
    }


def _times(event: dict[str, Any], properties: dict[str, Any], now: datetime,
           sent_at: datetime | None, where: str) -> dict[str, Any]:
    """event_timestamp corrected for the client's clock by the batch's ``sent_at`` (unless
    the event says ``$ignore_sent_at``), and client_timestamp as the client sent it."""
    value = event.get("timestamp")
    if value is None:
        offset = event.get("offset")
        if isinstance(offset, int) and not isinstance(offset, bool) and 0 < offset < 10**10:
            return {"event_timestamp": now - timedelta(milliseconds=offset)}
        return {"event_timestamp": now}
    ts = iso_time(value)
    if ts is None:
        raise _invalid(f"{where}timestamp: must be an ISO 8601 time of years 1900 to 2299")
    if properties.get("$ignore_sent_at") is True:
        sent_at = None
    return {"event_timestamp": skew_corrected(ts, sent_at, now), "client_timestamp": ts}


def sent_at_of(parsed: Any, query_ms: str | None) -> datetime | None:
    """When the client sent the request, by its clock: the batch's ``sent_at``, else
    posthog-js's ``_`` query parameter (epoch ms). Unreadable: none (no correction)."""
    if isinstance(parsed, dict) and (sent := iso_time(parsed.get("sent_at"))) is not None:
        return sent
    if query_ms and query_ms.isdigit() and len(query_ms) <= 15:
        try:
            return datetime.fromtimestamp(int(query_ms) / 1000, UTC)
        except (OverflowError, ValueError, OSError):
            return None
    return None


# -- HTTP ---------------------------------------------------------------------------------
def _error(status: int, message: str, *, headers: dict[str, str] | None = None) -> JSONResponse:
    kind = ("authentication_error" if status in (401, 403)
            else "server_error" if status >= 500 else "validation_error")
    return JSONResponse({"type": kind, "code": _CODES.get(status, "error"), "detail": message,
                         "attr": None}, status_code=status, headers=headers)


PostHogRoute = error_route(_error, (PostHogError,),
                           lambda _, exc: _error(exc.status, exc.message), slow_down=429)
router = APIRouter(prefix=PREFIX, tags=["PostHog"], route_class=PostHogRoute)
_OK = b'{"status":1}'


async def capture(request: Request, gateway: GatewayDep) -> Response:
    """Every capture route: the shapes do not depend on the path (as in PostHog)."""
    return await accept(request, gateway)


async def accept(request: Request, gateway: Gateway) -> Response:
    limit = gateway.settings.max_body_bytes
    # the SDKs' batches come without a query: parsing none saves a few percent a request
    query = request.query_params if request.scope.get("query_string") else {}
    parsed = decode(
        await read_body(request, limit), compression=query.get("compression"),
        encoding=(header(request, b"content-encoding") or "").lower(), limit=limit,
        form=(header(request, b"content-type") or "").startswith(
            "application/x-www-form-urlencoded"))
    events, where, batch_token = events_of(parsed)
    program_id = key_program(gateway, token_of(events, batch_token, where))
    now = datetime.now(UTC)
    sent_at = sent_at_of(parsed, query.get("_"))
    canonical_events = [canonical(e, item(where, i), now, sent_at) for i, e in enumerate(events)]
    await ingest(gateway, program_id, canonical_events,
                 queue_updates=not gateway.settings.dialect_waits_for_state(program_id),
                 process_user_actions=True, source=SOURCE)
    return Response(_OK, media_type="application/json")


@with_config(ConfigDict(extra="allow", title="PostHogEvent"))
class PostHogEvent(TypedDict):
    event: str
    distinct_id: str
    properties: NotRequired[dict[str, Any]]
    timestamp: NotRequired[str]
    uuid: NotRequired[str]


@with_config(ConfigDict(extra="allow", title="PostHogBatch"))
class PostHogBatch(TypedDict):
    api_key: str
    batch: list[PostHogEvent]


_DOC = json_body_doc(inline_defs(TypeAdapter(PostHogBatch | list[PostHogEvent] | PostHogEvent)
                                 .json_schema()))
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": '`{"status": 1}`: the broker holds every event'},
    **{code: {"description": "`{type, code, detail, attr}`"} for code in (400, 401, 403, 413,
                                                                          503, 504)},
}
# path -> endpoint: the routes, and the hot path's list of them (services.gateway.hotpath)
ENDPOINTS: dict[str, Any] = {}
for _path, _summary in (("/batch", "Capture a batch (posthog-python)"),
                        ("/e", "Capture events (posthog-js)"), ("/i/v0/e", "Capture events"),
                        ("/capture", "Capture events"), ("/track", "Capture events")):
    for _slash in ("/", ""):
        router.add_api_route(f"{_path}{_slash}", capture, methods=["POST"], summary=_summary,
                             include_in_schema=bool(_slash), response_class=Response,
                             responses=_RESPONSES, openapi_extra=_DOC)
        ENDPOINTS[f"{PREFIX}{_path}{_slash}"] = accept
