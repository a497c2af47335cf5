-- YAML schedules paused by the API or the CLI. A pause is kept for the schedule as it is
-- written (its cron, zone and input: `signature`), not for its place in the file, so it
-- follows the schedule when others are added or moved before it, and an edited schedule is a
-- new one. A row is a pause; resuming deletes it. Programmatic schedules keep their own
-- `paused` column.
CREATE TABLE schedule_pauses (
    workflow TEXT NOT NULL,
    signature TEXT NOT NULL,
    paused_at INTEGER NOT NULL,
    PRIMARY KEY (workflow, signature)
) WITHOUT ROWID;
