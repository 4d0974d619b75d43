"""``sluice status``: where the pipeline stands, from Kafka and from the roles' /metrics.

From Kafka: each consumer group's lag per partition (committed offset vs the partition's
end, as ``sluice_consumer_lag``) and how many messages the DLQ topic holds. From the roles'
metrics, scraped twice ``interval_s`` apart: events accepted, error answers, rows stored,
dead letters and agent events per second. A role that does not answer shows ``-``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaException, TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console, Group
from rich.table import Table

from services.shared.kafka_security import REFUSED
from services.shared.lag import PartitionLag, group_lag, offsets_reader
from services.shared.settings import Settings

Scrape = Callable[[str], str | None]  # url -> exposition text, None when it does not answer

# rate name -> (role, sample name, label filter: status class for HTTP errors)
RATES: dict[str, tuple[str, str, str | None]] = {
    "events accepted/s": ("gateway", "sluice_events_accepted_total", None),
    "HTTP 4xx/5xx answers/s": ("gateway", "sluice_http_requests_total", "error"),
    "rows stored/s": ("sink", "sluice_sink_rows_total", None),
    "dead letters/s": ("sink", "sluice_dlq_messages_total", None),
    "agent events/s": ("agents", "sluice_agents_events_total", None),
}
# gauge name -> what the status table calls it (the gateway's last reading)
GAUGES = {"sluice_embedded_broker_bytes": "embedded broker memory (MiB)",
          "sluice_embedded_broker_rolls_total": "embedded broker rolled over (times)",
          "sluice_gateway_backpressure": "gateway refusing events (backpressure)"}


@dataclass
class Status:
    lag: dict[str, list[PartitionLag]] = field(default_factory=dict)  # group -> partitions
    lag_errors: dict[str, str] = field(default_factory=dict)
    dlq_messages: int | None = None
    stalled: float | None = None  # agents partitions owned, with lag, not moving (streams.stalls)
    gauges: dict[str, float] = field(default_factory=dict)  # GAUGES read from the gateway
    rates: dict[str, float | None] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)


def metrics_urls(settings: Settings) -> dict[str, str]:
    """Where each role serves /metrics by default. In ``sluice up`` the sink's metrics are
    the gateway's: the sink URL then does not answer and the gateway's page is used."""
    host = "127.0.0.1" if settings.http_host in ("0.0.0.0", "::") else settings.http_host
    return {"gateway": f"http://{host}:{settings.http_port}/metrics",
            "sink": f"http://{host}:{settings.sink_metrics_port}/metrics",
            "agents": f"http://{host}:{settings.agents_web_port}/metrics"}


def http_scrape(url: str) -> str | None:
    import httpx

    try:
        response = httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return None
    return response.text if response.status_code == 200 else None


def totals(text: str | None) -> dict[str, float]:
    """Sample name (or ``name:error``) -> its sum over labels."""
    out: dict[str, float] = {}
    if text is None:
        return out
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name] = out.get(s.name, 0.0) + s.value
            if s.labels.get("status", "")[:1] in ("4", "5"):
                out[f"{s.name}:error"] = out.get(f"{s.name}:error", 0.0) + s.value
    return out


def gather(settings: Settings, urls: dict[str, str], interval_s: float = 2.0,
           scrape: Scrape = http_scrape) -> Status:
    status = Status(urls=dict(urls))
    first = {role: scrape(url) for role, url in urls.items()}
    began = time.monotonic()
    groups = {settings.sink_group: [settings.topic_events, settings.topic_assets],
              settings.agents_app_id: [settings.topic_events]}
    for group, topics in groups.items():
        reader = offsets_reader(settings, group)
        try:
            status.lag[group] = group_lag(reader, group, topics, timeout_s=5)
            if group == settings.sink_group:
                status.dlq_messages = _messages(reader, settings.topic_dlq)
        except KafkaException as exc:
            reader.poll(0)  # serves the error callback: a refusal says why
            status.lag_errors[group] = REFUSED.recent() or str(exc)
        finally:
            reader.close()
    time.sleep(max(0.0, interval_s - (time.monotonic() - began)))
    elapsed = max(time.monotonic() - began, 1e-3)
    second = {role: scrape(url) for role, url in urls.items()}
    if first.get("sink") is None and second.get("sink") is None:  # sluice up: on the gateway's
        first["sink"], second["sink"] = first.get("gateway"), second.get("gateway")
    gateway = totals(second.get("gateway"))
    status.gauges = {name: gateway[name] for name in GAUGES if name in gateway}
    if second.get("agents") is not None:
        status.stalled = totals(second["agents"]).get("sluice_agents_stalled_partitions", 0.0)
    for name, (role, sample, kind) in RATES.items():
        key = f"{sample}:{kind}" if kind else sample
        if first.get(role) is None or second.get(role) is None:
            status.rates[name] = None
            continue
        before, after = totals(first[role]), totals(second[role])
        status.rates[name] = max(0.0, after.get(key, 0.0) - before.get(key, 0.0)) / elapsed
    return status


def _messages(reader: Consumer, topic: str) -> int | None:
    """Messages a topic holds (high - low watermark summed; a lower bound on Tansu)."""
    meta = reader.list_topics(topic, timeout=5).topics.get(topic)
    if meta is None or meta.error is not None:
        return None
    total = 0
    for p in meta.partitions:
        low, high = reader.get_watermark_offsets(TopicPartition(topic, p), timeout=5)
        total += max(0, high - low)
    return total


def render(status: Status) -> Group:
    lag = Table(title="Consumer lag (messages; committed offset vs partition end)")
    for column in ("group", "topic", "partition", "committed", "end", "lag"):
        lag.add_column(column, justify="left" if column in ("group", "topic") else "right")
    for group, rows in status.lag.items():
        if not rows:
            lag.add_row(group, "-", "-", "-", "-", "no topics yet")
        for r in rows:
            lag.add_row(r.group, r.topic, str(r.partition),
                        "none" if r.committed < 0 else str(r.committed), str(r.end), str(r.lag))
        total = sum(r.lag for r in rows)
        lag.add_row(group, "", "", "", "total", f"[bold]{total}[/]", end_section=True)
    for group, error in status.lag_errors.items():
        lag.add_row(group, "-", "-", "-", "-", f"[red]Kafka: {error}[/]")
    rates = Table(title="Recent rates (two scrapes of the roles' /metrics)")
    rates.add_column("what")
    rates.add_column("rate", justify="right")
    for name, rate in status.rates.items():
        rates.add_row(name, "-" if rate is None else f"{rate:,.1f}")
    dlq = "unknown" if status.dlq_messages is None else str(status.dlq_messages)
    rates.add_row("DLQ topic holds (messages)", dlq)
    if status.stalled is not None:
        stalled = int(status.stalled)
        rates.add_row("agents partitions stalled (healing)",
                      f"[red]{stalled}[/]" if stalled else "0")
    for name, value in status.gauges.items():
        if name == "sluice_embedded_broker_bytes":
            rates.add_row(GAUGES[name], f"{value / 2**20:,.0f}")
        elif name == "sluice_embedded_broker_rolls_total":
            rates.add_row(GAUGES[name], f"{value:,.0f}")
        else:
            rates.add_row(GAUGES[name], "[red]yes[/]" if value else "no")
    roles = Table(title="Metrics endpoints")
    roles.add_column("role")
    roles.add_column("url")
    for role, url in status.urls.items():
        roles.add_row(role, url)
    return Group(lag, rates, roles)


def print_status(status: Status, console: Console | None = None) -> None:
    (console or Console()).print(render(status))
