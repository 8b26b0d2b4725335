-- Back to a globally unique event_token (fails if two portals share one by now).
ALTER TABLE callbacks DROP CONSTRAINT callbacks_member_event_token_key;
ALTER TABLE callbacks ADD CONSTRAINT callbacks_event_token_key UNIQUE (event_token);
