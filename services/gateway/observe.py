"""Counts every HTTP request by route template and status, and write requests refused.

A pure ASGI middleware (no BaseHTTPMiddleware: that one costs a task and a stream per
request). The route label is the template Starlette matched (``/users/{user_id}``), never
the raw path; requests that match no route count as ``unmatched``. A labelled child is
looked up once per (route, status) and kept, so a request costs a dict lookup and an
``inc()``.
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.shared.metrics import HTTP_REQUESTS, REQUESTS_REJECTED

WRITES = frozenset({"POST", "PUT", "DELETE", "PATCH"})
# status of a refused write -> its reason (202 and 504 accepted the events: not refusals)
REJECTION_REASONS = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "bad_request", 413: "too_large", 415: "bad_request", 422: "invalid",
    429: "throttled", 500: "other", 503: "unavailable",
}


class RequestMetrics:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # unless the app answers: an exception that escaped every handler

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            count(getattr(route, "path", "unmatched"), status, scope["method"])


_children: dict[tuple[str, int], Any] = {}


def count(route: str, status: int, method: str) -> None:
    """One answered request (also called by the hot path, which runs outside this middleware)."""
    child = _children.get((route, status))
    if child is None:
        child = _children[(route, status)] = HTTP_REQUESTS.labels(route, str(status))
    child.inc()
    if status >= 400 and method in WRITES:
        REQUESTS_REJECTED.labels(REJECTION_REASONS.get(status, "other")).inc()
