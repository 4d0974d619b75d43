-- What the other vendors' dialects bring (issue: speak every vendor's dialect). Existing
-- rows keep their values and read the defaults below.
ALTER TABLE events ADD COLUMN IF NOT EXISTS source LowCardinality(String) DEFAULT 'actionhub';
ALTER TABLE events ADD COLUMN IF NOT EXISTS client_event_id String DEFAULT '';
ALTER TABLE events ADD COLUMN IF NOT EXISTS session_id String DEFAULT '';
ALTER TABLE events ADD COLUMN IF NOT EXISTS anonymous_id String DEFAULT '';
ALTER TABLE events ADD COLUMN IF NOT EXISTS email String DEFAULT '';
ALTER TABLE events ADD COLUMN IF NOT EXISTS properties String DEFAULT '{}';
ALTER TABLE events ADD COLUMN IF NOT EXISTS value Nullable(Float64);
