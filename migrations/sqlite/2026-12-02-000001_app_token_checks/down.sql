ALTER TABLE portals DROP COLUMN app_token_received_at;
ALTER TABLE portals DROP COLUMN app_reached_at;
ALTER TABLE portals DROP COLUMN app_check_sent_at;
