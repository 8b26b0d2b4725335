-- event_token is unique per portal, not globally: portal A must not be able to pre-empt portal
-- B's event tokens.
ALTER TABLE callbacks DROP CONSTRAINT callbacks_event_token_key;
ALTER TABLE callbacks ADD CONSTRAINT callbacks_member_event_token_key UNIQUE (member_id, event_token);
