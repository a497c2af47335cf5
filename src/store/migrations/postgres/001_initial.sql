-- runner's schema on PostgreSQL: the same tables as SQLite's (every time is BIGINT milliseconds
-- since the epoch, UTC), and what several daemons on one database need: nodes with leases, the
-- owner of each outbox row, a claim on each run's timer, and the scheduler's leader.
CREATE TABLE workflow_versions (
    hash TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    source TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
-- `n` orders runs by creation (newest first), as SQLite's rowid does.
CREATE TABLE runs (
    n BIGSERIAL UNIQUE,
    id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    version TEXT NOT NULL,
    status TEXT NOT NULL,
    trigger TEXT NOT NULL,
    idempotency_key TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    finished_at BIGINT,
    wake_at BIGINT,
    state TEXT NOT NULL,
    schedule TEXT,
    rev BIGINT NOT NULL DEFAULT 0,
    -- Until when a node has claimed this run's due timers (so one node fires them).
    wake_claim BIGINT
);
CREATE UNIQUE INDEX runs_idempotency ON runs(workflow, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX runs_unfinished ON runs(status) WHERE finished_at IS NULL;
CREATE INDEX runs_by_workflow ON runs(workflow, created_at);
CREATE INDEX runs_queued ON runs(workflow, created_at) WHERE status = 'pending';
CREATE INDEX runs_by_schedule_unfinished ON runs(schedule, status, created_at) WHERE finished_at IS NULL AND schedule IS NOT NULL;
CREATE INDEX runs_wake ON runs(wake_at) WHERE finished_at IS NULL AND wake_at IS NOT NULL;
CREATE TABLE events (
    id BIGSERIAL PRIMARY KEY,
    run_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    at BIGINT NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    attempt TEXT
);
CREATE UNIQUE INDEX events_by_run ON events(run_id, seq);
-- Pending effects only (a done one is deleted). `owner` is the node performing it: a node's own
-- changes queue theirs under its id; a dead node's are claimed by another.
CREATE TABLE outbox (
    run_id TEXT NOT NULL,
    id BIGINT NOT NULL,
    effect TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    owner TEXT,
    PRIMARY KEY (run_id, id)
);
CREATE TABLE kv (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE slots (
    schedule TEXT NOT NULL,
    slot TEXT NOT NULL,
    at BIGINT NOT NULL,
    run_id TEXT,
    outcome TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (schedule, slot)
);
CREATE TABLE schedule_marks (
    schedule TEXT PRIMARY KEY,
    since BIGINT NOT NULL
);
CREATE TABLE schedules (
    id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    cron TEXT NOT NULL,
    timezone TEXT,
    input TEXT NOT NULL,
    paused BOOLEAN NOT NULL DEFAULT false,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE approval_tokens (
    hash TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    step TEXT NOT NULL,
    recipient TEXT NOT NULL,
    decision TEXT NOT NULL,
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    mailed_at BIGINT,
    used_at BIGINT
);
CREATE INDEX approval_tokens_by_step ON approval_tokens(run_id, step, recipient);
-- Every daemon on the database: its lease is renewed by its heartbeat; every write batch it
-- commits first checks the lease (fencing), and a node whose lease lapsed is deleted by another,
-- which then takes over its outbox rows.
CREATE TABLE nodes (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    lease_until BIGINT NOT NULL,
    defs_hash TEXT NOT NULL DEFAULT ''
);
-- One row per role (`scheduler`): the node that holds it until `expires_at`; `term` counts
-- elections.
CREATE TABLE leader (
    role TEXT PRIMARY KEY,
    node_id TEXT NOT NULL,
    term BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
