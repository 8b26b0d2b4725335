-- Callbacks waiting for a slot of their Mango account's 4-a-second budget (mango::rate): each
-- holds its place in the line as the time it is woken, so a burst is sent at the limit's pace
-- while the waiting jobs hold no worker.
CREATE TABLE mango_waits (
    bucket  TEXT NOT NULL,
    holder  TEXT NOT NULL,
    wake_us BIGINT NOT NULL,
    PRIMARY KEY (bucket, holder)
);
