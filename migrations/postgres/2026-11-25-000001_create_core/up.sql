-- One row per Bitrix24 portal (tenant), keyed by its stable member_id.
CREATE TABLE portals (
    member_id          TEXT PRIMARY KEY NOT NULL,
    domain             TEXT NOT NULL,
    client_endpoint    TEXT NOT NULL,
    server_endpoint    TEXT NOT NULL,
    -- AES-GCM sealed (see src/crypto.rs); never plain text.
    access_token       TEXT,
    refresh_token      TEXT,
    application_token  TEXT,
    expires_at         TIMESTAMP,
    scope              TEXT NOT NULL DEFAULT '',
    status             TEXT NOT NULL DEFAULT '',
    lang               TEXT NOT NULL DEFAULT 'ru',
    installed          BOOLEAN NOT NULL DEFAULT FALSE,
    needs_reauth       BOOLEAN NOT NULL DEFAULT FALSE,
    uninstalled_at     TIMESTAMP,
    -- Bumped on every token change: the single-flight refresh compares it.
    token_version      BIGINT NOT NULL DEFAULT 0,
    -- Lease taken by the one instance refreshing the tokens (single-flight across instances).
    refresh_lock_until TIMESTAMP,
    refresh_lock_by    TEXT,
    refreshed_at       TIMESTAMP,
    created_at         TIMESTAMP NOT NULL,
    updated_at         TIMESTAMP NOT NULL
);

CREATE TABLE portal_settings (
    member_id                 TEXT PRIMARY KEY NOT NULL REFERENCES portals (member_id) ON DELETE CASCADE,
    mango_api_key             TEXT,
    mango_api_salt            TEXT,
    line_number               TEXT NOT NULL DEFAULT '',
    trainee_extension         TEXT NOT NULL DEFAULT '',
    experienced_extension     TEXT NOT NULL DEFAULT '',
    duplicate_window_minutes  INTEGER NOT NULL DEFAULT 10,
    contact_wait_seconds      INTEGER NOT NULL DEFAULT 60,
    mango_last_error          TEXT,
    mango_checked_at          TIMESTAMP,
    updated_at                TIMESTAMP NOT NULL
);

-- The duplicate cut-off: one row per (portal, deal), updated by compare-and-set.
CREATE TABLE deals (
    member_id           TEXT NOT NULL REFERENCES portals (member_id) ON DELETE CASCADE,
    deal_id             TEXT NOT NULL,
    runs                INTEGER NOT NULL DEFAULT 0,
    active_callback_id  TEXT,
    last_started_at     TIMESTAMP,
    updated_at          TIMESTAMP NOT NULL,
    PRIMARY KEY (member_id, deal_id)
);

-- One row per robot run.
CREATE TABLE callbacks (
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
CREATE INDEX callbacks_portal_created ON callbacks (member_id, created_at);
CREATE INDEX callbacks_deal ON callbacks (member_id, deal_id);

-- The durable job queue (src/jobs/queue.rs is the only code that writes it).
CREATE TABLE jobs (
    id            TEXT PRIMARY KEY NOT NULL,
    member_id     TEXT REFERENCES portals (member_id) ON DELETE CASCADE,
    kind          TEXT NOT NULL,
    payload       TEXT NOT NULL,
    dedup_key     TEXT UNIQUE,
    status        TEXT NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    max_attempts  INTEGER NOT NULL,
    run_at        TIMESTAMP NOT NULL,
    locked_by     TEXT,
    locked_until  TIMESTAMP,
    last_error    TEXT,
    created_at    TIMESTAMP NOT NULL,
    updated_at    TIMESTAMP NOT NULL
);
CREATE INDEX jobs_due ON jobs (status, run_at);

-- Sliding-window rate rows shared by every app instance: Mango's callback commands per account
-- (mango::rate) and the settings page's Mango requests (portal::throttle). One row per taken slot,
-- keyed by its time in microseconds; slot -1 serialises concurrent takers.
CREATE TABLE rate_slots (
    bucket      TEXT NOT NULL,
    slot        BIGINT NOT NULL,
    used        INTEGER NOT NULL,
    PRIMARY KEY (bucket, slot)
);
