-- Flow control: a call with a flow-control key marks its outbox row with the key when it asks to
-- start (`flow_since`) and when it may (`flow_admitted`). Calls in flight and waiting are counted
-- from these rows, which go with the effect (its outcome, a cancel, a take-over), so a `kill -9`
-- can leak no slot. `flow_keys` keeps each key's latest limits and when a 429/503 with
-- Retry-After closed it until; `flow_starts` the starts within the key's period, for `rate`.
ALTER TABLE outbox ADD COLUMN flow_key TEXT;
ALTER TABLE outbox ADD COLUMN flow_since INTEGER;
ALTER TABLE outbox ADD COLUMN flow_admitted INTEGER;
CREATE INDEX outbox_by_flow_key ON outbox(flow_key, flow_since) WHERE flow_key IS NOT NULL;
CREATE TABLE flow_keys (
    key TEXT PRIMARY KEY,
    parallelism INTEGER,
    rate INTEGER,
    period_ms INTEGER NOT NULL,
    closed_until INTEGER,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE flow_starts (
    key TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX flow_starts_by_key ON flow_starts(key, at);
