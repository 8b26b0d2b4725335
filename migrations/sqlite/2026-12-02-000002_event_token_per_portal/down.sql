-- Back to a globally unique event_token (fails if two portals share one by now).
CREATE TABLE callbacks_old (
    id                TEXT PRIMARY KEY NOT NULL,
    member_id         TEXT NOT NULL REFERENCES portals (member_id) ON DELETE CASCADE,
    deal_id           TEXT NOT NULL,
    event_token       TEXT UNIQUE,
    workflow_id       TEXT,
    requested_group   TEXT NOT NULL,
    group_kind        TEXT,
    group_extension   TEXT,
    phone_override    TEXT,
    phone             TEXT,
    status            TEXT NOT NULL,
    command_id        TEXT UNIQUE,
    mango_code        INTEGER,
    error             TEXT,
    outcome           TEXT,
    attempts          INTEGER NOT NULL DEFAULT 0,
    contact_checks    INTEGER NOT NULL DEFAULT 0,
    event_sent_at     TIMESTAMP,
    comment_added_at  TIMESTAMP,
    started_at        TIMESTAMP,
    finished_at       TIMESTAMP,
    created_at        TIMESTAMP NOT NULL,
    updated_at        TIMESTAMP NOT NULL
);
INSERT INTO callbacks_old SELECT
    id, member_id, deal_id, event_token, workflow_id, requested_group, group_kind, group_extension,
    phone_override, phone, status, command_id, mango_code, error, outcome, attempts, contact_checks,
    event_sent_at, comment_added_at, started_at, finished_at, created_at, updated_at
FROM callbacks;
DROP TABLE callbacks;
ALTER TABLE callbacks_old RENAME TO callbacks;
CREATE INDEX callbacks_portal_created ON callbacks (member_id, created_at);
CREATE INDEX callbacks_deal ON callbacks (member_id, deal_id);
