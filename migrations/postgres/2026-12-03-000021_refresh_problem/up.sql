-- Why the last token refresh failed, shown on the settings page; cleared by a token save.
ALTER TABLE portals ADD COLUMN refresh_problem TEXT;
