ALTER TABLE portals DROP COLUMN refresh_problem;
