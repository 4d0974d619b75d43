"""API keys per program on the ActionHub routes, on Tansu + chDB.

write keys: POST /events, PUT /assets, DELETE /assets/{id}; read keys: GET /events,
GET /assets/{id}, GET /users/...; the program-id header must be the key's program.
Missing/malformed/unknown/revoked -> 401 + WWW-Authenticate: Bearer; wrong scope or
program -> 403. Credentials are checked before the request is validated.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient

from services.gateway.app import create_app
from services.gateway.keys import KeyRing
from services.shared.clickhouse import Store
from services.shared.settings import Settings
from tests.integration.conftest import Agents, event, running_sink, wait_for

PROGRAM = "shop"
ASSETS = {"assets": [{"asset_id": "a1", "labels": ["red"]}]}
WRITE_ROUTES = [  # (method, path, json body)
    ("POST", "/events?queue_updates=true", {"events": [event("u1", "a1")]}),
    ("PUT", "/assets", ASSETS),
    ("DELETE", "/assets/a1", None),
]
READ_ROUTES = [
    ("GET", "/events?user_id=u1", None),
    ("GET", "/assets/a1", None),
    ("GET", "/users/x/label-weights", None),
    ("GET", "/users/x/recommendations", None),
]


@dataclass
class Keys:
    ring: KeyRing
    write: str
    read: str
    other_write: str  # a write key of another program
    other_read: str
    write_id: str


@dataclass
class Secured:
    client: TestClient
    keys: Keys
    store: Store


def bearer(token: str, program: str = PROGRAM) -> dict[str, str]:
    return {"authorization": f"Bearer {token}", "program-id": program}


def call(client: TestClient, method: str, path: str, body: object, headers: dict[str, str]):  # type: ignore[no-untyped-def]
    return client.request(method, path, json=body, headers=headers)


@pytest.fixture
def secured(settings: Settings, store: Store) -> Iterator[Secured]:
    settings.keys_file = settings.data_dir.parent / "keys.json"
    ring = KeyRing(settings.keys_file)
    write_rec, write = ring.create(PROGRAM, "write")
    _, read = ring.create(PROGRAM, "read")
    _, other_write = ring.create("other", "write")
    _, other_read = ring.create("other", "read")
    keys = Keys(ring, write, read, other_write, other_read, write_rec.id)
    with running_sink(settings, store), TestClient(create_app(settings, store)) as client:
        yield Secured(client, keys, store)


def test_keys_of_the_program_with_the_right_scope_work_end_to_end(secured: Secured,
                                                                   agents: Agents) -> None:
    agents.start()  # user reads are answered by the agents
    c, k = secured.client, secured.keys
    assert c.put("/assets", json=ASSETS, headers=bearer(k.write)).status_code == 200
    posted = c.post("/events?queue_updates=true", json={"events": [event("u1", "a1")]},
                    headers=bearer(k.write))
    assert posted.status_code == 200, posted.text
    assert posted.json() == {"result": "accepted 1 events"}

    def stored() -> list:
        r = c.get("/events?user_id=u1", headers=bearer(k.read))
        assert r.status_code == 200, r.text
        return r.json()["events"]

    wait_for(lambda: len(stored()) == 1)
    assert stored()[0]["asset_labels"] == ["red"]
    asset = c.get("/assets/a1", headers=bearer(k.read))
    assert asset.status_code == 200 and asset.json()["labels"] == ["red"]
    weights = c.get("/users/x/label-weights", headers=bearer(k.read))
    assert weights.status_code == 200 and weights.json()["user_id"] == "x"
    assert c.get("/users/x/recommendations", headers=bearer(k.read)).status_code == 200
    assert c.delete("/assets/a1", headers=bearer(k.write)).status_code == 200
    assert c.get("/assets/a1", headers=bearer(k.read)).status_code == 404


def test_missing_malformed_and_unknown_credentials_are_401(secured: Secured) -> None:
    c, k = secured.client, secured.keys
    unknown = "sk_0123456789ab_" + "A" * 43
    wrong_secret = k.write[:-4] + ("xxxx" if not k.write.endswith("xxxx") else "yyyy")
    for method, path, body in WRITE_ROUTES + READ_ROUTES:
        for headers in (
            {"program-id": PROGRAM},  # no Authorization
            {"program-id": PROGRAM, "authorization": ""},
            {"program-id": PROGRAM, "authorization": f"Basic {k.write}"},
            {"program-id": PROGRAM, "authorization": "Bearer"},
            {"program-id": PROGRAM, "authorization": k.write},  # no scheme
            bearer(unknown),
            bearer(wrong_secret),
            bearer(k.read[:20]),  # truncated
        ):
            r = call(c, method, path, body, headers)
            assert r.status_code == 401, (method, path, headers, r.status_code, r.text)
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert isinstance(r.json()["detail"], str) and r.json()["detail"]
    assert secured.store.query("SELECT count() AS n FROM events")[0]["n"] == 0


def test_write_key_cannot_read_and_read_key_cannot_write(secured: Secured) -> None:
    c, k = secured.client, secured.keys
    for method, path, body in READ_ROUTES:
        r = call(c, method, path, body, bearer(k.write))
        assert r.status_code == 403, (method, path, r.text)
        assert "'read' key" in r.json()["detail"] and "www-authenticate" not in r.headers
    for method, path, body in WRITE_ROUTES:
        r = call(c, method, path, body, bearer(k.read))
        assert r.status_code == 403, (method, path, r.text)
        assert "'write' key" in r.json()["detail"]
    # the refused write stored nothing: a later accepted write lands alone
    assert c.post("/events?queue_updates=true", json={"events": [event("u2")]},
                  headers=bearer(k.write)).status_code == 200
    wait_for(lambda: secured.store.query("SELECT count() AS n FROM events")[0]["n"] >= 1)
    rows = secured.store.query("SELECT user_id FROM events FINAL")
    assert [r["user_id"] for r in rows] == ["u2"]


def test_key_of_another_program_is_403(secured: Secured) -> None:
    c, k = secured.client, secured.keys
    for method, path, body in WRITE_ROUTES:
        r = call(c, method, path, body, bearer(k.other_write))
        assert r.status_code == 403, (method, path, r.text)
        assert "another program" in r.json()["detail"]
    for method, path, body in READ_ROUTES:
        assert call(c, method, path, body, bearer(k.other_read)).status_code == 403
    # the same key is good for its own program
    own = c.put("/assets", json=ASSETS, headers=bearer(k.other_write, "other"))
    assert own.status_code == 200
    assert c.get("/assets/a1", headers=bearer(k.read)).status_code == 404  # not in shop
    assert c.get("/assets/a1", headers=bearer(k.other_read, "other")).status_code == 200


def test_revoked_key_is_refused_by_a_running_gateway(secured: Secured) -> None:
    c, k = secured.client, secured.keys
    ok = c.put("/assets", json=ASSETS, headers=bearer(k.write))
    assert ok.status_code == 200
    KeyRing(k.ring.path).revoke(k.write_id)  # as `sluice keys revoke` does, from outside

    def refused() -> bool:
        r = c.put("/assets", json=ASSETS, headers=bearer(k.write))
        return r.status_code == 401 and "revoked" in r.json()["detail"]

    wait_for(refused, timeout_s=5)
    assert c.get("/assets/a1", headers=bearer(k.read)).status_code == 200  # others unaffected


def test_credentials_are_checked_before_the_request_is_validated(secured: Secured) -> None:
    c, k = secured.client, secured.keys
    bad_body = {"events": []}
    assert c.post("/events", json=bad_body, headers={"program-id": PROGRAM}).status_code == 401
    assert c.post("/events", json=bad_body, headers=bearer(k.read)).status_code == 403
    assert c.post("/events", json=bad_body, headers=bearer(k.write)).status_code == 422
    no_program = {"authorization": f"Bearer {k.write}"}
    r = c.post("/events", json={"events": [event()]}, headers=no_program)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["header", "program-id"]
    assert c.get("/events?limit=0", headers=bearer(k.read)).status_code == 422


def test_operations_stay_open_and_openapi_declares_the_bearer_scheme(secured: Secured) -> None:
    c = secured.client
    assert c.get("/healthz").status_code == 200
    schema = c.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["APIKey"]["scheme"] == "bearer"
    assert schema["paths"]["/events"]["post"]["security"] == [{"APIKey": []}]


def test_without_keys_file_or_with_auth_off_the_gateway_is_open(
    settings: Settings, store: Store
) -> None:
    body = {"events": [event("open-user")]}
    with TestClient(create_app(settings, store)) as client:  # no keys file
        assert client.post("/events?queue_updates=true", json=body,
                           headers={"program-id": PROGRAM}).status_code == 200
    settings.keys_file = settings.data_dir.parent / "keys.json"
    KeyRing(settings.keys_file).create(PROGRAM, "write")
    with TestClient(create_app(settings, store)) as client:
        assert client.post("/events?queue_updates=true", json=body,
                           headers={"program-id": PROGRAM}).status_code == 401
    settings.auth = "off"
    with TestClient(create_app(settings, store)) as client:
        assert client.post("/events?queue_updates=true", json=body,
                           headers={"program-id": PROGRAM}).status_code == 200
