CREATE TABLE approval_tokens (
    hash TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    step TEXT NOT NULL,
    recipient TEXT NOT NULL,
    decision TEXT NOT NULL,
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    mailed_at TEXT,
    used_at TEXT
);
CREATE INDEX approval_tokens_by_step ON approval_tokens(run_id, step, recipient);
