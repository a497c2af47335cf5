-- Events sent to runner (`POST /api/v1/events/{event}`, `runner notify`), kept for
-- `RUNNER_EVENT_RETENTION` so that a run that starts waiting after an event arrived still
-- receives it (lookback). `id` is the sender's (a retried send is the same event) or runner's.
CREATE TABLE inbound_events (
    seq BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL,
    id TEXT NOT NULL,
    key TEXT NOT NULL,
    data TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    -- The runs it reached (a JSON list) once its delivery ended; NULL until then, so that a
    -- delivery a crash cut short is done again.
    delivered TEXT,
    UNIQUE (name, id)
);
CREATE INDEX inbound_events_by_key ON inbound_events(name, key, received_at);
CREATE INDEX inbound_events_by_time ON inbound_events(received_at);

-- What runs wait for: a `wait_for_event` step in its wait, or a `cancel_on` entry of a running
-- run (`step` is then `#cancel_on.N`). `since` is the run's creation: lookback goes back to it.
CREATE TABLE event_waits (
    run_id TEXT NOT NULL,
    step TEXT NOT NULL,
    name TEXT NOT NULL,
    key TEXT NOT NULL,
    since BIGINT NOT NULL,
    PRIMARY KEY (run_id, step)
);
CREATE INDEX event_waits_by_key ON event_waits(name, key);
