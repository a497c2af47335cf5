ALTER TABLE runs ADD COLUMN schedule TEXT;
CREATE INDEX runs_by_schedule_unfinished ON runs(schedule, status, created_at) WHERE finished_at IS NULL AND schedule IS NOT NULL;
