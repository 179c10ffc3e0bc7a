-- Why each lease of a job ended without an outcome, so a job given up as lost says why:
-- `ended_by` holds the reason of the lease being ended now (a session that ended), read and
-- cleared by the reaper, which appends each attempt's end to `attempt_ends`.
ALTER TABLE jobs ADD COLUMN ended_by TEXT;
ALTER TABLE jobs ADD COLUMN attempt_ends TEXT;
