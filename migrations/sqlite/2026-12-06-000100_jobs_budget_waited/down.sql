DROP INDEX jobs_portal_due;
CREATE INDEX jobs_portal_due ON jobs (status, member_id, run_at);
ALTER TABLE jobs DROP COLUMN budget_waited;
