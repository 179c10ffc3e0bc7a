-- Claims take the pending jobs of one run at a time (runs share the fleet), first iterations
-- first: the pending index leads with the run.
CREATE INDEX jobs_pending ON jobs (run_id, iteration, package_idx, mode) WHERE state = 'pending';
