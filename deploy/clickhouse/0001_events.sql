-- Every accepted event, once. ReplacingMergeTree on a sorting key that ends in the
-- server-assigned event_id: a batch the sink replays after a crash (inserted, not yet
-- committed) collapses onto the rows already there; reads use FINAL.
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
ORDER BY (program_id, user_id, event_timestamp, event_id)
