"""Every Prometheus metric Sluice exports, in one commented list (as Arroyo's metric_defs).

Each role records into the process's default registry; ``render()`` is what a role's
``/metrics`` answers. Labels are bounded sets only: a source (dialect), a route template,
a status code, a table, a short DLQ category, a group/topic/partition; never a user, an
event, a program or a raw path.

Where each is served: the gateway on its HTTP port (``/metrics``; in ``sluice up`` that
process also runs the sink, so its page carries the sink's too), the agents on their Faust
web port (``/metrics`` next to ``/stats``), a standalone ``sluice sink`` on
SLUICE_SINK_METRICS_PORT.

``sluice gateway --workers N`` runs N processes: the CLI sets PROMETHEUS_MULTIPROC_DIR
before the workers start, every worker writes its values there, and whichever worker
answers a scrape sums them (``render()``). Gauges say how they combine (``livesum``).

Cost on the gateway's hot path: nothing per event; per request one labelled counter
increment for the route and status, one for the accepted events and one histogram
observation (see services/gateway/observe.py and ingest()).
"""

from __future__ import annotations

import os
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

__all__ = ["CONTENT_TYPE_LATEST", "render"]

disable_created_metrics()  # no *_created series: half the page, nothing a dashboard uses

# Request -> ack is a few ms on loopback and up to publish_timeout_s (5 s) when the broker
# is slow; the state's freshness is tens of ms to minutes behind a backlog.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FRESHNESS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
ROWS_BUCKETS = (1, 10, 100, 1_000, 5_000, 10_000, 25_000, 50_000, 100_000)

# --- gateway ---------------------------------------------------------------------------
EVENTS_ACCEPTED = Counter(
    "sluice_events_accepted", "Events the broker acknowledged (acks=all), by the dialect "
    "they arrived in (actionhub, personalize, retail, userflux, crowdpower).", ["source"])
HTTP_REQUESTS = Counter(
    "sluice_http_requests", "HTTP requests answered, by route template and status code.",
    ["route", "status"])
REQUESTS_REJECTED = Counter(
    "sluice_requests_rejected", "Write requests (POST/PUT/DELETE) whose events were not "
    "accepted, by reason: invalid, too_large, unauthorized, forbidden, unavailable (broker "
    "did not ack: 503), bad_request, other.", ["reason"])
PUBLISH_SECONDS = Histogram(
    "sluice_publish_seconds", "Per request: from its events being checked to the broker's "
    "ack of every one (acks=all).", buckets=LATENCY_BUCKETS)
BACKPRESSURE = Gauge(
    "sluice_gateway_backpressure", "1 while this gateway refuses events because a consumer "
    "group is too far behind (SLUICE_MAX_LAG_EVENTS) or the embedded broker's memory is near "
    "SLUICE_EMBEDDED_BROKER_MAX_MB; 0 otherwise.", multiprocess_mode="max")
LAG_EVENTS = Gauge(
    "sluice_gateway_lag_events", "The furthest-behind consumer group's lag in events, as this "
    "gateway estimates it for backpressure.", multiprocess_mode="max")
BROKER_BYTES = Gauge(
    "sluice_embedded_broker_bytes", "Resident memory of the embedded broker (Tansu keeps "
    "every event in memory), read every SLUICE_BACKPRESSURE_CHECK_S.", multiprocess_mode="max")
BROKER_ROLLS = Counter(
    "sluice_embedded_broker_rolls", "Times `sluice up` rolled the embedded broker over to a new, "
    "empty one (SLUICE_EMBEDDED_BROKER_ROLL_SHARE), by how user state was carried: changelog "
    "(the newest record per user) or rebuild (from ClickHouse: the agents had not caught up).",
    ["carried"])
BROKER_ROLL_SECONDS = Histogram(
    "sluice_embedded_broker_roll_seconds", "Per roll of the embedded broker: from its start "
    "to the old broker's stop (requests wait for none of it).",
    buckets=(0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0))
BROKER_ROLL_HELD_SECONDS = Histogram(
    "sluice_embedded_broker_roll_held_seconds", "Per roll of the embedded broker: how long "
    "waits for user state (queue_updates=false, wait=user) were held, from the switch to "
    "the next broker until the next agents served every partition.",
    buckets=(0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0))
PRODUCER_QUEUE = Gauge(
    "sluice_producer_queue_messages", "Messages waiting in the gateway producers' local "
    "queues for the broker (sampled every 50 ms; summed over workers).",
    multiprocess_mode="livesum")

# --- sink ------------------------------------------------------------------------------
SINK_ROWS = Counter(
    "sluice_sink_rows", "Rows inserted into ClickHouse, by table (events, assets).", ["table"])
SINK_INSERT_SECONDS = Histogram(
    "sluice_sink_insert_seconds", "One batch's insert into a table, retries included "
    "(long while ClickHouse is down).", ["table"], buckets=LATENCY_BUCKETS)
SINK_BATCH_ROWS = Histogram(
    "sluice_sink_batch_rows", "Rows per batch the sink wrote (both tables).",
    buckets=ROWS_BUCKETS)
DLQ_MESSAGES = Counter(
    "sluice_dlq_messages", "Messages or rows sent to the DLQ topic, by category: "
    "invalid_event, invalid_asset, empty, clickhouse_refused.", ["reason"])

# --- agents ----------------------------------------------------------------------------
DUPLICATES = Counter(
    "sluice_duplicates", "Events the agents left out because the user's record had seen "
    "their client event id within SLUICE_DEDUP_WINDOW_S (a client's retry), by dialect.",
    ["source"])
COPY_READS = Counter(
    "sluice_agents_copy_reads", "User reads this agents worker answered from its copy of a "
    "partition it does not serve (the partition was moving, or its owner died): the old "
    "owner's store or a standby's, as complete as the changelog (streams/reads.py).")
AGENTS_EVENTS = Counter(
    "sluice_agents_events", "Events (lines) the agents read from the events topic and "
    "applied to user state (process_user_actions=false ones included: they change nothing).")
STATE_FRESHNESS = Histogram(
    "sluice_state_freshness_seconds", "Per source message: from the gateway's received_at "
    "to the users' new state being acked by the changelog (what queue_updates=false waits "
    "for).", buckets=FRESHNESS_BUCKETS)
STATE_USERS = Gauge(
    "sluice_agents_state_users", "User records this agents worker holds (its partitions').",
    multiprocess_mode="livesum")
STALLED_PARTITIONS = Gauge(
    "sluice_agents_stalled_partitions", "Source partitions this agents worker owns whose "
    "committed offset has not moved for SLUICE_AGENTS_STALL_S while they have lag (healed "
    "by a seek to the committed offset; alert when it stays above 0).",
    multiprocess_mode="livesum")
STALL_HEALS = Counter(
    "sluice_agents_stall_heals", "Seeks of a stalled source partition back to its committed "
    "offset (the events after it are read again; applied ones are skipped).")

# --- sink and agents: sluice_consumer_lag{group,topic,partition}, see services.shared.lag

# --- verify (services/verify_commands.py): the last run's result. In no registry here: `sluice
# up` registers them on its /metrics (it runs verify itself), `sluice verify --push/--textfile`
# in a registry of its own (a CronJob's process is gone before any scrape).
VERIFY_GAP_EVENTS = Gauge(
    "sluice_verify_gap_events", "The last `sluice verify`: events acked by the broker but, by "
    "kind, missing (neither in ClickHouse nor dead-lettered) or not applied by the agents.",
    ["kind"], registry=None)
VERIFY_ACKED_EVENTS = Gauge(
    "sluice_verify_acked_events", "The last `sluice verify`: events acked in its window.",
    registry=None)
VERIFY_LAST_RUN = Gauge(
    "sluice_verify_last_run_timestamp_seconds", "When `sluice verify` last ran to the end "
    "(Unix time).", registry=None)


def multiprocess() -> bool:
    return "PROMETHEUS_MULTIPROC_DIR" in os.environ


def render() -> bytes:
    """The exposition text of this process (or of all gateway workers, in multiprocess mode)."""
    if multiprocess():
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def mark_dead() -> None:
    """A gateway worker that stops: its live gauges leave the sum."""
    if multiprocess():
        from prometheus_client import multiprocess as mp

        mp.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


_accepted_by_source: dict[str, Counter] = {}


def accepted(source: str, events: int, began: float) -> None:
    """A request's events were acked: count them and how long the publish took (since
    ``began``, a ``time.perf_counter()``). Once per request, never per event."""
    PUBLISH_SECONDS.observe(time.perf_counter() - began)
    child = _accepted_by_source.get(source)
    if child is None:
        child = _accepted_by_source[source] = EVENTS_ACCEPTED.labels(source)
    child.inc(events)
