-- CrowdPower's update_session flag, so that `sluice rebuild-state` restores the users'
-- sessions (last seen, session count) as live processing kept them.
ALTER TABLE events ADD COLUMN IF NOT EXISTS update_session Bool DEFAULT false;
