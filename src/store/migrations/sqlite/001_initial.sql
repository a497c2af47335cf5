CREATE TABLE workflow_versions (
    hash TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    source TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    version TEXT NOT NULL REFERENCES workflow_versions(hash),
    status TEXT NOT NULL,
    trigger TEXT NOT NULL,
    idempotency_key TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    finished_at TEXT,
    wake_at INTEGER,
    state TEXT NOT NULL
);
CREATE UNIQUE INDEX runs_idempotency ON runs(workflow, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX runs_unfinished ON runs(status) WHERE finished_at IS NULL;
CREATE INDEX runs_by_workflow ON runs(workflow, created_at);
CREATE INDEX runs_by_time ON runs(created_at);
CREATE TABLE events (
    seq INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    at TEXT NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX events_by_run ON events(run_id, seq);
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    effect TEXT NOT NULL,
    created_at TEXT NOT NULL,
    done_at TEXT
);
CREATE INDEX outbox_pending ON outbox(id) WHERE done_at IS NULL;
CREATE TABLE attempts (
    run_id TEXT NOT NULL,
    step TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    status INTEGER,
    outcome TEXT NOT NULL,
    error TEXT,
    request TEXT,
    response TEXT,
    PRIMARY KEY (run_id, step, attempt)
) WITHOUT ROWID;
CREATE TABLE kv (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
