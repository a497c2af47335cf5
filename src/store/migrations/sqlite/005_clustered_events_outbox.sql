-- Fewer pages per state change: events and the outbox are clustered by run (one B-tree each,
-- no second index), the outbox keeps only pending rows (done ones are deleted), and a run's
-- `rev` lets the writer reuse the state it already holds instead of parsing it again.
-- Event numbers become per run; outbox ids are derived from them (never reused), and rows
-- still pending from before are renumbered below zero so they cannot collide.
CREATE TABLE events_v5 (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at TEXT NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
INSERT INTO events_v5(run_id, seq, at, kind, data) SELECT run_id, seq, at, kind, data FROM events;
DROP TABLE events;
ALTER TABLE events_v5 RENAME TO events;
CREATE TABLE outbox_v5 (
    run_id TEXT NOT NULL,
    id INTEGER NOT NULL,
    effect TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (run_id, id)
) WITHOUT ROWID;
INSERT INTO outbox_v5(run_id, id, effect, created_at) SELECT run_id, -id, effect, created_at FROM outbox WHERE done_at IS NULL;
DROP TABLE outbox;
ALTER TABLE outbox_v5 RENAME TO outbox;
ALTER TABLE runs ADD COLUMN rev INTEGER NOT NULL DEFAULT 0;
