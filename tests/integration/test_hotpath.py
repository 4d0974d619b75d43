"""The ingest routes' hot path answers every request as FastAPI's routing does, byte for
byte: the same requests -- good, malformed, unauthorised, too large, with the broker
down, with user state late -- go to a gateway with the hot path and to one without it,
and the status, headers and body must match. The good ones must be taken by the hot path
(else this would compare FastAPI with itself)."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from bench.dialects import (
    crowdpower_body,
    personalize_body,
    posthog_body,
    retail_body,
    segment_body,
    userflux_body,
)
from services.gateway import hotpath
from services.gateway.app import create_app
from services.shared.kafka import ensure_topics
from services.shared.settings import Settings
from tests.integration.conftest import break_broker, create_keys, event

JSON = {"content-type": "application/json"}
ACTIONHUB = orjson.dumps({"events": [event("u1"), event("u2", "a2")]})
RETAIL = orjson.dumps(orjson.loads(retail_body(n=1))[0])
USERFLUX = orjson.dumps(orjson.loads(userflux_body(n=1))["events"][0])
_CROWD = orjson.loads(crowdpower_body(n=2))
CROWD_ONE = orjson.dumps({"user_id": _CROWD["user_id"], "email": _CROWD["email"]}
                         | _CROWD["events"][0])
CROWD_BULK = crowdpower_body(n=2)

# (path and query, headers beyond the content type, body): every ingest route, each with
# good requests and with what clients get wrong
CASES: list[tuple[str, dict[str, str], bytes]] = [
    ("/events", {"program-id": "shop"}, ACTIONHUB),
    ("/events?queue_updates=true&process_user_actions=0", {"program-id": "shop"}, ACTIONHUB),
    ("/events?wait=broker&unknown=1", {"program-id": "shop"}, ACTIONHUB),
    ("/events?queue_updates=maybe", {"program-id": "shop"}, ACTIONHUB),
    ("/events?queue_updates=", {"program-id": "shop"}, ACTIONHUB),
    ("/events?wait=later", {"program-id": "shop"}, ACTIONHUB),
    ("/events", {}, ACTIONHUB),
    ("/events", {"program-id": ""}, ACTIONHUB),
    ("/events", {"program-id": "p" * 513}, ACTIONHUB),
    ("/events", {"program-id": "shop"}, b'{"events": [{"user_id": "u1"}]}'),
    ("/events", {"program-id": "shop"}, b"{not json"),
    ("/events", {"program-id": "shop"}, b""),
    ("/events", {"program-id": "shop", "content-type": "text/plain"}, ACTIONHUB),
    ("/events", {"program-id": "shop"}, b'{"events": [' + b",".join([orjson.dumps(event())] * 40) + b"]}"),
    ("/compat/retail/events", {"program-id": "shop"}, RETAIL),
    ("/compat/retail/events", {"program-id": "shop"}, b'{"type": "EventNope"}'),
    ("/compat/retail/events", {}, RETAIL),
    ("/compat/userflux/event/ingest", {"program-id": "shop"}, USERFLUX),
    ("/compat/userflux/event/ingest?locationEnrichment=true", {"program-id": "shop"}, USERFLUX),
    ("/compat/userflux/event/ingest?locationEnrichment=sometimes", {"program-id": "shop"}, USERFLUX),
    ("/compat/userflux/event/ingest", {"program-id": "shop"}, b"[]"),
    ("/compat/userflux/event/ingest/batch", {"program-id": "shop"}, userflux_body(n=2)),
    ("/compat/crowdpower/events", {"program-id": "shop"}, CROWD_ONE),
    ("/compat/crowdpower/events", {"program-id": "shop"}, b'{"user_id": 3}'),
    ("/compat/crowdpower/events/bulk", {"program-id": "shop"}, CROWD_BULK),
    ("/compat/personalize/events", {}, personalize_body(n=2)),
    ("/compat/personalize/events", {}, b'{"trackingId": "shop"}'),
    ("/compat/posthog/batch/", {}, posthog_body(n=2)),
    ("/compat/posthog/e", {"content-encoding": "gzip"}, gzip.compress(posthog_body(n=2))),
    ("/compat/posthog/e/", {}, b"[]"),
    ("/compat/segment/v1/batch", {}, segment_body(n=2)),
    ("/compat/segment/v1/track", {}, b'{"userId": 3, "writeKey": "shop"}'),
]
TAKEN = {0, 1, 2, 14, 17, 18, 21, 22, 24, 25, 27, 28, 30}  # the good ones (indexes in CASES)
VARYING = {"date", "server"}


def answer(client: TestClient, path: str, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    response = client.post(path, content=body, headers=JSON | headers)
    return {"status": response.status_code, "body": response.content,
            "headers": sorted((k, v) for k, v in response.headers.items() if k not in VARYING)}


@pytest.fixture
def taken(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths of the requests the hot path answered (it returned a response)."""
    log: list[str] = []
    for path, (route_class, call) in list(hotpath.HOT_ROUTES.items()):
        async def spy(request: Any, gateway: Any, call: Any = call, path: str = path) -> Any:
            response = await call(request, gateway)
            if response is not None:
                log.append(path)
            return response
        monkeypatch.setitem(hotpath.HOT_ROUTES, path, (route_class, spy))
    return log


@pytest.fixture
def both(settings: Settings, taken: list[str]) -> Iterator[tuple[TestClient, TestClient]]:
    """A gateway with the hot path and one without, on the same broker and settings."""
    settings.queue_updates_default = True
    settings.max_body_bytes = 2_000
    ensure_topics(settings)
    with (TestClient(create_app(settings)) as hot,
          TestClient(create_app(settings, hot_path=False)) as cold):
        yield hot, cold


def test_the_hot_path_answers_as_fastapi_does(both: tuple[TestClient, TestClient],
                                              taken: list[str]) -> None:
    hot, cold = both
    for i, (path, headers, body) in enumerate(CASES):
        before = len(taken)
        got = answer(hot, path, headers, body)
        assert got == answer(cold, path, headers, body), (i, path, headers, body[:80])
        assert (len(taken) > before) == (i in TAKEN), (i, path, got["status"], got["body"][:200])
        if i in TAKEN:
            assert got["status"] in (200, 204), got


def test_with_the_broker_down_and_state_late_too(
    settings: Settings, both: tuple[TestClient, TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    hot, cold = both
    settings.update_timeout_s = 0.2  # nothing applies the events: queue_updates=false is 504
    settings.dialect_state_wait_programs = ["*"]
    for i in TAKEN:
        path, headers, body = CASES[i]
        late = path.replace("?", "?queue_updates=false&", 1) if path.startswith("/events?") else (
            "/events?queue_updates=false" if path == "/events" else path)
        assert answer(hot, late, headers, body) == answer(cold, late, headers, body), (i, late)
    for client in (hot, cold):
        break_broker(client.app, monkeypatch)  # type: ignore[arg-type]
    for i in TAKEN:
        path, headers, body = CASES[i]
        got = answer(hot, path, headers, body)
        assert got["status"] == 503
        assert got == answer(cold, path, headers, body), (i, path)


def test_with_api_keys(settings: Settings, tmp_path: Path, taken: list[str]) -> None:
    """Good, missing, malformed, wrong-program and read-scope keys: the same answers."""
    keys = create_keys(settings, tmp_path, "shop")
    settings.queue_updates_default = True
    ensure_topics(settings)
    presented = [None, "Bearer " + keys["write"], "Bearer " + keys["read"],
                 "Bearer " + keys["other"], "Bearer sk_nope_nope", "Basic abc"]
    with (TestClient(create_app(settings)) as hot,
          TestClient(create_app(settings, hot_path=False)) as cold):
        for path, headers, body in (CASES[0], CASES[14], CASES[17], CASES[22]):
            for key in presented:
                for program in ({"program-id": "shop"}, {}):
                    sent = headers | program | ({"authorization": key} if key else {})
                    sent = {k: v for k, v in sent.items() if k in sent}
                    assert answer(hot, path, sent, body) == answer(cold, path, sent, body), (
                        path, key, program)
    assert taken  # the good keys were taken by the hot path
