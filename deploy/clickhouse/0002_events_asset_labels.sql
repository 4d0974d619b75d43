-- The asset's labels as the catalog held them when the event was accepted: user state
-- rebuilt from this table then equals what live processing computed.
ALTER TABLE events ADD COLUMN IF NOT EXISTS asset_labels Array(String) AFTER labels;
