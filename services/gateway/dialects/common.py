"""What every dialect does alike: failures in the vendor's error shape, the bearer key
check, properties as JSON text, request-body schemas for ``/docs``; for the SDK dialects
(PostHog, Segment) also gzip bodies, a key that names the program, client-side event ids
and an event's asset and labels taken from its properties.

A dialect keeps its own error *shape* (a function ``shape(status, message, headers=...)``
that builds the vendor's error response) and its own exceptions; :func:`error_route`
makes the route class that answers every failure of its routes in that shape.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, Protocol

import orjson
from fastapi import Depends, Header, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials

from services.gateway.auth import BEARER, AuthError, authorize, check_bearer
from services.gateway.backpressure import Backpressured
from services.gateway.deps import Gateway, GatewayDep
from services.gateway.errors import PayloadTooLarge, StateUnavailable, UpdateTimeout
from services.gateway.validate import MAX_LABELS
from services.shared.publish import BrokerUnavailable

GZIP_MAGIC = b"\x1f\x8b"
MAX_ID = 512  # services.gateway.validate.Id
MAX_LABEL = 256


class ErrorShape(Protocol):
    """A dialect's error response: ``shape(status, message, headers=None)``."""

    def __call__(self, status: int, message: str, *,
                 headers: dict[str, str] | None = None) -> Response: ...


def retry_after(request: Request) -> dict[str, str]:
    """The ``Retry-After`` header of a 503 (the gateway's ``retry_after_s``)."""
    return {"Retry-After": str(request.app.state.gateway.settings.retry_after_s)}


def unavailable(exc: Exception) -> str:
    """The message of a 503: the broker did not take the events."""
    return f"events not accepted, retry later: {exc}"


def error_route(shape: ErrorShape, own: tuple[type[Exception], ...],
                answer: Callable[[Request, Any], Response],
                slow_down: int = 503) -> type[APIRoute]:
    """A route class whose every failure answers in the dialect's error shape, never
    FastAPI's: the exceptions in ``own`` (the dialect's own, and any shared one it answers
    otherwise) by ``answer(request, exc)``; then, by ``shape``, a bad key (its 401/403),
    a body too large (413), the broker unavailable (503 + Retry-After; nothing accepted),
    backpressure (``slow_down`` + Retry-After: 429 where the vendor's SDKs take that as
    "slow down and retry") and user state late (504: the events are durable, do not resend)."""

    def failure(request: Request, exc: Exception) -> Response:
        """The dialect's answer to ``exc``; re-raises what it does not answer."""
        if isinstance(exc, own):
            return answer(request, exc)
        if isinstance(exc, AuthError):
            return shape(exc.status, exc.message)
        if isinstance(exc, PayloadTooLarge):
            return shape(413, f"request body larger than {exc.limit} bytes")
        if isinstance(exc, Backpressured):
            return shape(slow_down, unavailable(exc), headers=retry_after(request))
        if isinstance(exc, BrokerUnavailable):
            return shape(503, unavailable(exc), headers=retry_after(request))
        if isinstance(exc, StateUnavailable):
            return shape(503, str(exc), headers=retry_after(request))
        if isinstance(exc, UpdateTimeout):
            return shape(504, f"the {exc.events} events are accepted and durable, but "
                         f"user state was not updated within {exc.timeout_s}s; do not resend")
        raise exc

    class DialectRoute(APIRoute):
        answer_failure = staticmethod(failure)  # also the hot path's (services.gateway.hotpath)

        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def route(request: Request) -> Response:
                try:
                    return await handler(request)
                except Exception as exc:  # noqa: BLE001 - failure() re-raises the others
                    return failure(request, exc)

            return route

    return DialectRoute


# Credentials are checked before anything else is validated (as services.gateway.auth
# does for every route): a dependency, so it runs before FastAPI checks headers and query.
def _program(scope: Literal["write", "read"]) -> Any:
    async def require_program(
        request: Request, gateway: GatewayDep,
        _: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
        program_header: Annotated[str | None, Header(
            alias="program-id", description="The program; default: the API key's program",
        )] = None,
    ) -> str:
        header = program_header or None
        key = check_bearer(gateway, request.headers.get("authorization"), header, scope)
        program = header or (key.program if key else None)
        if not program:
            raise RequestValidationError([{
                "loc": ["header", "program-id"], "type": "missing",
                "msg": "Field required: with no API keys configured, name the program in the "
                "program-id header",
            }])
        return program

    return require_program


# The program of the request: the ``program-id`` header if sent, else the API key's own,
# so a vendor's client needs only the base URL and the key. AuthError (which the route
# class answers in the dialect's shape) unless it is a live key of that scope and program.
WriteProgram = Annotated[str, Depends(_program("write"))]
ReadProgram = Annotated[str, Depends(_program("read"))]


def json_text(obj: dict[str, Any]) -> str:
    """Properties as the JSON text the canonical event stores."""
    try:
        return orjson.dumps(obj).decode()
    except orjson.JSONEncodeError:  # e.g. an integer beyond 64 bits: the stdlib copes
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def inline_defs(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema with its ``$defs`` inlined (OpenAPI resolves refs elsewhere);
    a discriminator keeps its property name only (its mapping points into ``$defs``)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return walk(defs[node["$ref"].rsplit("/", 1)[-1]])
            if "discriminator" in node:
                node = node | {"discriminator": {"propertyName": node["discriminator"]["propertyName"]}}
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)  # type: ignore[no-any-return]


# -- the SDK dialects (PostHog, Segment) ---------------------------------------------------
def gunzip(body: bytes, limit: int) -> bytes:
    """A gzip body inflated to at most ``limit`` bytes: PayloadTooLarge beyond (a few KB of
    zeros inflate to gigabytes, so the limit is applied while inflating, never after);
    ValueError when it is not gzip."""
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ValueError(f"the body is not valid gzip: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(limit)
    if not inflater.eof:
        raise ValueError("the gzip body is truncated")
    return out


def key_program(gateway: Gateway, key: str | None) -> str:
    """The program a client's key names: with a keys file, the program of that live write
    key (AuthError 401, 403 for a read key); without one the key itself is the program id,
    so an open gateway needs no keys and the SDK's token still separates programs."""
    if not key:
        raise AuthError(401, "missing API key")
    ring = gateway.keys
    if ring is None:
        if len(key) > MAX_ID:
            raise AuthError(401, f"the API key (the program id) is longer than {MAX_ID}")
        return key
    record = ring.lookup_bearer(key)
    if record is None:
        raise AuthError(401, "invalid API key")
    if record.revoked:
        raise AuthError(401, f"API key {record.id} was revoked")
    authorize(record, None, "write")
    return record.program


def text_id(value: Any) -> str | None:
    """An id sent as a string or a number (SDKs send both), as text; None if neither."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def asset_of(properties: dict[str, Any], key: str = "asset_id") -> str:
    """The asset an event names in ``properties[key]`` (a string or number), else ""."""
    asset = properties.get(key)
    if asset is None:  # most events of most apps: no function call
        return ""
    asset = text_id(asset)
    return asset if asset and len(asset) <= MAX_ID else ""


def labels_of(*values: Any) -> list[str]:
    """Labels from properties: each value a string (one label) or a list of them; what is
    no label (empty, too long, not text) is skipped, not refused: the properties are the
    app's own and keep every value anyway."""
    labels: list[str] = []
    for value in values:
        if value is None:
            continue
        for label in value if isinstance(value, list) else (value,):
            if (isinstance(label, str) and 0 < len(label) <= MAX_LABEL
                    and label not in labels and len(labels) < MAX_LABELS):
                labels.append(label)
    return labels


# -- clients' clocks ---------------------------------------------------------------------
FUTURE_LIMIT = timedelta(hours=23)  # later than receipt plus this: a clock gone wrong
# A send time within this of receipt is network delay, not a wrong clock: left alone, the
# client's times stay exactly as sent, and a retried event keeps its sorting key in
# ClickHouse (where ReplacingMergeTree collapses it).
SKEW_TOLERANCE = timedelta(seconds=2)


def iso_time(value: Any) -> datetime | None:
    """An ISO 8601 time (no offset: UTC) of years 1900-2299, else None."""
    try:
        ts = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None
    if ts is None or not 1900 <= ts.year <= 2299:
        return None
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def skew_corrected(client_ts: datetime, sent_at: datetime | None, received: datetime) -> datetime:
    """The event's time on the server's clock: a phone an hour fast stamps its events and
    its send time an hour fast alike, so ``received - (sent_at - client_ts)`` removes the
    error (PostHog's and Segment's own rule), unless the send time is within
    SKEW_TOLERANCE of receipt. Without a send time the client's time stands. Either way,
    more than 23 h past receipt is clamped to receipt (no event is stored into the future)."""
    skewed = sent_at is not None and abs(received - sent_at) > SKEW_TOLERANCE
    ts = received - (sent_at - client_ts) if skewed and sent_at is not None else client_ts
    if ts > received + FUTURE_LIMIT:
        return received
    return ts if 1900 <= ts.year <= 2299 else client_ts
