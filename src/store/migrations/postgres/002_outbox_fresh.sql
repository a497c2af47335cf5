-- An effect a stopping node gave back without having started it: the node that takes it performs
-- it as it is, instead of as an attempt that was cut short (a crash leaves `fresh` false: whatever
-- was queued may have been sent).
ALTER TABLE outbox ADD COLUMN fresh BOOLEAN NOT NULL DEFAULT false;
