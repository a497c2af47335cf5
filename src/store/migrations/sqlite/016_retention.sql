-- Finished runs by when they finished, for deleting those past the retention (`runner prune`,
-- `--retention`) without reading the table.
CREATE INDEX runs_finished ON runs(finished_at) WHERE finished_at IS NOT NULL;
