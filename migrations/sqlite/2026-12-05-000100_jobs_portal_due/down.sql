DROP INDEX jobs_portal_due;
