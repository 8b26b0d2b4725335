-- The Bitrix24 REST budget of each portal, shared by every app instance on this database
-- (bitrix::limiter): one row per portal holding the GCRA "theoretical arrival time" in
-- microseconds of the database clock, so one UPDATE takes a request or says how long to wait.
CREATE TABLE rest_budgets (
    member_id   TEXT PRIMARY KEY NOT NULL,
    tat_us      BIGINT NOT NULL
);
