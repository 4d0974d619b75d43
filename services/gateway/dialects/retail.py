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

from dataclasses import dataclass
from datetime import UTC, datetime
from functools import reduce
from operator import or_
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    TypeAdapter,
    ValidationError,
    create_model,
    model_validator,
)

from services.gateway.body import json_body_doc, read_json_body
from services.gateway.deps import GatewayDep
from services.gateway.dialects.common import WriteProgram, error_route, inline_defs, json_text
from services.gateway.ingest import ingest
from services.gateway.validate import Id, Timestamp, finite_json

SOURCE = "retail"
MAX_EVENTS = 100  # "You can load up to 100 events at once"

Quantity = Annotated[float, Strict(), Field(gt=0, allow_inf_nan=False)]


class ProductEvent(BaseModel):
    """A customer did something with one product. Unknown fields go to properties."""

    model_config = ConfigDict(extra="allow")
    timestamp: Timestamp | None = None
    customerCode: Id
    productCode: Id

    @model_validator(mode="after")
    def _finite_properties(self) -> ProductEvent:
        finite_json(self.model_extra or {})  # the unknown fields: properties, as JSON text
        return self


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
    out["properties"] = json_text(fields)
    return out


# -- HTTP ------------------------------------------------------------------------------
def _error(status: int, message: str, headers: dict[str, str] | None = None,
           errors: list[dict[str, Any]] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"status": "error", "code": status, "message": message}
    if errors is not None:
        body["errors"] = errors
        body["availableTypes"] = AVAILABLE
    return JSONResponse(body, status_code=status, headers=headers)


def _failure(_: Request, exc: RetailError | RequestValidationError) -> JSONResponse:
    if isinstance(exc, RetailError):
        return _error(exc.status, exc.message, errors=exc.errors)
    errors = [_item(None, None, ".".join(str(p) for p in e["loc"]), e["msg"])
              for e in exc.errors()]  # header, query, content type
    return _error(422, "invalid request", errors=errors)


# Every failure of a retail route -> the retail error shape (never FastAPI's).
RetailRoute = error_route(_error, (RetailError, RequestValidationError), _failure)
router = APIRouter(prefix="/compat/retail", tags=["Retail"], route_class=RetailRoute)


_ONE_SCHEMA = inline_defs(ONE.json_schema())
BODY_SCHEMA = {"oneOf": [_ONE_SCHEMA, {"type": "array", "items": _ONE_SCHEMA,
                                       "minItems": 1, "maxItems": MAX_EVENTS}]}
_ERROR = {"description": "`{status: error, code, message}` (422 adds `errors`, `availableTypes`)"}


@router.post(
    "/events",
    summary="Send events (retail typed events)",
    description="One event, or an array of up to 100. `type` selects the kind: "
    + "; ".join(f"`{name}` -> `{k.event_type}`" for name, k in KINDS.items())
    + ". Answers 200 `{status: ok, accepted: N}` once the broker holds every event.",
    openapi_extra=json_body_doc(BODY_SCHEMA),
    responses={code: _ERROR for code in (401, 403, 413, 422, 503, 504)},
)
async def post_events(request: Request, gateway: GatewayDep, program_id: WriteProgram) -> Response:
    events = parse(await read_json_body(request, gateway.settings.max_body_bytes))
    now = datetime.now(UTC)
    await ingest(gateway, program_id, [canonical(e, now) for e in events],
                 queue_updates=not gateway.settings.dialect_waits_for_state(program_id),
                 process_user_actions=True, source=SOURCE)
    return Response(orjson.dumps({"status": "ok", "accepted": len(events)}),
                    media_type="application/json")
