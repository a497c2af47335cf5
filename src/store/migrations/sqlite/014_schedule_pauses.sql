-- YAML schedules paused by the API or the CLI (`workflow/index` as the scheduler keys them,
-- `yaml:<workflow>:<index>`). A row is a pause; resuming deletes it. Programmatic schedules
-- keep their own `paused` column.
CREATE TABLE schedule_pauses (
    schedule TEXT PRIMARY KEY,
    paused_at INTEGER NOT NULL
) WITHOUT ROWID;
