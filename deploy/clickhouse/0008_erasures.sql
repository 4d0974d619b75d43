-- One row per finished user erasure, written by the sink after it deleted the user's rows
-- from events (services/sink/erase.py): what GET /users/{id}/erasure/{receipt} reads, and an
-- operator's record that a request was carried out. No user id: its digest
-- (blake2b of program_id, 0x1f, user_id), so the table itself names no one.
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
ORDER BY (program_id, user_digest, erasure_id)
