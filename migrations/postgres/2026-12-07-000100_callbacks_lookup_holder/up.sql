-- Burst performance (#12). A phone lookup's run ends its leases by its holder's name alone
-- (`end_lookup_leases`): without an index that read every callback of every portal, in
-- SQLite while holding the one writer (2 ms a time on PostgreSQL in a 10,000-call burst).
-- Partial: only the few callbacks under a lease at any moment are in it.
CREATE INDEX callbacks_lookup_holder ON callbacks (phone_lookup_by) WHERE phone_lookup_by IS NOT NULL;
