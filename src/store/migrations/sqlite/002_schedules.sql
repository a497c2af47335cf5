CREATE TABLE slots (
    schedule TEXT NOT NULL,
    slot TEXT NOT NULL,
    at INTEGER NOT NULL,
    run_id TEXT,
    outcome TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (schedule, slot)
);
CREATE TABLE schedule_marks (
    schedule TEXT PRIMARY KEY,
    since INTEGER NOT NULL
);
CREATE TABLE schedules (
    id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    cron TEXT NOT NULL,
    timezone TEXT,
    input TEXT NOT NULL,
    paused INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX runs_queued ON runs(workflow, created_at) WHERE status = 'pending';
