-- Runs per key (`concurrency.key`): a run keeps its rendered key, and the runs of a workflow
-- with one key that have not finished (going, or queued as `pending`) are found by this index.
ALTER TABLE runs ADD COLUMN concurrency_key TEXT;
CREATE INDEX runs_by_concurrency_key ON runs(workflow, concurrency_key, created_at)
    WHERE concurrency_key IS NOT NULL AND finished_at IS NULL;
