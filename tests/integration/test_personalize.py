"""The Amazon Personalize dialect, driven by boto3's own ``personalize-events`` client.

The gateway runs under uvicorn on a real port, with SigV4 keys; boto3 signs every call
and parses every answer, so these tests check the wire format against AWS's own SDK.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import httpx
import orjson
import pytest
import uvicorn
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from services.gateway.app import create_app
from services.gateway.keys import KeyRing
from services.shared.broker import free_port
from services.shared.clickhouse import Store
from services.shared.settings import Settings
from tests.integration.conftest import break_broker, running_sink, wait_for

PROGRAM = "shop"
ITEMS_ARN = f"arn:aws:personalize:eu-west-1:123456789012:dataset/{PROGRAM}/ITEMS"
USERS_ARN = f"arn:aws:personalize:eu-west-1:123456789012:dataset/{PROGRAM}/USERS"
SENT_AT = datetime(2026, 11, 20, 10, 0, 0, 250000, tzinfo=UTC)


@dataclass
class Served:
    base: str  # http://127.0.0.1:PORT
    ring: KeyRing
    write: tuple[str, str]  # (access key id, secret) of a write key of PROGRAM
    read_token: str  # bearer read key of PROGRAM, for GET /events and /assets
    store: Store
    app: Any

    def client(self, key: tuple[str, str] | None = None) -> Any:
        access_key, secret = key or self.write
        return boto3.client(
            "personalize-events", endpoint_url=f"{self.base}/compat/personalize",
            region_name="eu-west-1", aws_access_key_id=access_key,
            aws_secret_access_key=secret,
            config=Config(retries={"max_attempts": 1, "mode": "standard"}),
        )

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.base + path, timeout=10, headers={
            "authorization": f"Bearer {self.read_token}", "program-id": PROGRAM})

    def stored(self, user: str) -> list[dict[str, Any]]:
        r = self.get(f"/events?user_id={user}")
        assert r.status_code == 200, r.text
        return r.json()["events"]


@pytest.fixture
def served(settings: Settings, store: Store) -> Iterator[Served]:
    settings.keys_file = settings.data_dir.parent / "keys.json"
    ring = KeyRing(settings.keys_file)
    write, write_secret = ring.create(PROGRAM, "write", sigv4=True)
    _, read_token = ring.create(PROGRAM, "read")
    app = create_app(settings, store)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name="test-gateway")
    with running_sink(settings, store):
        thread.start()
        try:
            wait_for(lambda: server.started, timeout_s=30)
            yield Served(f"http://127.0.0.1:{port}", ring, (write.id, write_secret), read_token,
                         store, app)
        finally:
            server.should_exit = True
            thread.join(30)


def capture_bodies(client: Any) -> list[bytes]:
    """The raw bodies of the client's HTTP answers, as boto3 received them."""
    bodies: list[bytes] = []
    client.meta.events.register(
        "after-call.personalize-events.*",
        lambda http_response, **_: bodies.append(http_response.content))
    return bodies


def code_of(exc: pytest.ExceptionInfo[ClientError]) -> tuple[int, str]:
    return (exc.value.response["ResponseMetadata"]["HTTPStatusCode"],
            exc.value.response["Error"]["Code"])


def test_put_events_lands_in_clickhouse_with_the_canonical_values(served: Served) -> None:
    client = served.client()
    bodies = capture_bodies(client)
    answer = client.put_events(
        trackingId=PROGRAM, userId="u1", sessionId="s1",
        eventList=[
            {"eventId": "e-1", "eventType": "purchase", "sentAt": SENT_AT, "itemId": "sku-1",
             "eventValue": 4.5, "properties": orjson.dumps({"numberOfRatings": "12"}).decode(),
             "impression": ["sku-1", "sku-2"], "recommendationId": "rec-9"},
            {"eventType": "view", "sentAt": SENT_AT - timedelta(hours=1)},
        ],
    )
    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert bodies == [b""]  # AWS answers 200 with an empty body
    # no userId: the session is the user, and the event says it is anonymous
    client.put_events(trackingId=PROGRAM, sessionId="anon-7",
                      eventList=[{"eventType": "click", "sentAt": SENT_AT, "itemId": "sku-3"}])

    wait_for(lambda: len(served.stored("u1")) == 2)
    first, second = served.stored("u1")  # newest first
    assert first["event_type"] == "purchase" and first["asset_id"] == "sku-1"
    assert datetime.fromisoformat(first["event_timestamp"]) == SENT_AT
    assert first["client_event_id"] == "e-1" and first["session_id"] == "s1"
    assert first["value"] == 4.5 and first["labels"] == [] and first["source"] == "personalize"
    assert first["anonymous_id"] == ""
    assert orjson.loads(first["properties"]) == {
        "numberOfRatings": "12", "impression": ["sku-1", "sku-2"], "recommendationId": "rec-9"}
    assert second["event_type"] == "view" and second["asset_id"] == ""
    assert second["client_event_id"] == "" and second["value"] is None
    assert orjson.loads(second["properties"]) == {}
    assert datetime.fromisoformat(second["event_timestamp"]) == SENT_AT - timedelta(hours=1)

    wait_for(lambda: len(served.stored("anon-7")) == 1)
    [anon] = served.stored("anon-7")
    assert anon["session_id"] == "anon-7" and anon["anonymous_id"] == "anon-7"
    assert anon["event_type"] == "click" and anon["asset_id"] == "sku-3"


def test_a_retried_put_events_with_the_same_event_id_is_stored_once(served: Served) -> None:
    client = served.client()
    once = {"eventId": "retry-me", "eventType": "click", "sentAt": SENT_AT, "itemId": "sku-1"}
    client.put_events(trackingId=PROGRAM, userId="u2", sessionId="s2", eventList=[once])
    # the retry carries a marker: once the marker is in ClickHouse, so is the retry
    client.put_events(trackingId=PROGRAM, userId="u2", sessionId="s2", eventList=[
        once, {"eventId": "marker", "eventType": "view", "sentAt": SENT_AT, "itemId": "m"}])
    count = ("SELECT count() AS n FROM events FINAL WHERE program_id = 'shop' AND "
             "user_id = 'u2' AND client_event_id = {c:String}")
    wait_for(lambda: served.store.query(count, {"c": "marker"})[0]["n"] == 1)
    assert served.store.query(count, {"c": "retry-me"})[0]["n"] == 1
    assert [e["client_event_id"] for e in served.stored("u2")] in (
        ["retry-me", "marker"], ["marker", "retry-me"])


def test_invalid_input_raises_boto3s_invalid_input_exception(served: Served) -> None:
    client = served.client()
    event = {"eventType": "view", "sentAt": SENT_AT}
    with pytest.raises(client.exceptions.InvalidInputException) as exc:
        client.put_events(trackingId=PROGRAM, sessionId="s", eventList=[event] * 11)
    assert code_of(exc) == (400, "InvalidInputException")
    assert "eventList" in exc.value.response["Error"]["Message"]
    bad_events = [
        dict(event, properties="{not json"),
        dict(event, properties='["a list"]'),
        dict(event, properties='{"userId": "x"}'),  # reserved by Personalize
        dict(event, impression=[f"i{n}" for n in range(26)]),  # at most 25 (boto3 lets it through)
        dict(event, recommendationId="r" * 41),  # at most 40
    ]
    for bad in bad_events:
        with pytest.raises(client.exceptions.InvalidInputException):
            client.put_events(trackingId=PROGRAM, sessionId="s", eventList=[bad])
    with pytest.raises(client.exceptions.InvalidInputException):  # not a dataset ARN
        client.put_items(datasetArn="shop", items=[{"itemId": "i"}])
    with pytest.raises(client.exceptions.InvalidInputException):  # a USERS dataset
        client.put_items(datasetArn=USERS_ARN, items=[{"itemId": "i"}])
    # raw: a body that is not JSON, signed properly
    r = signed_post(served, "/compat/personalize/events", b"{nope", served.write)
    assert r.status_code == 400 and r.headers["x-amzn-errortype"] == "InvalidInputException"
    assert r.json()["__type"] == "InvalidInputException" and r.json()["message"]
    assert served.store.query("SELECT count() AS n FROM events")[0]["n"] == 0


def test_bad_credentials_are_refused_and_store_nothing(served: Served) -> None:
    access_key, secret = served.write
    event = {"eventType": "view", "sentAt": SENT_AT}
    read_key, read_secret = served.ring.create(PROGRAM, "read", sigv4=True)
    other_key, other_secret = served.ring.create("other", "write", sigv4=True)
    revoked_key, revoked_secret = served.ring.create(PROGRAM, "write", sigv4=True)
    served.ring.revoke(revoked_key.id)
    time.sleep(1.1)  # the gateway re-reads a changed keys file at most once a second
    cases = [
        ((access_key, "x" * 40), "InvalidSignatureException"),  # wrong secret
        ((access_key, secret[:-1]), "InvalidSignatureException"),
        (("AKSLUNKNOWNUNKNOWN00", secret), "UnrecognizedClientException"),
        ((revoked_key.id, revoked_secret), "UnrecognizedClientException"),
        ((read_key.id, read_secret), "AccessDeniedException"),  # a read key cannot write
        ((other_key.id, other_secret), "AccessDeniedException"),  # another program's key
    ]
    for key, expected in cases:
        with pytest.raises(ClientError) as exc:
            served.client(key).put_events(trackingId=PROGRAM, userId="intruder", sessionId="s",
                                          eventList=[event])
        assert code_of(exc) == (403, expected), key
        with pytest.raises(ClientError) as exc:
            served.client(key).put_items(datasetArn=ITEMS_ARN, items=[{"itemId": "evil"}])
        assert code_of(exc) == (403, expected), key
    # the other program's key does work for its own program
    served.client((other_key.id, other_secret)).put_events(
        trackingId="other", userId="ok", sessionId="s", eventList=[event])
    # no signature at all
    r = httpx.post(served.base + "/compat/personalize/events", timeout=10, content=orjson.dumps(
        {"trackingId": PROGRAM, "sessionId": "s", "eventList": [{"eventType": "v", "sentAt": 1}]}))
    assert r.status_code == 403
    assert r.headers["x-amzn-errortype"] == "MissingAuthenticationTokenException"
    count = "SELECT program_id, user_id FROM events FINAL"
    wait_for(lambda: len(served.store.query(count)) == 1)
    assert served.store.query(count) == [{"program_id": "other", "user_id": "ok"}]
    assert served.get("/assets/evil").status_code == 404


def test_a_signature_older_than_15_minutes_is_refused(served: Served) -> None:
    body = orjson.dumps({"trackingId": PROGRAM, "sessionId": "s",
                         "eventList": [{"eventType": "view", "sentAt": 1.8e9}]})
    path = "/compat/personalize/events"
    fresh = signed_post(served, path, body, served.write)
    assert fresh.status_code == 200, fresh.text  # the hand-made signature is right...
    stale = signed_post(served, path, body, served.write, at=datetime.now(UTC) - timedelta(minutes=16))
    assert stale.status_code == 403  # ...but not 16 minutes later
    assert stale.headers["x-amzn-errortype"] == "InvalidSignatureException"
    assert "expired" in stale.json()["message"]
    tampered = signed_post(served, path, body, served.write, send=body.replace(b"view", b"buyy"))
    assert tampered.status_code == 403
    assert tampered.headers["x-amzn-errortype"] == "InvalidSignatureException"


def test_put_items_sets_asset_labels_and_events_carry_them(served: Served) -> None:
    client = served.client()
    client.put_items(datasetArn=ITEMS_ARN, items=[
        {"itemId": "sku-1", "properties": orjson.dumps(
            {"category": "shoes|red", "price": 10}).decode()},
        {"itemId": "sku-2"},
    ])
    r = served.get("/assets/sku-1")
    assert r.status_code == 200, r.text
    assert r.json()["labels"] == ["shoes", "red"]
    assert r.json()["attributes"] == {"category": "shoes|red", "price": 10}
    assert served.get("/assets/sku-2").json()["labels"] == []
    client.put_events(trackingId=PROGRAM, userId="u3", sessionId="s3",
                      eventList=[{"eventType": "view", "sentAt": SENT_AT, "itemId": "sku-1"}])
    wait_for(lambda: len(served.stored("u3")) == 1)
    assert served.stored("u3")[0]["asset_labels"] == ["shoes", "red"]
    # PutItems replaces the item, as in Personalize
    client.put_items(datasetArn=ITEMS_ARN, items=[
        {"itemId": "sku-1", "properties": '{"CATEGORY": "boots"}'}])
    assert served.get("/assets/sku-1").json()["labels"] == ["boots"]
    wait_for(lambda: served.store.query(  # the sink stores it like any PUT /assets
        "SELECT labels FROM assets FINAL WHERE asset_id = 'sku-1'") == [{"labels": ["boots"]}])


def test_put_users_stores_the_properties_without_touching_user_state(served: Served) -> None:
    client = served.client()
    client.put_users(datasetArn=USERS_ARN, users=[
        {"userId": "u4", "properties": '{"membership": "gold|frequent"}'}, {"userId": "u5"}])
    wait_for(lambda: len(served.stored("u4")) == 1 and len(served.stored("u5")) == 1)
    [row] = served.stored("u4")
    assert row["event_type"] == "user_properties" and row["asset_id"] == ""
    assert orjson.loads(row["properties"]) == {"membership": "gold|frequent"}
    assert row["process_user_actions"] is False and row["source"] == "personalize"
    assert orjson.loads(served.stored("u5")[0]["properties"]) == {}


def test_broker_unavailable_is_a_503_the_sdk_sees(served: Served, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    break_broker(served.app, monkeypatch)
    client = served.client()
    with pytest.raises(ClientError) as exc:
        client.put_events(trackingId=PROGRAM, sessionId="s",
                          eventList=[{"eventType": "view", "sentAt": SENT_AT}])
    assert code_of(exc) == (503, "ServiceUnavailableException")
    assert exc.value.response["ResponseMetadata"]["HTTPHeaders"]["retry-after"] == "1"


def signed_post(served: Served, path: str, body: bytes, key: tuple[str, str],
                at: datetime | None = None, send: bytes | None = None) -> httpx.Response:
    """POST ``send`` (default ``body``) with a SigV4 signature of ``body`` made at ``at``."""
    url = served.base + path
    request = AWSRequest(method="POST", url=url, data=body,
                         headers={"content-type": "application/json"})
    signer = SigV4Auth(Credentials(*key), "personalize", "eu-west-1")
    request.context["timestamp"] = (at or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    request.headers["X-Amz-Date"] = request.context["timestamp"]
    canonical = signer.canonical_request(request)
    signature = signer.signature(signer.string_to_sign(request, canonical), request)
    headers = dict(request.headers.items())
    headers["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={signer.scope(request)}, "
        f"SignedHeaders={signer.signed_headers(signer.headers_to_sign(request))}, "
        f"Signature={signature}")
    return httpx.post(url, content=send if send is not None else body, headers=headers, timeout=10)

