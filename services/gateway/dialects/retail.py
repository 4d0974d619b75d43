"""Retail typed events: ``POST /compat/retail/events`` -> canonical events.

In: one event object, or an array of 1 to 100 (the vendor's documented batch limit).
``type`` selects the kind; each kind has its own required fields (see :data:`KINDS`);
``timestamp`` is optional ISO 8601 (no offset = UTC), defaulting to the time of receipt.

Mapping: ``customerCode`` -> user_id, ``productCode`` -> asset_id, the kind -> its
canonical event_type (the one label weights are configured for: a sale is a
``purchase``), the kind's numeric field (``quantity``) -> value, every other field
(``price``, ``currency``, ``orderCode``, ...) -> properties, as JSON text.

Out (the vendor's document shows requests only; these shapes are ours, camelCase like it):
  200 ``{"status": "ok", "accepted": N}`` once the broker holds every event.
  4xx/5xx ``{"status": "error", "code": <HTTP status>, "message": "..."}``; an invalid
  body (422) adds ``errors: [{"index", "type", "field", "message"}]`` (index in the
  request's array, 0 for a single object; the event's kind where known) and
  ``availableTypes``. 401/403 bad key, 413 body too large, 503 + Retry-After broker
  unavailable (nothing accepted), 504 user state late (events durable: do not resend).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import reduce
from operator import or_
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    TypeAdapter,
    ValidationError,
    create_model,
)

from services.gateway.auth import AuthError, check_bearer
from services.gateway.body import read_json_body
from services.gateway.deps import GatewayDep, ProgramId
from services.gateway.errors import PayloadTooLarge, UpdateTimeout
from services.gateway.ingest import ingest
from services.gateway.publish import BrokerUnavailable
from services.gateway.validate import Id, Timestamp

SOURCE = "retail"
MAX_EVENTS = 100  # "You can load up to 100 events at once"

Quantity = Annotated[float, Strict(), Field(gt=0, allow_inf_nan=False)]


class ProductEvent(BaseModel):
    """A customer did something with one product. Unknown fields go to properties."""

    model_config = ConfigDict(extra="allow")
    timestamp: Timestamp | None = None
    customerCode: Id
    productCode: Id


class QuantityEvent(ProductEvent):
    quantity: Quantity


@dataclass(frozen=True)
class Kind:
    model: type[ProductEvent]
    event_type: str  # canonical event type: what label weights are configured by
    value: str | None = None  # the numeric field that becomes the canonical value


# The registry: a new kind is one line (and a model, if its fields are new).
KINDS: dict[str, Kind] = {
    "EventSale": Kind(QuantityEvent, "purchase", value="quantity"),
    "EventProductViewed": Kind(ProductEvent, "view"),
    "EventAddedToCart": Kind(QuantityEvent, "add_to_cart", value="quantity"),
    "EventRemovedFromCart": Kind(QuantityEvent, "remove_from_cart", value="quantity"),
    "EventProductClicked": Kind(ProductEvent, "click"),
    "EventAddedToWishlist": Kind(ProductEvent, "add_to_wishlist"),
}
AVAILABLE = list(KINDS)

# One model per kind, ``type`` its literal tag: a discriminated union validates each event
# against its own kind only, and errors name the kind (loc: index, kind, field).
_MODELS = [
    create_model(name, __base__=kind.model, type=(Literal[name], ...))  # type: ignore[arg-type]
    for name, kind in KINDS.items()
]
_UNION: Any = reduce(or_, _MODELS)
ONE: TypeAdapter[ProductEvent] = TypeAdapter(Annotated[_UNION, Field(discriminator="type")])
MANY: TypeAdapter[list[ProductEvent]] = TypeAdapter(
    Annotated[list[Annotated[_UNION, Field(discriminator="type")]],
              Field(min_length=1, max_length=MAX_EVENTS)]
)
_MAPPED = {"type", "timestamp", "customerCode", "productCode"}


class RetailError(Exception):
    def __init__(self, status: int, message: str, errors: list[dict[str, Any]] | None = None):
        self.status, self.message, self.errors = status, message, errors


def parse(body: bytes) -> list[ProductEvent]:
    """Raw body -> checked events (one object or an array); RetailError(422) if invalid."""
    start = body.lstrip(b" \t\r\n")[:1]
    try:
        if start == b"[":
            return MANY.validate_json(body)
        if start == b"{":
            return [ONE.validate_json(body)]
    except ValidationError as exc:
        raise RetailError(422, "invalid events", _event_errors(exc, single=start == b"{")) from None
    raise RetailError(422, "invalid events", [_item(None, None, None,
        f"the body must be an event object or an array of 1 to {MAX_EVENTS} events")])


def _item(index: int | None, kind: str | None, field: str | None, message: str) -> dict[str, Any]:
    return {"index": index, "type": kind, "field": field, "message": message}


def _event_errors(exc: ValidationError, single: bool) -> list[dict[str, Any]]:
    out = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = list(err["loc"])
        if single and err["type"] != "json_invalid":
            loc.insert(0, 0)
        index = loc[0] if loc and isinstance(loc[0], int) else None
        rest = loc[1:] if index is not None else loc
        kind = str(rest[0]) if rest and rest[0] in KINDS else None
        field = ".".join(str(p) for p in rest[1 if kind else 0:]) or None
        msg = err["msg"]
        if err["type"] == "union_tag_invalid":
            field, msg = "type", f"unknown type {err['ctx']['tag']!r}; available: {', '.join(KINDS)}"
        elif err["type"] == "union_tag_not_found":
            field, msg = "type", f"'type' is required; available: {', '.join(KINDS)}"
        elif err["type"] in ("too_long", "too_short") and index is None:
            msg = f"an array must hold 1 to {MAX_EVENTS} events, not {err['ctx']['actual_length']}"
        elif err["type"] == "missing" and field:
            msg = f"{kind or 'the event'} requires {field!r}"
        out.append(_item(index, kind, field, msg))
    return out


def _json_text(obj: dict[str, Any]) -> str:
    try:
        return orjson.dumps(obj).decode()
    except orjson.JSONEncodeError:  # e.g. an integer beyond 64 bits: the stdlib copes
        import json

        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def canonical(event: ProductEvent, now: datetime) -> dict[str, Any]:
    kind = KINDS[event.type]  # type: ignore[attr-defined]
    ts = event.timestamp or now
    out: dict[str, Any] = {
        "user_id": event.customerCode,
        "event_timestamp": ts if ts.tzinfo else ts.replace(tzinfo=UTC),
        "event_type": kind.event_type,
        "asset_id": event.productCode,
        "labels": [],
    }
    fields = event.model_dump(exclude=_MAPPED)
    if kind.value is not None:
        out["value"] = float(fields.pop(kind.value))
    out["properties"] = _json_text(fields)
    return out


# -- HTTP ------------------------------------------------------------------------------
def _error(status: int, message: str, headers: dict[str, str] | None = None,
           errors: list[dict[str, Any]] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"status": "error", "code": status, "message": message}
    if errors is not None:
        body["errors"] = errors
        body["availableTypes"] = AVAILABLE
    return JSONResponse(body, status_code=status, headers=headers)


class RetailRoute(APIRoute):
    """Every failure of a retail route -> the retail error shape (never FastAPI's)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except RetailError as exc:
                return _error(exc.status, exc.message, errors=exc.errors)
            except RequestValidationError as exc:  # header, query, content type
                errors = [_item(None, None, ".".join(str(p) for p in e["loc"]), e["msg"])
                          for e in exc.errors()]
                return _error(422, "invalid request", errors=errors)
            except AuthError as exc:
                return _error(exc.status, exc.message)
            except PayloadTooLarge as exc:
                return _error(413, f"request body larger than {exc.limit} bytes")
            except BrokerUnavailable as exc:
                retry = str(request.app.state.gateway.settings.retry_after_s)
                return _error(503, f"events not accepted, retry later: {exc}",
                              headers={"Retry-After": retry})
            except UpdateTimeout as exc:
                return _error(504, f"the {exc.events} events are accepted and durable, but user "
                              f"state was not updated within {exc.timeout_s}s; do not resend")

        return route


router = APIRouter(prefix="/compat/retail", tags=["Retail"], route_class=RetailRoute)


# Credentials are checked before anything else is validated (as services.gateway.auth
# does for every route): a dependency, so it runs before FastAPI checks headers and query.
_BEARER = HTTPBearer(  # the same scheme as services.gateway.auth's, for /docs
    auto_error=False, scheme_name="APIKey",
    description="An API key of the program (`sk_<id>_<secret>`, from `sluice keys create`); "
    "required when the gateway runs with SLUICE_KEYS_FILE.",
)


def _key(scope: Literal["write", "read"]) -> Any:
    async def require_key(
        request: Request, gateway: GatewayDep,
        _: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
    ) -> None:
        check_bearer(gateway, request.headers.get("authorization"),
                     request.headers.get("program-id") or None, scope)

    return require_key


WriteKey = Annotated[None, Depends(_key("write"))]


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema with its ``$defs`` inlined (OpenAPI resolves refs elsewhere)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return walk(defs[node["$ref"].rsplit("/", 1)[-1]])
            if "discriminator" in node:  # its mapping points into $defs: keep the name only
                node = node | {"discriminator": {"propertyName": node["discriminator"]["propertyName"]}}
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)  # type: ignore[no-any-return]


_ONE_SCHEMA = _inline(ONE.json_schema())
BODY_SCHEMA = {"oneOf": [_ONE_SCHEMA, {"type": "array", "items": _ONE_SCHEMA,
                                       "minItems": 1, "maxItems": MAX_EVENTS}]}
_ERROR = {"description": "`{status: error, code, message}` (422 adds `errors`, `availableTypes`)"}


@router.post(
    "/events",
    summary="Send events (retail typed events)",
    description="One event, or an array of up to 100. `type` selects the kind: "
    + "; ".join(f"`{name}` -> `{k.event_type}`" for name, k in KINDS.items())
    + ". Answers 200 `{status: ok, accepted: N}` once the broker holds every event.",
    openapi_extra={"requestBody": {"required": True,
                                   "content": {"application/json": {"schema": BODY_SCHEMA}}}},
    responses={code: _ERROR for code in (401, 403, 413, 422, 503, 504)},
)
async def post_events(_auth: WriteKey, request: Request, gateway: GatewayDep,
                      program_id: ProgramId) -> Response:
    events = parse(await read_json_body(request, gateway.settings.max_body_bytes))
    now = datetime.now(UTC)
    await ingest(gateway, program_id, [canonical(e, now) for e in events],
                 queue_updates=gateway.settings.queue_updates_default,
                 process_user_actions=True, source=SOURCE)
    return Response(orjson.dumps({"status": "ok", "accepted": len(events)}),
                    media_type="application/json")
