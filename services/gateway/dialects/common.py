"""What every dialect does alike: failures in the vendor's error shape, the bearer key
check, properties as JSON text, request-body schemas for ``/docs``.

A dialect keeps its own error *shape* (a function ``shape(status, message, headers=...)``
that builds the vendor's error response) and its own exceptions; :func:`error_route`
makes the route class that answers every failure of its routes in that shape.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, Literal, Protocol

import orjson
from fastapi import Depends, Header, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials

from services.gateway.auth import BEARER, AuthError, check_bearer
from services.gateway.deps import GatewayDep
from services.gateway.errors import PayloadTooLarge, StateUnavailable, UpdateTimeout
from services.shared.publish import BrokerUnavailable


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
                answer: Callable[[Request, Any], Response]) -> type[APIRoute]:
    """A route class whose every failure answers in the dialect's error shape, never
    FastAPI's: the exceptions in ``own`` (the dialect's own, and any shared one it answers
    otherwise) by ``answer(request, exc)``; then, by ``shape``, a bad key (its 401/403),
    a body too large (413), the broker unavailable (503 + Retry-After; nothing accepted)
    and user state late (504: the events are durable, do not resend)."""

    def failure(request: Request, exc: Exception) -> Response:
        """The dialect's answer to ``exc``; re-raises what it does not answer."""
        if isinstance(exc, own):
            return answer(request, exc)
        if isinstance(exc, AuthError):
            return shape(exc.status, exc.message)
        if isinstance(exc, PayloadTooLarge):
            return shape(413, f"request body larger than {exc.limit} bytes")
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
