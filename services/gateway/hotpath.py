"""POSTs of events, served as plain ASGI: without FastAPI's per-request routing and
dependency solving, which took about two thirds of a small request's time (py-spy).

Every ingest route stays a FastAPI route: the OpenAPI document, and every request this
path does not take, go through FastAPI unchanged. It takes a request only when what
FastAPI would check before the handler is plainly good -- the query values it knows, the
``program-id`` header, the API key -- and passes anything else (a missing header, an
odd query value, a refused key) to FastAPI, which answers as it always did. A request it
takes runs the route's own handler, and what the handler raises is answered by the same
code as on FastAPI's path (the dialect's route class, then the app's exception
handlers), so the answers are the same, byte for byte (tests/integration/test_hotpath.py).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request, Response
from starlette.responses import PlainTextResponse
from starlette.types import Receive, Scope, Send

from services.gateway.auth import AuthError, check_bearer
from services.gateway.body import header
from services.gateway.deps import Gateway
from services.gateway.dialects import crowdpower, personalize, posthog, retail, segment, userflux
from services.gateway.observe import count
from services.gateway.routes import events

# The query values taken here; any other value goes to FastAPI (which may refuse it).
_BOOLEANS = {"true": True, "false": False, "1": True, "0": False}
_LEVELS = {"broker", "user", "stored"}
MAX_PROGRAM_ID = 512  # the program-id header's max_length in the routes


def _query(scope: Scope, booleans: dict[str, str], levels: dict[str, str] | None = None,
           ) -> dict[str, Any] | None:
    """The known query parameters as keyword arguments (``booleans``, ``levels``: query name
    -> argument name; module-level dicts, as they key the cache), or None when one holds a value FastAPI should judge. Unknown names are ignored,
    as FastAPI ignores them; a repeated name counts with its last value, as there. SDKs send
    a handful of distinct query strings: each is parsed once (parse_qsl costs ~10 us)."""
    raw = scope["query_string"]
    if not raw:
        return {}
    key = (raw, id(booleans))
    parsed = _PARSED.get(key, _UNSEEN)
    if parsed is _UNSEEN:
        parsed = _parse_query(raw, booleans, levels)
        if len(_PARSED) < MAX_QUERIES_KEPT:
            _PARSED[key] = parsed
    return dict(parsed) if parsed is not None else None


def _parse_query(raw: bytes, booleans: dict[str, str], levels: dict[str, str] | None,
                 ) -> dict[str, Any] | None:
    out: dict[str, Any] = {}
    for name, value in parse_qsl(raw.decode("latin-1"), keep_blank_values=True):
        if (argument := booleans.get(name)) is not None:
            if (flag := _BOOLEANS.get(value)) is None:
                return None
            out[argument] = flag
        elif levels is not None and (argument := levels.get(name)) is not None:
            if value not in _LEVELS:
                return None
            out[argument] = value
    return out


MAX_QUERIES_KEPT = 1024
_PARSED: dict[tuple[bytes, int], dict[str, Any] | None] = {}
_UNSEEN: Any = object()


def _program(request: Request) -> str | None:
    program = header(request, b"program-id")
    return program if program and len(program) <= MAX_PROGRAM_ID else None


def _key_ok(gateway: Gateway, request: Request, program: str | None) -> bool:
    """The bearer key is a live write key of ``program`` (or the gateway runs open)."""
    if gateway.keys is None:
        return True
    try:
        check_bearer(gateway, header(request, b"authorization"), program, "write")
    except AuthError:
        return False
    return True


# A hot route's call: the handler's answer, or None to leave the request to FastAPI
# (decided before the handler runs: nothing of the request is consumed by then).
Call = Callable[[Request, Gateway], Awaitable[Response | None]]


_ACTIONHUB_BOOLEANS = {"queue_updates": "queue_updates",
                       "process_user_actions": "process_user_actions"}
_ACTIONHUB_LEVELS = {"wait": "wait"}
_NO_QUERY: dict[str, str] = {}


async def _actionhub(request: Request, gateway: Gateway) -> Response | None:
    query = _query(request.scope, _ACTIONHUB_BOOLEANS, _ACTIONHUB_LEVELS)
    program = _program(request)
    if query is None or program is None or not _key_ok(gateway, request, program):
        return None
    return await events.post_events(None, request, gateway, program, **query)


def _self_keyed(endpoint: Callable[[Request, Gateway], Awaitable[Response]]) -> Call:
    """A route that finds and checks its key itself: Personalize's SigV4 signature,
    PostHog's token and Segment's write key (in the body or HTTP Basic). Called as it is:
    each coroutine wrapped around another is resumed again when the broker acks."""
    return endpoint


def _dialect(endpoint: Callable[..., Awaitable[Response]],
             booleans: dict[str, str] | None = None) -> Call:
    """A route of a bearer-key dialect: the program is the header's, else the key's
    (services.gateway.dialects.common)."""
    known = booleans or _NO_QUERY

    async def call(request: Request, gateway: Gateway) -> Response | None:
        query = _query(request.scope, known)
        named = header(request, b"program-id") or None
        if query is None:
            return None
        program = named
        if gateway.keys is not None:
            try:
                key = check_bearer(gateway, header(request, b"authorization"), named, "write")
            except AuthError:
                return None
            program = named or (key.program if key else None)
        if not program:
            return None
        return await endpoint(request, gateway, program, **query)
    return call


_LOCATION = {"locationEnrichment": "location"}
# path -> (the dialect's route class, or None for ActionHub's; the call)
HOT_ROUTES: dict[str, tuple[Any, Call]] = {
    "/events": (None, _actionhub),
    "/compat/personalize/events": (personalize.AwsErrorRoute, _self_keyed(personalize.put_events)),
    "/compat/personalize/items": (personalize.AwsErrorRoute, _self_keyed(personalize.put_items)),
    "/compat/personalize/users": (personalize.AwsErrorRoute, _self_keyed(personalize.put_users)),
    "/compat/retail/events": (retail.RetailRoute, _dialect(retail.post_events)),
    "/compat/userflux/event/ingest": (userflux.UserFluxRoute,
                                      _dialect(userflux.ingest_event, _LOCATION)),
    "/compat/userflux/event/ingest/batch": (userflux.UserFluxRoute,
                                            _dialect(userflux.ingest_batch, _LOCATION)),
    "/compat/crowdpower/events": (crowdpower.CrowdPowerRoute, _dialect(crowdpower.create_event)),
    "/compat/crowdpower/events/bulk": (crowdpower.CrowdPowerRoute,
                                       _dialect(crowdpower.create_events)),
    **{path: (posthog.PostHogRoute, _self_keyed(call)) for path, call in posthog.ENDPOINTS.items()},
    **{path: (segment.SegmentRoute, _self_keyed(call)) for path, call in segment.ENDPOINTS.items()},
}


class HotPath:
    """Served first by the gateway's app (services.gateway.app.GatewayApp): it takes the
    POSTs of HOT_ROUTES before FastAPI's own ``__call__``, middleware and routing, and
    counts them in the request metrics itself."""

    def __init__(self) -> None:
        self.routes = dict(HOT_ROUTES)

    async def serve(self, app: FastAPI, scope: Scope, receive: Receive, send: Send) -> bool:
        """Whether it answered the request (False: FastAPI's turn, nothing consumed)."""
        hot = (self.routes.get(scope["path"]) if scope["type"] == "http"
               and scope["method"] == "POST" and not scope.get("root_path") else None)
        if hot is None:
            return False
        route_class, call = hot
        scope["app"] = app  # as Starlette sets it (request.app)
        request = Request(scope, receive, send)
        try:
            response = await call(request, app.state.gateway)
        except Exception as exc:  # noqa: BLE001 - _answer re-raises what no one answers
            try:
                response = await _answer(app, route_class, request, exc)
            except Exception:
                # as Starlette's ServerErrorMiddleware: a plain 500, and the server logs it
                await PlainTextResponse("Internal Server Error", 500)(scope, receive, send)
                count(scope["path"], 500, "POST")
                raise
        if response is None:
            return False
        await response(scope, receive, send)
        count(scope["path"], response.status_code, "POST")
        return True


async def _answer(app: FastAPI, route_class: Any, request: Request, exc: Exception) -> Response:
    """``exc`` answered as on FastAPI's path: by the dialect's route class, else by the
    app's exception handler for its class; re-raised when neither answers it."""
    if route_class is not None:
        try:
            return route_class.answer_failure(request, exc)  # type: ignore[no-any-return]
        except Exception as unanswered:
            if unanswered is not exc:
                raise
    for kind in type(exc).__mro__:
        handler = app.exception_handlers.get(kind)
        if handler is not None:
            response = handler(request, exc)
            return await response if inspect.isawaitable(response) else response  # type: ignore[no-any-return]
    raise exc
