-- The items of `foreach` steps: one row per item, written when the step starts (its key and
-- value, the list as rendered) and when the item ends (its result). The run's state keeps only
-- the counters and the items in flight, so an item's outcome never rewrites the whole list.
CREATE TABLE items (
    run_id TEXT NOT NULL,
    step TEXT NOT NULL,
    idx INTEGER NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    output TEXT,
    error TEXT,
    finished_at INTEGER,
    PRIMARY KEY (run_id, step, idx)
) WITHOUT ROWID;
