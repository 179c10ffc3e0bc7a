-- A job whose setup failed for the infrastructure (the network, the index, a full disk) goes
-- back to the queue instead of settling its package. `avoid_workers` holds the ids of the
-- workers it failed on (a JSON array of strings), which claims pass it by until
-- `avoid_until_ms` while a worker that has not failed it asks.
ALTER TABLE jobs ADD COLUMN avoid_workers TEXT;
ALTER TABLE jobs ADD COLUMN avoid_until_ms BIGINT;
