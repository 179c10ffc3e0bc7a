-- A worker's warm packages: each one's pending jobs, found by (run, package) without reading
-- the rest of the run's queue. It holds every column the claim reads, so the planner, which
-- has no statistics here, takes it over the run-wide pending index.
CREATE INDEX jobs_pending_by_package ON jobs (run_id, package_idx, iteration, mode) WHERE state = 'pending';
