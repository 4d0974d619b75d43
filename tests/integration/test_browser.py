"""A real browser (Debian's chromium, headless) on the gateway: /ui shows what was posted,
/docs and /redoc render with no internet (their assets are the gateway's own)."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from services.gateway.app import create_app
from services.shared.broker import free_port
from services.shared.clickhouse import Store
from services.shared.settings import Settings
from tests.integration.conftest import event, running_sink, wait_for
from tests.integration.test_failures import produce_raw

H = {"program-id": "shop"}


@pytest.fixture
def served(settings: Settings, store: Store) -> Iterator[str]:
    """`sluice up`'s gateway and sink, the gateway on a real port (a browser needs one)."""
    settings.queue_updates_default = True
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, store), host="127.0.0.1",
                                           port=port, log_level="warning"))
    with running_sink(settings, store):
        thread = threading.Thread(target=server.run, name="test-gateway")
        thread.start()
        try:
            wait_for(lambda: server.started, timeout_s=30)
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            thread.join(30)


def dom(url: str) -> str:
    """The page's DOM after its scripts ran, as chromium saw it."""
    chromium = shutil.which("chromium")
    assert chromium, "the test target installs Debian's chromium (make test)"
    done = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--virtual-time-budget=8000", "--dump-dom", url],
        capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_ui_shows_the_posted_user_the_dialect_the_dead_letter_and_the_lag(
        settings: Settings, served: str) -> None:
    user = f"browser-user-{time.monotonic_ns()}"
    posted = httpx.post(f"{served}/events", json={"events": [event(user), event(user, "a2")]},
                        headers=H)
    assert posted.status_code == 200
    produce_raw(settings, [(b"bad", b"{not json")])
    # the page's reader follows the topics from its first request: let it catch up
    def live() -> dict:
        return httpx.get(f"{served}/ui/live", timeout=5).json()

    wait_for(lambda: any(e["user_id"] == user for e in live()["events"]) and live()["dlq"])
    page = dom(f"{served}/ui")
    assert page.count(user) == 2  # both events, one row each
    assert "actionhub" in page
    assert "not JSON" in page  # the dead letter's reason
    assert settings.sink_group in page and settings.agents_app_id in page  # lag per group
    assert "updated " in page  # the script ran and polled


def test_docs_and_redoc_render_offline_in_a_browser(served: str) -> None:
    swagger = dom(f"{served}/docs")
    assert 'class="swagger-ui' in swagger and "opblock" in swagger and "/events" in swagger
    redoc = dom(f"{served}/redoc")
    assert "Post Events" in redoc and "api-content" in redoc


def test_the_live_page_shows_the_newest_event_first_whatever_came_before(
        settings: Settings, served: str) -> None:
    """Two 1000-event requests, then one event of a new user; a page opened only then
    shows that event at the top (it was on another partition than most of the burst, and
    the reader reads partitions in turns)."""
    for burst in range(2):
        events = [event(f"burst{burst}-{i}", f"a{i}") for i in range(1000)]
        assert httpx.post(f"{served}/events", json={"events": events}, headers=H,
                          timeout=30).status_code == 200
    newest = f"newest-{time.monotonic_ns()}"
    assert httpx.post(f"{served}/events", json={"events": [event(newest)]},
                      headers=H).status_code == 200
    page = dom(f"{served}/ui")  # opened after the posts: its first poll reads them back
    table = page[page.index('id="events"'):]
    table = table[:table.index("</tbody>")]
    assert newest in table, table[:2000]
    assert table.index(newest) < table.index("burst"), table[:2000]
