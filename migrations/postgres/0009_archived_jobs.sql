-- A finished or cancelled run's jobs move here (`ftsurvey runs archive`, `serve
-- --keep-finished-jobs`), out of the table that claims, heartbeats, the reaper and outcomes
-- read: that table holds the runs still going and the recently finished ones, however many
-- runs the store has kept. Only what a finished run's readers need moves: the job's key, how
-- it ended, its outcome and its output tails; the lease's working columns stay behind.
CREATE TABLE archived_jobs (
    id            BIGINT PRIMARY KEY,
    run_id        TEXT NOT NULL REFERENCES runs (id),
    package_idx   INTEGER NOT NULL,
    mode          TEXT NOT NULL,
    iteration     INTEGER NOT NULL,
    -- done | cancelled | lost
    state         TEXT NOT NULL,
    worker_id     TEXT,
    attempt       INTEGER NOT NULL,
    result_json   TEXT,
    settled_at_ms BIGINT,
    attempt_ends  TEXT,
    stdout_tail   TEXT,
    stderr_tail   TEXT,
    UNIQUE (run_id, package_idx, mode, iteration)
);
-- When the run's jobs moved; NULL while they are in `jobs`.
ALTER TABLE runs ADD COLUMN archived_at_ms BIGINT;
-- The retention pass's question: finished runs not archived yet, oldest first.
CREATE INDEX runs_to_archive ON runs (finished_at_ms) WHERE archived_at_ms IS NULL AND finished_at_ms IS NOT NULL;
