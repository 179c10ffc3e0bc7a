-- Runs, their packages and their jobs: one row per (run, package, mode, iteration).
-- The same model as ../sqlite/0001_initial.sql, in PostgreSQL's types.

CREATE TABLE runs (
    id                 TEXT PRIMARY KEY,
    label              TEXT NOT NULL,
    state              TEXT NOT NULL,
    iterations         INTEGER NOT NULL,
    modes_json         TEXT NOT NULL,
    options_json       TEXT NOT NULL,
    registry           TEXT,
    req_python_version TEXT,
    req_free_threaded  BOOLEAN NOT NULL,
    req_tsan           BOOLEAN NOT NULL,
    client_token       TEXT UNIQUE,
    created_at_ms      BIGINT NOT NULL,
    finished_at_ms     BIGINT
);

CREATE TABLE packages (
    run_id      TEXT NOT NULL REFERENCES runs (id),
    package_idx INTEGER NOT NULL,
    name        TEXT NOT NULL,
    spec_json   TEXT NOT NULL,
    -- The verdict so far, recomputed whenever one of the package's jobs settles.
    category    TEXT NOT NULL,
    finished    BOOLEAN NOT NULL DEFAULT FALSE,
    result_json TEXT NOT NULL,
    PRIMARY KEY (run_id, package_idx),
    UNIQUE (run_id, name)
);

-- Jobs are updated in place several times each (leased, heartbeats, done): leave room on
-- each page so those updates can stay on it.
CREATE TABLE jobs (
    id                  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id              TEXT NOT NULL REFERENCES runs (id),
    package_idx         INTEGER NOT NULL,
    mode                TEXT NOT NULL,
    iteration           INTEGER NOT NULL,
    -- pending | leased | done | cancelled | lost
    state               TEXT NOT NULL,
    worker_id           TEXT,
    lease_token         TEXT,
    lease_expires_at_ms BIGINT,
    attempt             INTEGER NOT NULL DEFAULT 0,
    result_json         TEXT,
    settled_at_ms       BIGINT,
    UNIQUE (run_id, package_idx, mode, iteration)
) WITH (fillfactor = 80);

-- The claim's scan: pending jobs in dispatch order.
CREATE INDEX jobs_pending ON jobs (iteration, run_id, package_idx, mode) WHERE state = 'pending';
-- The reaper's scan: leases by expiry.
CREATE INDEX jobs_leased ON jobs (lease_expires_at_ms) WHERE state = 'leased';
CREATE INDEX jobs_by_run_state ON jobs (run_id, state);
