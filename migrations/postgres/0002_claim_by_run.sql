-- Claims take the pending jobs of one run at a time (runs share the fleet), first iterations
-- first: the pending index leads with the run.
DROP INDEX jobs_pending;
CREATE INDEX jobs_pending ON jobs (run_id, iteration, package_idx, mode) WHERE state = 'pending';

-- Every job changes state three or four times, and each outcome rewrites its package's row:
-- vacuum these tables early and without throttling, so claims never wade through dead
-- index entries on a busy queue.
ALTER TABLE jobs SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000,
                      autovacuum_vacuum_cost_delay = 0, autovacuum_analyze_scale_factor = 0.02);
ALTER TABLE packages SET (fillfactor = 70, autovacuum_vacuum_scale_factor = 0.01,
                          autovacuum_vacuum_threshold = 1000, autovacuum_vacuum_cost_delay = 0);
