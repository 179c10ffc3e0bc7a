-- A lease's hard deadline, set when the job is leased: a full setup, the iteration's timeout
-- and a margin from then. Heartbeats extend a lease up to it and never past it.
ALTER TABLE jobs ADD COLUMN deadline_at_ms BIGINT;
