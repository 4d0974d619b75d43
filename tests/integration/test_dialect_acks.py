"""Vendor dialects answer when their vendor would: at the broker's ack, unless the program
asks to wait for user state (SLUICE_DIALECT_STATE_WAIT_PROGRAMS)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.shared.settings import Settings
from tests.integration.conftest import read_topic
from tests.integration.test_crowdpower import EVENT as CROWD_EVENT
from tests.integration.test_crowdpower import ONE as CROWD_URL
from tests.integration.test_retail import SALE
from tests.integration.test_retail import URL as RETAIL_URL
from tests.integration.test_userflux import EVENT as FLUX_EVENT
from tests.integration.test_userflux import ONE as FLUX_URL

Post = Callable[[str], tuple[dict[str, Any], dict[str, str]]]  # program -> (body, headers)


def _header(body: dict[str, Any]) -> Post:
    return lambda program: (body, {"program-id": program})


POSTS: list[tuple[str, str, Post, int]] = [
    ("userflux", FLUX_URL, _header(FLUX_EVENT), 204),
    ("crowdpower", CROWD_URL, _header(CROWD_EVENT), 200),
    ("retail", RETAIL_URL, _header(SALE), 200),
    # the token / write key names the program (no keys file: it is the program id)
    ("posthog", "/compat/posthog/batch/", lambda program: (
        {"api_key": program, "batch": [{"event": "e", "distinct_id": "u1"}]}, {}), 200),
    ("segment", "/compat/segment/v1/track", lambda program: (
        {"writeKey": program, "userId": "u1", "event": "e"}, {}), 200),
]


@pytest.fixture
def no_agents(settings: Settings) -> Settings:
    """ActionHub's default waits for user state, and no agents run: a dialect that waited
    would answer 504 after update_timeout_s."""
    settings.queue_updates_default = False
    settings.update_timeout_s = 0.5
    return settings


@pytest.mark.parametrize(("name", "url", "post", "ok"), POSTS)
def test_dialects_answer_at_the_broker_ack_by_default(
        no_agents: Settings, gateway: TestClient, name: str, url: str, post: Post, ok: int) -> None:
    body, headers = post("p1")
    posted = gateway.post(url, json=body, headers=headers)
    assert posted.status_code == ok, posted.text
    assert len(read_topic(no_agents.bootstrap, no_agents.topic_events, at_least=1)) == 1


@pytest.mark.parametrize(("name", "url", "post", "ok"), POSTS)
def test_a_program_that_asks_waits_for_user_state(
        no_agents: Settings, gateway: TestClient, name: str, url: str, post: Post, ok: int) -> None:
    no_agents.dialect_state_wait_programs = ["waits"]
    body, headers = post("waits")
    assert gateway.post(url, json=body, headers=headers).status_code == 504
    body, headers = post("other")
    assert gateway.post(url, json=body, headers=headers).status_code == ok
    assert len(read_topic(no_agents.bootstrap, no_agents.topic_events, at_least=2)) == 2
