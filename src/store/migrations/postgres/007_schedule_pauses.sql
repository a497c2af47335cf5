-- YAML schedules paused by the API or the CLI, kept for the schedule as written (cron, zone and
-- input: `signature`), not for its place in the file. A row is a pause; resuming deletes it.
CREATE TABLE schedule_pauses (
    workflow TEXT NOT NULL,
    signature TEXT NOT NULL,
    paused_at BIGINT NOT NULL,
    PRIMARY KEY (workflow, signature)
);
