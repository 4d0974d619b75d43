-- The client's clock as it sent it, for the dialects whose clients send their own send time
-- (PostHog sent_at, Segment sentAt): event_timestamp then holds the time corrected for the
-- client's clock skew (received_at - (sent_at - timestamp)); NULL where nothing was corrected.
ALTER TABLE events ADD COLUMN IF NOT EXISTS client_timestamp Nullable(DateTime64(6, 'UTC')) AFTER event_timestamp;
