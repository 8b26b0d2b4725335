-- Claims in a burst (#12). A job woken from a wait for a rate budget (Mango's 4 callbacks a
-- second, a portal's REST budget) has a turn that passes if it is not claimed: it goes before
-- the first runs of its portal's other jobs, which only join the line behind it. Ordered by
-- run_at alone, a portal's hundred fresh robot calls were claimed first, the woken waiters came
-- a second late, found their slots taken, and queued again: 2.5 rounds per callback in a
-- 10,000-call burst. And with id in the index a portal's first due jobs come in claim order
-- straight from it: sorting them fetched every due row of the portal (0.7 ms a portal).
ALTER TABLE jobs ADD COLUMN budget_waited BOOLEAN NOT NULL DEFAULT 0;
DROP INDEX jobs_portal_due;
CREATE INDEX jobs_portal_due ON jobs (status, member_id, budget_waited DESC, run_at, id);
