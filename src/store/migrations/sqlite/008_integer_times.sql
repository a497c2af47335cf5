-- One time encoding: every time is INTEGER milliseconds since the epoch (UTC), as `wake_at`,
-- `slots.at` and the approval deadlines already were. Until now other times were RFC 3339 text
-- in two spellings (`…Z` with milliseconds, and `…+00:00` with nanoseconds for approval links).
-- A column's declared type decides how SQLite stores a value, so each table is rebuilt.
-- `runs` loses the foreign key on `version`: the store always writes the version first, and the
-- key cost a lookup on every new run. Row ids are kept: runs are listed in rowid order.
CREATE TABLE runs_v8 (
    id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    version TEXT NOT NULL,
    status TEXT NOT NULL,
    trigger TEXT NOT NULL,
    idempotency_key TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    finished_at INTEGER,
    wake_at INTEGER,
    state TEXT NOT NULL,
    schedule TEXT,
    rev INTEGER NOT NULL DEFAULT 0
);
INSERT INTO runs_v8(rowid, id, workflow, version, status, trigger, idempotency_key, created_at, updated_at, finished_at, wake_at, state, schedule, rev)
    SELECT rowid, id, workflow, version, status, trigger, idempotency_key,
           CAST(round(unixepoch(created_at, 'subsec') * 1000) AS INTEGER),
           CAST(round(unixepoch(updated_at, 'subsec') * 1000) AS INTEGER),
           CAST(round(unixepoch(finished_at, 'subsec') * 1000) AS INTEGER),
           wake_at, state, schedule, rev
    FROM runs;
DROP TABLE runs;
ALTER TABLE runs_v8 RENAME TO runs;
CREATE UNIQUE INDEX runs_idempotency ON runs(workflow, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX runs_unfinished ON runs(status) WHERE finished_at IS NULL;
CREATE INDEX runs_by_workflow ON runs(workflow, created_at);
CREATE INDEX runs_queued ON runs(workflow, created_at) WHERE status = 'pending';
CREATE INDEX runs_by_schedule_unfinished ON runs(schedule, status, created_at) WHERE finished_at IS NULL AND schedule IS NOT NULL;

CREATE TABLE workflow_versions_v8 (
    hash TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    source TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
INSERT INTO workflow_versions_v8(hash, name, path, source, created_at)
    SELECT hash, name, path, source, CAST(round(unixepoch(created_at, 'subsec') * 1000) AS INTEGER)
    FROM workflow_versions;
DROP TABLE workflow_versions;
ALTER TABLE workflow_versions_v8 RENAME TO workflow_versions;

CREATE TABLE events_v8 (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at INTEGER NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    attempt TEXT
);
INSERT INTO events_v8(id, run_id, seq, at, kind, data, attempt)
    SELECT id, run_id, seq, CAST(round(unixepoch(at, 'subsec') * 1000) AS INTEGER), kind, data, attempt
    FROM events;
DROP TABLE events;
ALTER TABLE events_v8 RENAME TO events;
CREATE UNIQUE INDEX events_by_run ON events(run_id, seq);

CREATE TABLE outbox_v8 (
    run_id TEXT NOT NULL,
    id INTEGER NOT NULL,
    effect TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (run_id, id)
) WITHOUT ROWID;
INSERT INTO outbox_v8(run_id, id, effect, created_at)
    SELECT run_id, id, effect, CAST(round(unixepoch(created_at, 'subsec') * 1000) AS INTEGER)
    FROM outbox;
DROP TABLE outbox;
ALTER TABLE outbox_v8 RENAME TO outbox;

CREATE TABLE attempts_v8 (
    run_id TEXT NOT NULL,
    step TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    status INTEGER,
    outcome TEXT NOT NULL,
    error TEXT,
    request TEXT,
    response TEXT,
    PRIMARY KEY (run_id, step, attempt)
) WITHOUT ROWID;
INSERT INTO attempts_v8
    SELECT run_id, step, attempt,
           CAST(round(unixepoch(started_at, 'subsec') * 1000) AS INTEGER),
           CAST(round(unixepoch(finished_at, 'subsec') * 1000) AS INTEGER),
           status, outcome, error, request, response
    FROM attempts;
DROP TABLE attempts;
ALTER TABLE attempts_v8 RENAME TO attempts;

CREATE TABLE slots_v8 (
    schedule TEXT NOT NULL,
    slot TEXT NOT NULL,
    at INTEGER NOT NULL,
    run_id TEXT,
    outcome TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (schedule, slot)
);
INSERT INTO slots_v8
    SELECT schedule, slot, at, run_id, outcome, CAST(round(unixepoch(created_at, 'subsec') * 1000) AS INTEGER)
    FROM slots;
DROP TABLE slots;
ALTER TABLE slots_v8 RENAME TO slots;

CREATE TABLE schedules_v8 (
    id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    cron TEXT NOT NULL,
    timezone TEXT,
    input TEXT NOT NULL,
    paused INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
INSERT INTO schedules_v8
    SELECT id, workflow, cron, timezone, input, paused,
           CAST(round(unixepoch(created_at, 'subsec') * 1000) AS INTEGER),
           CAST(round(unixepoch(updated_at, 'subsec') * 1000) AS INTEGER)
    FROM schedules;
DROP TABLE schedules;
ALTER TABLE schedules_v8 RENAME TO schedules;

CREATE TABLE approval_tokens_v8 (
    hash TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    step TEXT NOT NULL,
    recipient TEXT NOT NULL,
    decision TEXT NOT NULL,
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    mailed_at INTEGER,
    used_at INTEGER
);
INSERT INTO approval_tokens_v8
    SELECT hash, run_id, step, recipient, decision, subject, body, expires_at,
           CAST(round(unixepoch(created_at, 'subsec') * 1000) AS INTEGER),
           CAST(round(unixepoch(mailed_at, 'subsec') * 1000) AS INTEGER),
           CAST(round(unixepoch(used_at, 'subsec') * 1000) AS INTEGER)
    FROM approval_tokens;
DROP TABLE approval_tokens;
ALTER TABLE approval_tokens_v8 RENAME TO approval_tokens;
CREATE INDEX approval_tokens_by_step ON approval_tokens(run_id, step, recipient);
