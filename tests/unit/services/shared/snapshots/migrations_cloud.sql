-- Sluice's ClickHouse migrations for topology cloud.
-- Printed only, nothing was run. `sluice migrate` runs, in this order, the
-- migrations not yet recorded in sluice_migrations; every statement is idempotent.

CREATE TABLE IF NOT EXISTS sluice_migrations
(
    name       String,
    checksum   String,
    applied_at DateTime
)
ENGINE = ReplacingMergeTree(applied_at)
ORDER BY name;

-- 0001_events (sha256 7816dea479ed)
CREATE TABLE IF NOT EXISTS events
(
    program_id           String,
    event_id             UUID,
    user_id              String,
    event_timestamp      DateTime64(6, 'UTC'),
    event_type           LowCardinality(String),
    asset_id             String,
    labels               Array(String),
    received_at          DateTime64(6, 'UTC'),
    queue_updates        Bool,
    process_user_actions Bool
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_timestamp)
ORDER BY (program_id, user_id, event_timestamp, event_id);

-- 0002_events_asset_labels (sha256 7b9a1fa44bd8)
ALTER TABLE events ADD COLUMN IF NOT EXISTS asset_labels Array(String) AFTER labels;

-- 0003_assets (sha256 3aeca98bedc0)
CREATE TABLE IF NOT EXISTS assets
(
    program_id String,
    asset_id   String,
    labels     Array(String),
    attributes String,
    updated_at DateTime64(6, 'UTC'),
    deleted    UInt8
)
ENGINE = ReplacingMergeTree(updated_at, deleted)
ORDER BY (program_id, asset_id);

-- 0004_events_dialect_fields (sha256 0a4a97282db2)
ALTER TABLE events ADD COLUMN IF NOT EXISTS source LowCardinality(String) DEFAULT 'actionhub';
ALTER TABLE events ADD COLUMN IF NOT EXISTS client_event_id String DEFAULT '';
ALTER TABLE events ADD COLUMN IF NOT EXISTS session_id String DEFAULT '';
ALTER TABLE events ADD COLUMN IF NOT EXISTS anonymous_id String DEFAULT '';
ALTER TABLE events ADD COLUMN IF NOT EXISTS email String DEFAULT '';
ALTER TABLE events ADD COLUMN IF NOT EXISTS properties String DEFAULT '{}';
ALTER TABLE events ADD COLUMN IF NOT EXISTS value Nullable(Float64);

-- 0005_events_update_session (sha256 8ea9357a022d)
ALTER TABLE events ADD COLUMN IF NOT EXISTS update_session Bool DEFAULT false;

-- 0006_events_client_timestamp (sha256 d710d2f9a739)
ALTER TABLE events ADD COLUMN IF NOT EXISTS client_timestamp Nullable(DateTime64(6, 'UTC')) AFTER event_timestamp;

-- 0007_event_tallies (sha256 09377cb2aa29)
CREATE TABLE IF NOT EXISTS event_tallies
(
    program_id   String,
    minute       DateTime('UTC'),
    kind         LowCardinality(String),
    partition    UInt32,
    id           String,
    events       UInt64,
    dead         UInt64,
    first_offset Int64,
    last_offset  Int64,
    written_at   DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(written_at)
PARTITION BY toYYYYMM(minute)
ORDER BY (minute, program_id, kind, partition, id);

-- 0008_erasures (sha256 bfdb8fa0ec4f)
CREATE TABLE IF NOT EXISTS erasures
(
    program_id       String,
    user_digest      String,
    erasure_id       String,
    requested_at     DateTime64(6, 'UTC'),
    erased_at        DateTime64(6, 'UTC'),
    source_partition UInt32,
    source_offset    Int64,
    rows_deleted     UInt64
)
ENGINE = ReplacingMergeTree(erased_at)
ORDER BY (program_id, user_digest, erasure_id);
