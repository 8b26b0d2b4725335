-- The self-check (event.bind ONAPPTEST + event.test): when the app last asked Bitrix24 to send
-- ONAPPTEST, and when a verified ONAPPTEST last arrived. Reached since the last request = yes.
ALTER TABLE portals ADD COLUMN app_check_sent_at TIMESTAMP;
ALTER TABLE portals ADD COLUMN app_reached_at TIMESTAMP;
-- When the request that brought the stored application token arrived: an ONAPPUPDATE verified
-- later by a retried job must not overwrite a token that a newer request brought meanwhile.
ALTER TABLE portals ADD COLUMN app_token_received_at TIMESTAMP;
