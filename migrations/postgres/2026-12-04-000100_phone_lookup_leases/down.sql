ALTER TABLE callbacks DROP COLUMN phone_lookup_by;
ALTER TABLE callbacks DROP COLUMN phone_lookup_until;
