-- YAML schedules paused by the API or the CLI (`yaml:<workflow>:<index>`, as the scheduler keys
-- them). A row is a pause; resuming deletes it.
CREATE TABLE schedule_pauses (
    schedule TEXT PRIMARY KEY,
    paused_at BIGINT NOT NULL
);
