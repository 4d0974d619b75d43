"""The request middleware: one count per request by route template and status, refused
writes by reason, and nothing else (no raw paths, no GETs as refusals)."""

from __future__ import annotations

import asyncio
from typing import Any

from services.gateway.observe import RequestMetrics
from services.shared.metrics import HTTP_REQUESTS, REQUESTS_REJECTED


class Route:
    def __init__(self, path: str) -> None:
        self.path = path


def app_answering(status: int, route: str | None, raises: bool = False) -> Any:
    async def app(scope: dict[str, Any], _receive: Any, send: Any) -> None:
        if route is not None:
            scope["route"] = Route(route)  # as Starlette's router does once it matched
        if raises:
            raise RuntimeError("boom")
        await send({"type": "http.response.start", "status": status})
        await send({"type": "http.response.body", "body": b""})
    return app


def call(app: Any, method: str = "POST", path: str = "/users/u-42/label-weights") -> list[int]:
    sent: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            sent.append(message["status"])

    async def receive() -> dict[str, Any]:
        return {}

    asyncio.run(RequestMetrics(app)({"type": "http", "method": method, "path": path},
                                    receive, send))
    return sent


def count(route: str, status: str) -> float:
    return HTTP_REQUESTS.labels(route, status)._value.get()


def rejected(reason: str) -> float:
    return REQUESTS_REJECTED.labels(reason)._value.get()


def test_counts_by_route_template_never_the_raw_path() -> None:
    template = "/users/{user_id}/label-weights"
    before = count(template, "200")
    for _ in range(3):
        assert call(app_answering(200, template), method="GET") == [200]
    assert count(template, "200") - before == 3
    assert not any("u-42" in str(labels) for labels in HTTP_REQUESTS._metrics)


def test_refused_writes_count_by_reason_reads_do_not() -> None:
    invalid, not_found = rejected("invalid"), rejected("not_found")
    call(app_answering(422, "/events"))
    call(app_answering(422, "/events"), method="PUT")
    call(app_answering(404, "/users/{user_id}"), method="GET")  # a read: not a refusal
    assert rejected("invalid") - invalid == 2
    assert rejected("not_found") - not_found == 0


def test_unmatched_paths_and_escaping_errors_are_counted() -> None:
    unmatched, errors = count("unmatched", "404"), count("/events", "500")
    call(app_answering(404, None), method="GET", path="/no/such/thing")
    try:
        call(app_answering(200, "/events", raises=True))
    except RuntimeError:
        pass
    assert count("unmatched", "404") - unmatched == 1
    assert count("/events", "500") - errors == 1
