-- Failed runs of the built-in `qstash` workflow are the QStash API's dead-letter queue; a row
-- here is one taken out of it (`DELETE /v2/dlq/{id}`). The run itself is kept.
CREATE TABLE dlq_removed (
    run_id TEXT PRIMARY KEY,
    removed_at BIGINT NOT NULL
);
