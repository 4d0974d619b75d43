-- The asset catalog, as the compacted `assets` topic carries it. The newest version of
-- each (program, asset) wins; a deleted asset is kept as a row with deleted = 1 and
-- dropped by FINAL.
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
ORDER BY (program_id, asset_id)
