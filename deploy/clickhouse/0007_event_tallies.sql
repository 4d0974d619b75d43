-- What `sluice verify` compares (services/verify.py): per program, minute of receipt and
-- partition of `events`, the events a gateway published and the broker acked (kind
-- 'acked', from the topic `<events>.tallies`), and the events the sink inserted or
-- dead-lettered (kind 'stored', written by the sink with each batch, before it commits).
-- Each record has an id (a gateway's flush; the sink's batch: its first offset), so a
-- record written twice (a redelivered flush, a batch replayed after a crash) is one row:
-- ReplacingMergeTree, read with FINAL; sorted by minute first, as verify reads a window.
-- first/last_offset: the offsets of the messages that held these events, to name where
-- to look when a count falls short.
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
ORDER BY (minute, program_id, kind, partition, id)
