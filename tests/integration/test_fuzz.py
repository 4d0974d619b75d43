"""Hostile input over every operation of the gateway's OpenAPI document, by schemathesis:
no request gets a 5xx other than the documented ones (issue 24, item 5).

The gateway runs in-process (ASGI, schemathesis's own client, which runs its lifespan) on
the real broker and an embedded ClickHouse it reads from, open (no keys file, loopback),
so every operation is reachable. Each operation gets the schema's examples, the coverage
phase's boundary and invalid values (missing and mistyped parameters, bodies of the wrong
shape) and fuzzed cases of valid and invalid data; then the stateful phase chains
operations over the links schemathesis infers from the document (it declares none): PUT
/assets -> GET and DELETE /assets/{id}, POST /compat/personalize/users -> GET /events, ...
Last, by hand, what the generators seldom make (huge integers, NaN, lone surrogates, deep
nesting, long keys) in each dialect's free-form JSON.

503 (broker, store or user state unavailable: no agents run here) and 504 (queue_updates=
false and no agents to update user state) are the gateway's documented answers; every
other 5xx fails. Seeded and derandomized, so a failure reproduces; bounded to about a
minute on two cores (MAX_EXAMPLES, MAX_STEPS).
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis
from fastapi import FastAPI
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi

from services.gateway.app import create_app
from services.shared.broker import free_port
from services.shared.clickhouse import Store
from services.shared.kafka import ensure_topics
from services.shared.settings import Settings

pytestmark = pytest.mark.integration

MAX_EXAMPLES = 12  # fuzzed cases per operation, on top of its examples and coverage cases
MAX_STEPS = 6  # calls per stateful scenario
STATEFUL_SCENARIOS = 40
ANSWERS = ["2xx", "3xx", "4xx", "503", "504"]  # 503 and 504 are documented (above)

CONFIG = schemathesis.Config.from_dict({
    "seed": 24,
    "suppress-health-check": ["too_slow", "filter_too_much", "data_too_large"],
    "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": True,
                   "database": "none"},
    "phases": {"stateful": {"max-steps": MAX_STEPS}},
    "checks": {"not_a_server_error": {"expected-statuses": ANSWERS}},
})


# The document does not depend on the settings: read once at import, for pytest to make one
# test per operation (schemathesis's fixture-based lazy schema breaks on pytest 9)
SCHEMA = schemathesis.openapi.from_dict(create_app(Settings()).openapi(), config=CONFIG)


@pytest.fixture(scope="module")
def app(kafka_bootstrap: str, clickhouse_server_url: str | None,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    """A gateway on the real broker, reading an embedded ClickHouse; schemathesis's client
    runs its lifespan (started at the first request, stopped here)."""
    tag = uuid.uuid4().hex[:8]
    settings = Settings(
        kafka_bootstrap=kafka_bootstrap,
        clickhouse_url=clickhouse_server_url,
        data_dir=tmp_path_factory.mktemp("fuzz") / "data",
        topic_events=f"events-{tag}", topic_dlq=f"events-{tag}.dlq",
        topic_assets=f"assets-{tag}", agents_app_id=f"agents-{tag}",
        agents_web_port=free_port(), sink_group=f"sink-{tag}",
        popularity_ttl_s=0.0, publish_timeout_s=3.0, queue_updates_default=True,
        # no agents run: waits for user state end soon (504, 202 or 503, as documented)
        update_timeout_s=0.2, wait_timeout_s=0.2, agents_read_timeout_s=0.2,
    )
    ensure_topics(settings)
    store = Store(settings)
    try:
        yield create_app(settings, store)
    finally:
        asgi.shutdown_lifespans()
        store.close()


def with_key(case: schemathesis.Case) -> schemathesis.Case:
    """The SDK dialects' key where a case has none, so most cases get past the 401 to the
    body: Segment's write key as HTTP Basic (as its SDKs send it), PostHog's token in the
    body. Open gateway: the key is the program."""
    if case.operation.path.startswith("/compat/segment/"):
        case.headers = {"Authorization": "Basic " + base64.b64encode(b"fuzz:").decode(),
                        **(case.headers or {})}
    elif (case.operation.path.startswith("/compat/posthog/") and isinstance(case.body, dict)
          and not case.body.get("api_key")):
        case.body["api_key"] = "fuzz"
    return case


@SCHEMA.parametrize()
def test_no_operation_answers_a_server_error(case: schemathesis.Case, app: FastAPI) -> None:
    with_key(case).call_and_validate(app=app, checks=[not_a_server_error])


def test_no_sequence_of_operations_gets_a_server_error(app: FastAPI) -> None:
    class Machine(SCHEMA.as_state_machine()):  # type: ignore[misc]
        def call(self, case: schemathesis.Case, **kwargs: Any) -> schemathesis.Response:
            return with_key(case).call(app=app, **kwargs)

        def validate_response(self, response: schemathesis.Response, case: schemathesis.Case,
                              *_: Any, **__: Any) -> None:
            case.validate_response(response, checks=[not_a_server_error])

    Machine.run(settings=hypothesis.settings(
        max_examples=STATEFUL_SCENARIOS, stateful_step_count=MAX_STEPS, deadline=None,
        derandomize=True, database=None,
        suppress_health_check=list(hypothesis.HealthCheck)))


# -- by hand: what schemathesis seldom generates, in every dialect's free-form JSON ---------
# Raw JSON text: Python's json module writes none of these.
HOSTILE = {
    "huge int": "123456789012345678901234567890",
    "huge negative int": "-99999999999999999999",
    "NaN": "NaN",
    "Infinity": "[Infinity, -Infinity]",
    "float overflow": "1e400",
    "lone surrogate": '"\\ud800"',
    "lone surrogate key": '{"\\udc00": 1}',
    "NUL": '{"a\\u0000b": "c\\u0000d"}',
    "deep nesting": '{"a":' * 300 + "1" + "}" * 300,
    "very deep nesting": "[" * 5000 + "]" * 5000,
    "long key": '{"' + "k" * 100_000 + '": 1}',
}
AT = "2026-11-20T10:00:00Z"
X = "@"  # where the hostile value goes
# where -> (method, path, body with X in a free-form field)
FREE_FORM: dict[str, tuple[str, str, dict[str, Any]]] = {
    "actionhub unknown field": ("POST", "/events", {"events": [{
        "user_id": "u", "asset_id": "a", "event_type": "view", "labels": [],
        "event_timestamp": AT, "extra": X}]}),
    "asset attributes": ("PUT", "/assets", {"assets": [{
        "asset_id": "a", "labels": [], "attributes": {"k": X}}]}),
    "personalize properties": ("POST", "/compat/personalize/events", {
        "trackingId": "p", "sessionId": "s", "userId": "u", "eventList": [{
            "eventType": "view", "sentAt": 1790000000, "properties": '{"k": @}'}]}),
    "retail unknown field": ("POST", "/compat/retail/events", {
        "type": "EventSale", "timestamp": AT, "customerCode": "c", "productCode": "p",
        "quantity": 1, "note": X}),
    "userflux properties": ("POST", "/compat/userflux/event/ingest", {
        "userId": "u", "name": "x", "properties": {"k": X}}),
    "crowdpower properties": ("POST", "/compat/crowdpower/events/bulk", {
        "user_id": "u", "events": [{"action": "x", "properties": {"k": X}}]}),
    "posthog properties": ("POST", "/compat/posthog/batch/", {
        "api_key": "p", "batch": [{"event": "e", "distinct_id": "d", "properties": {"k": X}}]}),
    "posthog $set": ("POST", "/compat/posthog/capture/", {
        "api_key": "p", "event": "e", "distinct_id": "d", "$set": {"k": X}}),
    "segment properties": ("POST", "/compat/segment/v1/track", {
        "writeKey": "p", "userId": "u", "event": "e", "properties": {"k": X}}),
    "segment traits": ("POST", "/compat/segment/v1/identify", {
        "writeKey": "p", "userId": "u", "traits": {"k": X}}),
    "segment context": ("POST", "/compat/segment/v1/batch", {"writeKey": "p", "batch": [{
        "type": "track", "userId": "u", "event": "e", "context": {"k": X}}]}),
}


def with_value(body: dict[str, Any], value: str) -> bytes:
    text = json.dumps(body)
    if f'"{X}"' in text:
        return text.replace(f'"{X}"', value).encode()
    return text.replace(X, json.dumps(value)[1:-1]).encode()  # JSON text inside a string


@pytest.mark.parametrize("value", HOSTILE.values(), ids=HOSTILE.keys())
@pytest.mark.parametrize("where", FREE_FORM.values(), ids=FREE_FORM.keys())
def test_hostile_free_form_json_is_never_a_server_error(
        app: FastAPI, where: tuple[str, str, dict[str, Any]], value: str) -> None:
    method, path, body = where
    with asgi.get_client(app) as client:
        response = client.request(method, path, data=with_value(body, value), headers={
            "content-type": "application/json", "program-id": "p"})
    assert response.status_code < 500, response.text[:300]
    stored = path != "/events"  # ActionHub drops unknown fields
    if stored and value in (HOSTILE["NaN"], HOSTILE["Infinity"], HOSTILE["float overflow"]):
        assert 400 <= response.status_code < 500, f"stored a number JSON has not: {response.text}"
