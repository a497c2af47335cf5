-- An attempt's record (what was sent and got, secrets redacted) is kept on the event of its
-- outcome instead of a table of its own: one B-tree fewer to write per step. Records written
-- before stay in `attempts`, which is read but no longer written.
ALTER TABLE events ADD COLUMN attempt TEXT;
