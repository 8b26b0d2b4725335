-- The outcome loop (#11): how each callback ended, its attempts, Mango's call events, and the
-- portal's outcome, retry and working-hours settings.

-- The callback's final outcome, copied from its last attempt when the callback closes.
ALTER TABLE callbacks ADD COLUMN call_outcome TEXT;          -- answered | manager_missed | client_missed | failed | unknown
ALTER TABLE callbacks ADD COLUMN manager_extension TEXT;     -- the manager who answered
ALTER TABLE callbacks ADD COLUMN talk_seconds INTEGER;       -- the client's talk time
ALTER TABLE callbacks ADD COLUMN client_connected_at TIMESTAMP; -- speed-to-lead ends here
ALTER TABLE callbacks ADD COLUMN call_ended_at TIMESTAMP;
ALTER TABLE callbacks ADD COLUMN scheduled_for TIMESTAMP;    -- the next attempt waits for this (hours, retry delay)
ALTER TABLE callbacks ADD COLUMN outcome_reported_at TIMESTAMP; -- outcome comment / waiting robot's event sent

-- One Mango command per attempt of a callback (n = 1 the first call, then retries). A resend of
-- an attempt whose result is unknown keeps the attempt's row (`command_id` is its base id).
CREATE TABLE call_attempts (
    callback_id TEXT NOT NULL REFERENCES callbacks(id) ON DELETE CASCADE,
    n INTEGER NOT NULL,
    member_id TEXT NOT NULL,
    command_id TEXT NOT NULL,
    group_kind TEXT NOT NULL,
    group_extension TEXT NOT NULL,
    entry_id TEXT,
    placed_at TIMESTAMP NOT NULL,
    outcome TEXT,
    manager_extension TEXT,
    client_connected_at TIMESTAMP,
    talk_seconds INTEGER,
    disconnect_reason INTEGER,
    ended_at TIMESTAMP,
    PRIMARY KEY (callback_id, n)
);
CREATE UNIQUE INDEX call_attempts_command ON call_attempts (member_id, command_id);
CREATE INDEX call_attempts_entry ON call_attempts (member_id, entry_id);

-- Mango's events/call and events/summary as received (verified), so any order and any
-- duplicate end in the same outcome: the key makes a replay a no-op.
CREATE TABLE mango_call_events (
    member_id TEXT NOT NULL,
    entry_id TEXT NOT NULL,
    kind TEXT NOT NULL,           -- call | summary
    call_id TEXT NOT NULL,        -- '' for a summary
    seq BIGINT NOT NULL,
    command_id TEXT,
    body TEXT NOT NULL,           -- the json field as received
    received_at TIMESTAMP NOT NULL,
    PRIMARY KEY (member_id, entry_id, kind, call_id, seq)
);

ALTER TABLE portal_settings ADD COLUMN wait_for_outcome BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE portal_settings ADD COLUMN outcome_wait_minutes INTEGER NOT NULL DEFAULT 30;
ALTER TABLE portal_settings ADD COLUMN retry_no_answer_times INTEGER NOT NULL DEFAULT 2;
ALTER TABLE portal_settings ADD COLUMN retry_no_answer_minutes INTEGER NOT NULL DEFAULT 5;
ALTER TABLE portal_settings ADD COLUMN retry_escalate BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE portal_settings ADD COLUMN retry_client_times INTEGER NOT NULL DEFAULT 1;
ALTER TABLE portal_settings ADD COLUMN retry_client_minutes INTEGER NOT NULL DEFAULT 10;
ALTER TABLE portal_settings ADD COLUMN hours_enabled BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE portal_settings ADD COLUMN timezone TEXT NOT NULL DEFAULT 'Europe/Moscow';
ALTER TABLE portal_settings ADD COLUMN work_days TEXT NOT NULL DEFAULT '1,2,3,4,5'; -- ISO weekdays
ALTER TABLE portal_settings ADD COLUMN work_start_minute INTEGER NOT NULL DEFAULT 540; -- 09:00
ALTER TABLE portal_settings ADD COLUMN work_end_minute INTEGER NOT NULL DEFAULT 1080;  -- 18:00
ALTER TABLE portal_settings ADD COLUMN holidays TEXT NOT NULL DEFAULT '';  -- YYYY-MM-DD, comma separated
