-- Runs, their packages and their jobs: one row per (run, package, mode, iteration).

CREATE TABLE runs (
    id                 TEXT PRIMARY KEY,
    label              TEXT NOT NULL,
    state              TEXT NOT NULL,
    iterations         INTEGER NOT NULL,
    modes_json         TEXT NOT NULL,
    options_json       TEXT NOT NULL,
    registry           TEXT,
    req_python_version TEXT,
    req_free_threaded  INTEGER NOT NULL,
    req_tsan           INTEGER NOT NULL,
    client_token       TEXT UNIQUE,
    created_at_ms      INTEGER NOT NULL,
    finished_at_ms     INTEGER
);

CREATE TABLE packages (
    run_id      TEXT NOT NULL REFERENCES runs (id),
    package_idx INTEGER NOT NULL,
    name        TEXT NOT NULL,
    spec_json   TEXT NOT NULL,
    -- The verdict so far, recomputed whenever one of the package's jobs settles.
    category    TEXT NOT NULL,
    finished    INTEGER NOT NULL DEFAULT 0,
    result_json TEXT NOT NULL,
    PRIMARY KEY (run_id, package_idx),
    UNIQUE (run_id, name)
);

CREATE TABLE jobs (
    id                  INTEGER PRIMARY KEY,
    run_id              TEXT NOT NULL REFERENCES runs (id),
    package_idx         INTEGER NOT NULL,
    mode                TEXT NOT NULL,
    iteration           INTEGER NOT NULL,
    -- pending | leased | done | cancelled | lost
    state               TEXT NOT NULL,
    worker_id           TEXT,
    lease_token         TEXT,
    lease_expires_at_ms INTEGER,
    attempt             INTEGER NOT NULL DEFAULT 0,
    result_json         TEXT,
    settled_at_ms       INTEGER,
    UNIQUE (run_id, package_idx, mode, iteration)
);

CREATE INDEX jobs_by_state ON jobs (state, run_id);
CREATE INDEX jobs_by_package ON jobs (run_id, package_idx);
