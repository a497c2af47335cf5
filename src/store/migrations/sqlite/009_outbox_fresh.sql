-- An effect a stopping process gave back without having started it: the next process performs it
-- as it is, instead of as an attempt that was cut short (a crash leaves `fresh` at 0: whatever was
-- queued may have been sent).
ALTER TABLE outbox ADD COLUMN fresh INTEGER NOT NULL DEFAULT 0;
