"""One settings object for every Sluice role, read from ``SLUICE_*`` environment variables.

Built once per process (``Settings()``) and passed down, so tests build their own.
"""

from __future__ import annotations

import json
from pathlib import Path
from socket import gethostname
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[2]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SLUICE_", extra="ignore")

    # --- Kafka -------------------------------------------------------------------------
    kafka_bootstrap: str | None = Field(
        None,
        description="Bootstrap servers of a real Kafka cluster. Unset: `sluice up` starts the "
        "embedded Tansu broker on embedded_broker_host:embedded_broker_port.",
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="librdkafka's security.protocol, for every Kafka client of "
        "every role (SSL and SASL_SSL: TLS, certificates verified)."
    )
    kafka_ssl_ca_location: Path | None = Field(
        None, description="PEM file of the CA(s) that signed the brokers' certificates. "
        "Unset: the system's trust store (what managed Kafkas' public certificates need)."
    )
    kafka_ssl_certificate_location: Path | None = Field(
        None, description="Client certificate (PEM) for mutual TLS (Aiven's default)."
    )
    kafka_ssl_key_location: Path | None = Field(None, description="Its private key (PEM).")
    kafka_ssl_key_password: SecretStr | None = Field(None, description="The key's password.")
    kafka_ssl_verify: bool = Field(
        True, description="Verify the brokers' certificates and host names. false: for a "
        "test cluster only; every role logs a warning at start."
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = Field(
        None, description="librdkafka's sasl.mechanism (SASL_* protocols)."
    )
    kafka_sasl_username: str | None = Field(None, description="PLAIN and SCRAM: the user (API key).")
    kafka_sasl_password: SecretStr | None = Field(None, description="PLAIN and SCRAM: the password (API secret).")
    kafka_sasl_oauth_provider: str | None = Field(
        None, description="OAUTHBEARER: where tokens come from: `msk_iam` (Amazon MSK IAM; "
        "`pip install sluice[msk-iam]`, region from kafka_aws_region or AWS_REGION), or "
        "`package.module:function` returning (token, expiry as epoch seconds)."
    )
    kafka_aws_region: str | None = Field(None, description="msk_iam: the cluster's AWS region.")
    kafka_extra: dict[str, str] = Field(
        default_factory=dict, description="Raw librdkafka properties for what is not named "
        "here (JSON object), e.g. {\"sasl.oauthbearer.method\": \"oidc\", ...}; applied last, "
        "to the roles' librdkafka clients (the agents' aiokafka clients take only the named "
        "settings)."
    )
    embedded_broker_host: str = "127.0.0.1"
    embedded_broker_port: int = 9092
    topic_events: str = "events"
    topic_dlq: str = "events.dlq"
    topic_assets: str = Field("assets", description="Compacted: the asset catalog, by program+asset.")
    events_partitions: int = Field(4, description="Partitions of the events topic: the unit of scale-out.")
    replication_factor: int = Field(1, description="Replication of created topics; 3 on a real cluster.")

    # --- ClickHouse --------------------------------------------------------------------
    clickhouse_url: str | None = Field(
        None,
        description="http(s)://user:pass@host:8123/db of a ClickHouse server. Unset: embedded "
        "chDB under data_dir/clickhouse, owned by the process that runs the sink.",
    )
    clickhouse_topology: Literal["single", "replicated", "sharded", "cloud"] = Field(
        "single", description="How the ClickHouse tables are laid out: single (embedded chDB "
        "or one server; the schema is applied at start), replicated (Replicated* tables ON "
        "CLUSTER), sharded (replicated *_local tables under Distributed ones), cloud "
        "(ClickHouse Cloud). Not single: only `sluice migrate` changes the schema, and the "
        "roles refuse to start while a migration is missing."
    )
    clickhouse_cluster: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_.-]+$", description="replicated and sharded: the cluster "
        "in the servers' remote_servers that ON CLUSTER DDL and the Distributed tables name."
    )
    data_dir: Path = Path("./data")
    ddl_dir: Path = REPO_ROOT / "deploy" / "clickhouse"

    @model_validator(mode="after")
    def _clickhouse_topology_complete(self) -> Settings:
        """A cluster topology needs its cluster; a cluster without one would get single-node
        tables on one host of it."""
        topology, cluster = self.clickhouse_topology, self.clickhouse_cluster
        if topology in ("replicated", "sharded") and not cluster:
            raise ValueError(f"SLUICE_CLICKHOUSE_TOPOLOGY={topology} needs "
                             "SLUICE_CLICKHOUSE_CLUSTER (the cluster's name in remote_servers)")
        if topology in ("single", "cloud") and cluster:
            raise ValueError(f"SLUICE_CLICKHOUSE_CLUSTER is set but SLUICE_CLICKHOUSE_TOPOLOGY="
                             f"{topology}: set replicated or sharded, or unset the cluster")
        return self

    # --- Every role -------------------------------------------------------------------
    log_format: Literal["text", "json"] = Field(
        "text", description="text: for people; json: one JSON object per line (every role)."
    )
    gc_young_threshold: int = Field(
        50_000, description="Python's GC: collect the young generation every this many "
        "allocations, after freezing what exists at start (CPython's default: 700; 0 keeps "
        "Python's defaults). See services/shared/gc_tuning.py for why and what it measured."
    )
    malloc_arenas: int = Field(
        2, ge=0, description="`sluice up`: at most this many glibc malloc arenas for its "
        "threads (0: glibc's default, 8 per core). Each roll of the embedded broker starts "
        "its threads anew, and with the default every roll kept ~30 MiB more "
        "(services/shared/gc_tuning.py)."
    )

    # --- Gateway -----------------------------------------------------------------------
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    queue_updates_default: bool = Field(
        False, description="Default of ?queue_updates (the contract's schema says false)."
    )
    max_body_bytes: int = Field(8 * 1024 * 1024, description="Larger bodies get 413.")
    publish_timeout_s: float = Field(
        5.0, description="How long a POST waits for the broker's acks=all before answering 503."
    )
    retry_after_s: int = Field(1, description="Retry-After seconds sent with 503.")
    producer_queue_bound: int = Field(
        20_000, description="Readiness: more messages than this waiting in the producer's "
        "local queue for the broker make /readyz answer 503 (a message is one partition's "
        "share of a request)."
    )
    max_lag_events: int = Field(
        2_000_000, ge=0, description="Backpressure: while a consumer group (sink, agents) is "
        "more events than this behind, the gateway refuses events (503 + Retry-After; 429 in "
        "PostHog's and Segment's dialects) until it has caught up to 80% of it. Estimated "
        "from the group's lag in messages times the events per message this gateway "
        "publishes. 0: off. 2M is a few minutes of the agents' throughput on 2 cores."
    )
    embedded_broker_max_mb: int = Field(
        1024, ge=0, description="Backpressure for the embedded broker (`sluice up` without "
        "SLUICE_KAFKA_BOOTSTRAP): Tansu keeps every event in memory, so the gateway refuses "
        "events once the broker's resident memory reaches 90% of this; `sluice up` rolls the "
        "broker before that (SLUICE_EMBEDDED_BROKER_ROLL_SHARE). 0: off."
    )
    embedded_broker_roll_share: float = Field(
        0.6, ge=0, lt=0.9, description="`sluice up` rolls the embedded broker (a new, empty "
        "Tansu; user state and dead letters carried over, everything acked already stored "
        "and applied) once it holds this share of SLUICE_EMBEDDED_BROKER_MAX_MB: Tansu frees "
        "memory only with a deleted topic. No request waits for a roll; waits for user "
        "state (queue_updates=false, wait=user) are held while the next agents take over. "
        "0: never (the gateway then refuses events at 90% until a restart)."
    )
    embedded_broker_prepare_share: float = Field(
        0.9, ge=0, le=1, description="Of the roll mark (SLUICE_EMBEDDED_BROKER_ROLL_SHARE): "
        "where `sluice up` starts the next broker and the next agents worker, joined and "
        "held, so that a roll does not wait ~4 s for the worker's join; both are idle until "
        "then (~20 MiB and ~100 MiB). 0: as soon as a generation starts."
    )
    backpressure_check_s: float = Field(
        1.0, gt=0, description="How often the gateway reads its consumers' lag and the "
        "embedded broker's memory for backpressure."
    )
    producer_linger_ms: float = Field(
        0.0, description="librdkafka's linger.ms for Sluice's producers. 0: the gateway's group "
        "commit already batches, and a closed loop of small requests is bound by ack latency "
        "(2 ms here cost 20-30% of single-event requests/s)."
    )
    kafka_compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = Field(
        "lz4", description="Compression of what Sluice produces. lz4: the gateway's JSON lines "
        "shrink ~4x for ~5% of its CPU, and the broker moves and keeps a quarter of the bytes."
    )
    message_max_bytes: int = Field(
        900_000, description="The gateway's messages hold at most this many bytes of event "
        "lines (a request's events for one partition are split between lines beyond it; "
        "Kafka's default message.max.bytes is about 1 MB)."
    )
    group_commit_ms: float = Field(
        0.5, ge=0, le=50, description="Group commit: the lines of the requests a gateway "
        "process takes within this window share one message per partition (answered when it "
        "is acked). 0: the requests of one turn of the event loop."
    )
    dialect_state_wait_programs: list[str] = Field(
        default_factory=list, description="Programs (\"*\": all) whose UserFlux, CrowdPower, "
        "retail, PostHog and Segment posts answer once user state includes them. Their "
        "vendors promise only that the events were taken, so by default they answer at the "
        "broker's ack, as Personalize does; ActionHub has its own queue_updates and wait."
    )
    keys_file: Path | None = Field(
        None, description="API keys (JSON, mode 0600; `sluice keys create`). Unset: no auth."
    )
    auth: Literal["auto", "off"] = Field(
        "auto", description="auto: enforce API keys when keys_file is set (and refuse to bind a "
        "non-loopback host without one); off: never check keys."
    )
    personalize_label_property: str = Field(
        "CATEGORY", description="Personalize PutItems: the categorical item property (values "
        "separated by |) that becomes the asset's labels."
    )

    # --- Sink --------------------------------------------------------------------------
    sink_group: str = "sluice-sink"
    sink_batch_rows: int = Field(50_000, description="Insert when this many rows are waiting...")
    sink_batch_seconds: float = Field(
        0.25, description="...or when the oldest has waited this long: what wait=stored waits "
        "at light load, and the embedded broker's window of acked-but-unstored events.")
    sink_retry_max_backoff_s: float = Field(10.0, description="Cap of the backoff while ClickHouse is down.")
    sink_drain_idle_s: float = Field(
        0.5, description="On shutdown, the sink drains until the topic is idle this long."
    )
    sink_metrics_port: int = Field(
        8001, description="`sluice sink` serves Prometheus' /metrics on http_host:this port "
        "(0: not at all). In `sluice up` the sink's metrics are on the gateway's /metrics."
    )

    # --- Verify (services/verify.py) -----------------------------------------------------
    tally_flush_s: float = Field(
        5.0, gt=0, description="How often a gateway publishes its tallies (events acked per "
        "program, minute and partition) to the topic `<events>.tallies`, for `sluice verify`."
    )
    verify_interval_s: float = Field(
        300.0, ge=0, description="`sluice up` runs `sluice verify` on itself this often (its "
        "embedded ClickHouse is one process's) and exports the result on /metrics. 0: never."
    )
    verify_settle_s: float = Field(
        120.0, ge=0, description="`sluice verify` leaves out the newest this many seconds by "
        "default: events still on their way to ClickHouse and the agents are not a gap."
    )

    # --- Stream agents and user state ---------------------------------------------------
    agents_app_id: str = Field("sluice-agents", description="Faust app id = consumer group.")
    agents_web_port: int = Field(
        6066, description="A worker's HTTP port: stats, metrics, and the user reads gateways "
        "send to the worker that owns a user's partition (0: off, and no reads)."
    )
    agents_url: str | None = Field(
        None, description="The URL other processes reach this worker's web port at (gateways "
        "read user state there); default http://<http_host>:<agents_web_port>. In Kubernetes: "
        "the pod's address."
    )
    agents_urls: str | None = Field(
        None, description="Gateways: comma-separated URLs of one or more agents workers (or a "
        "Service in front of them), asked which worker owns which partition; the answer names "
        "the others. Default http://<http_host>:<agents_web_port>."
    )
    agents_read_timeout_s: float = Field(
        2.0, gt=0, description="Gateways: how long a read of user state waits for its owner "
        "before answering 503 with Retry-After."
    )
    agents_store: Literal["rocksdb", "memory"] = Field(
        "rocksdb", description="Where a worker keeps the user-state table: rocksdb: on disk "
        "under data_dir/agents/<app id>/<slot> (state may exceed memory; a restart reads only "
        "the changelog's tail); memory: in memory (a restart reads the whole changelog)."
    )
    agents_standby_replicas: int = Field(
        0, ge=0, description="Faust's table_standby_replicas: other workers that follow each "
        "partition's changelog into their store, so a takeover reads only the tail (1 in the "
        "compose and Kubernetes manifests; the embedded stack runs one worker)."
    )
    agents_rocksdb_memory_mb: int = Field(
        64, ge=8, description="A worker's RocksDB memory, whatever the partitions it holds: "
        "one block cache for all its partitions' databases, their memtables charged to it."
    )
    agents_session_timeout_s: float = Field(
        6.0, gt=0, description="How long the group waits for a worker that stopped "
        "heartbeating (SIGKILL, a frozen host) before its partitions move: the floor of a "
        "takeover, and of a killed worker's own restart. 6 s is Apache Kafka's least "
        "(group.min.session.timeout.ms); `sluice up` gives its embedded broker's worker 3 s."
    )
    agents_batch_max: int = Field(
        200, ge=2, description="Messages per agent batch (a gateway message holds up to a "
        "request's events for one partition, up to ~900 kB); a worker reads ahead half as many."
    )
    agents_batch_seconds: float = Field(0.05, description="...or what arrived within this.")
    agents_batch_events: int = Field(
        20_000, description="Most events a worker applies at once: a batch of messages holding "
        "more is applied in runs of at most this many (a worker's memory grows with it).")
    agents_handover_s: float = Field(
        15.0, ge=0, description="How long a worker told to stop (SIGTERM) keeps answering "
        "reads of the partitions it served, from its store, until their new owners serve them "
        "(0: it stops at once). Below Kubernetes' terminationGracePeriodSeconds (30)."
    )
    agents_commit_interval_s: float = Field(
        1.0, gt=0, description="How often a worker commits the source offsets it applied "
        "(Faust's broker_commit_interval, 2.8 s by default there). A roll of the embedded "
        "broker waits for the old agents' commits to reach the end; a restarted worker reads "
        "again what was applied since the last commit (counted once: each user's record "
        "keeps its source position)."
    )
    agents_stall_s: float = Field(
        20.0, gt=0, description="A source partition a worker owns whose committed offset has "
        "not moved for this long while it has lag counts as stalled: shown (/readyz, "
        "sluice_agents_stalled_partitions, `sluice status`) and healed by a seek to its "
        "committed offset: many commits missed (SLUICE_AGENTS_COMMIT_INTERVAL_S)."
    )
    agents_fetch_max_wait_ms: int = Field(
        50, description="Longest a worker's fetch waits for data (Faust's own is 1500 ms)."
    )
    dedup_window_s: int = Field(
        86400, ge=0, description="An event carrying a client's own id (PostHog uuid, Segment "
        "messageId, Personalize eventId, ActionHub event_id) that arrives again within this "
        "many seconds of the first (by the gateway's receipt times) changes no user state "
        "again. 24 h, as Segment's own deduplication."
    )
    dedup_max_ids: int = Field(
        1000, ge=1, description="Client event ids a user's record remembers at most (16 bytes "
        "each in the changelog): a user sending more within the window is deduplicated "
        "against the newest this many."
    )
    half_life_s: float = Field(7 * 86400.0, description="Label weights halve every half-life.")
    event_type_amounts: dict[str, dict[str, float]] = Field(
        default_factory=lambda: {
            "*": {"view": 1.0, "click": 2.0, "add_to_cart": 3.0, "purchase": 5.0}
        },
        description="Per program (\"*\" = every other program): event type -> weight raise.",
    )
    default_event_amount: float = Field(1.0, description="Raise for event types not listed.")
    top_k: int = Field(20, description="Recommendations per user.")
    exclude_last_n: int = Field(10, description="Assets of the user's last N events are excluded.")
    update_timeout_s: float = Field(
        10.0, description="queue_updates=false: how long a POST waits for user state (-> 504)."
    )
    wait_timeout_s: float = Field(
        30.0, description="POST /events?wait=user|stored: how long it waits for that level "
        "before answering 202 with a receipt (GET /receipts/{receipt})."
    )
    popularity_ttl_s: float = Field(
        2.0, description="How often program popularity is refreshed (one query in the "
        "background; reads get the last value meanwhile)."
    )

    @model_validator(mode="after")
    def _kafka_security_complete(self) -> Settings:
        """Refuse at start what no broker would accept, naming the setting to fix."""
        sasl = self.kafka_security_protocol.startswith("SASL")
        if sasl and self.kafka_sasl_mechanism is None:
            raise ValueError(f"SLUICE_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} "
                             "needs SLUICE_KAFKA_SASL_MECHANISM")
        if not sasl and self.kafka_sasl_mechanism is not None:
            raise ValueError("SLUICE_KAFKA_SASL_MECHANISM is set but "
                             f"SLUICE_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol}: "
                             "use SASL_SSL (or SASL_PLAINTEXT)")
        if self.kafka_sasl_mechanism == "OAUTHBEARER":
            if not self.kafka_sasl_oauth_provider and "sasl.oauthbearer.method" not in self.kafka_extra:
                raise ValueError("SLUICE_KAFKA_SASL_MECHANISM=OAUTHBEARER needs "
                                 "SLUICE_KAFKA_SASL_OAUTH_PROVIDER (msk_iam or module:function)")
        elif sasl and (self.kafka_sasl_username is None or self.kafka_sasl_password is None):
            raise ValueError(f"SLUICE_KAFKA_SASL_MECHANISM={self.kafka_sasl_mechanism} needs "
                             "SLUICE_KAFKA_SASL_USERNAME and SLUICE_KAFKA_SASL_PASSWORD")
        if (self.kafka_ssl_certificate_location is None) != (self.kafka_ssl_key_location is None):
            raise ValueError("mutual TLS needs both SLUICE_KAFKA_SSL_CERTIFICATE_LOCATION and "
                             "SLUICE_KAFKA_SSL_KEY_LOCATION")
        return self

    def environment(self) -> dict[str, str]:
        """The SLUICE_* variables that make a child process (a role, a bench's worker) build
        these same settings; secrets included, so keep it out of logs."""
        dumped = self.model_dump(mode="json")
        env: dict[str, str] = {}
        for name, value in dumped.items():
            raw = getattr(self, name)
            if raw is None:
                continue
            if isinstance(raw, SecretStr):
                value = raw.get_secret_value()
            elif isinstance(value, dict | list):
                value = json.dumps(value)
            env[f"SLUICE_{name.upper()}"] = str(value)
        return env

    def dialect_waits_for_state(self, program_id: str) -> bool:
        """Whether a vendor dialect's post for ``program_id`` waits for user state."""
        programs = self.dialect_state_wait_programs
        return "*" in programs or program_id in programs

    @property
    def topic_user_state(self) -> str:
        """The Faust table's changelog: compacted, one record per user, followed by gateways."""
        return f"{self.agents_app_id}-user-state-changelog"

    @property
    def topic_tallies(self) -> str:
        """The gateways' tallies of what they published (services.shared.tallies)."""
        return f"{self.topic_events}.tallies"

    @property
    def agents_advertised_url(self) -> str:
        """Where this worker is reached (Faust's canonical URL: the owner map names it).
        Bound to every interface: the host's name (a container's, in compose)."""
        if self.agents_url:
            return self.agents_url.rstrip("/")
        host = self.http_host if self.http_host not in ("0.0.0.0", "::", "") else gethostname()
        return f"http://{host}:{self.agents_web_port}"

    @property
    def agents_seed_urls(self) -> list[str]:
        """Where a gateway first asks for the owner map."""
        raw = self.agents_urls or f"http://{self.http_host}:{self.agents_web_port}"
        return [url.strip().rstrip("/") for url in raw.split(",") if url.strip()]

    @property
    def bootstrap(self) -> str:
        """Where clients connect: the real cluster, or the embedded broker."""
        return self.kafka_bootstrap or f"{self.embedded_broker_host}:{self.embedded_broker_port}"

    @property
    def clickhouse_dsn(self) -> str:
        if self.clickhouse_url:
            return self.clickhouse_url
        return f"chdb://{(self.data_dir / 'clickhouse').resolve()}"

    @property
    def clickhouse_is_embedded(self) -> bool:
        return self.clickhouse_dsn.startswith("chdb://")
