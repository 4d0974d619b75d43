"""What the gateway's metrics cost on POST /events: ``python -m bench.metrics_cost``.

In one process, two gateways on the same embedded broker, one with the metrics and one
without (the request middleware replaced by a bare pass-through, ``accepted()`` by a
no-op), are called alternately through ASGI, with the broker's ack stubbed out: the
figure is the gateway's own CPU per request, without HTTP or broker noise. Also times the
metric operations alone (what a request adds, whatever the box's noise).
"""

from __future__ import annotations

import asyncio
import statistics
import time
import timeit
import uuid
from collections.abc import Sequence
from typing import Any

import orjson

import services.gateway.app as gateway_app
from services.gateway import ingest
from services.gateway.observe import RequestMetrics
from services.shared.broker import EmbeddedBroker, free_port
from services.shared.kafka import ensure_topics
from services.shared.metrics import accepted
from services.shared.settings import Settings


class PassThrough:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


def body(n: int) -> bytes:
    return orjson.dumps({"events": [
        {"user_id": f"u{i % 97}", "event_timestamp": "2026-11-20T10:00:00Z",
         "event_type": "view", "asset_id": f"a{i}", "labels": ["red", "shoe"]}
        for i in range(n)]})


async def post(app: Any, raw: bytes) -> None:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": raw, "more_body": False}

    async def send(_message: Any) -> None:
        pass

    await app({
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/events", "raw_path": b"/events", "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000),
        "headers": [(b"program-id", b"shop"), (b"content-type", b"application/json"),
                    (b"content-length", str(len(raw)).encode())], "state": {}, "app": app,
    }, receive, send)


async def stub_publish(_messages: Any, topic: Any = None, headers: Any = None,
                       partitions: Sequence[int] = ()) -> list[tuple[int, int]]:
    return [(p, 0) for p in partitions]


async def compare(bootstrap: str) -> None:
    tag = uuid.uuid4().hex[:6]
    settings = Settings(kafka_bootstrap=bootstrap, topic_events=f"e-{tag}", topic_dlq=f"d-{tag}",
                        topic_assets=f"a-{tag}", agents_app_id=f"g-{tag}",
                        queue_updates_default=True, data_dir=f"/tmp/metrics-cost-{tag}")
    ensure_topics(settings)
    with_metrics = gateway_app.create_app(settings)
    gateway_app.RequestMetrics = PassThrough  # type: ignore[misc,assignment]
    without = gateway_app.create_app(settings)
    gateway_app.RequestMetrics = RequestMetrics  # type: ignore[misc]
    async with with_metrics.router.lifespan_context(with_metrics), \
            without.router.lifespan_context(without):
        for app in (with_metrics, without):
            app.state.gateway.publisher.publish = stub_publish
        for n, reps in ((1, 500), (1000, 20)):
            raw = body(n)
            times: dict[str, list[float]] = {"on": [], "off": []}
            for round_ in range(30):
                order = [("on", with_metrics), ("off", without)]
                for name, app in order if round_ % 2 else order[::-1]:
                    ingest.accepted = accepted if name == "on" else (lambda *_: None)
                    began = time.perf_counter()
                    for _ in range(reps):
                        await post(app, raw)
                    times[name].append((time.perf_counter() - began) / reps * 1e6)
            off, on = statistics.median(times["off"][4:]), statistics.median(times["on"][4:])
            print(f"{n:>4}-event POST /events: without metrics {off:7.1f} us, with "
                  f"{on:7.1f} us: {on - off:+6.1f} us ({(on / off - 1) * 100:+.1f}%)")
    ingest.accepted = accepted


def operations() -> None:
    n = 200_000
    cost = timeit.timeit(lambda: accepted("actionhub", 1000, time.perf_counter()), number=n)
    print(f"accepted() per request: {cost / n * 1e6:.2f} us")

    class Route:
        path = "/events"

    async def bare(scope: Any, _receive: Any, send: Any) -> None:
        scope["route"] = Route
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b""})

    async def nothing(*_: Any) -> Any:
        return {}

    async def loop(app: Any) -> float:
        began = time.perf_counter()
        for _ in range(n):
            await app({"type": "http", "method": "POST"}, nothing, nothing)
        return (time.perf_counter() - began) / n * 1e6

    async def both() -> None:
        plain = min([await loop(bare) for _ in range(3)])
        counted = min([await loop(RequestMetrics(bare)) for _ in range(3)])
        print(f"RequestMetrics per request: {counted - plain:.2f} us")

    asyncio.run(both())


if __name__ == "__main__":
    operations()
    broker = EmbeddedBroker(port=free_port()).start()
    try:
        asyncio.run(compare(broker.bootstrap))
    finally:
        broker.stop()
