-- Events are appended in one global order, so the events of one batch share their pages.
-- Clustered by run (version 5) with rows this large (an attempt record is most of a page's
-- quarter), every change split a leaf page of its own and rewrote interior pages: 8 of the
-- ~20 pages a batch of 7 changes wrote. The (run, seq) index keeps reads by run.
-- Runs are listed newest first in rowid order, which is the order they were created in, so
-- the index on `created_at` (a page written for every new run) goes.
CREATE TABLE events_v7 (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at TEXT NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    attempt TEXT
);
INSERT INTO events_v7(run_id, seq, at, kind, data, attempt)
    SELECT run_id, seq, at, kind, data, attempt FROM events ORDER BY run_id, seq;
DROP TABLE events;
ALTER TABLE events_v7 RENAME TO events;
CREATE UNIQUE INDEX events_by_run ON events(run_id, seq);
DROP INDEX runs_by_time;
