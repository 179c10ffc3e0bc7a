-- A worker's warm packages: each one's pending jobs, first iterations first, found by (run,
-- state, package) without reading the rest of the run's queue. Counts by (run, state) use the
-- same index, and so does the reaper, run by run: leased jobs only exist in runs still going.
DROP INDEX jobs_by_run_state;
CREATE INDEX jobs_by_run_state ON jobs (run_id, state, package_idx, iteration);

-- Every lease and every outcome wrote an entry here too, and the planner, whose statistics
-- lag a queue that changes thousands of rows a second, took it for the cheapest way to reach
-- a few hundred leased jobs by id.
DROP INDEX jobs_leased;

-- A verdict is written once, when its package's last job settles; a run is finished once no
-- package is left without one.
CREATE INDEX packages_unfinished ON packages (run_id) WHERE NOT finished;
