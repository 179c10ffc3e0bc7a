-- An iteration's two output tails in columns of their own, out of `result_json`: verdicts,
-- which read every outcome of a package each time one settles, parse the outcome without its
-- bulk, and a listing reads the tails only when asked. Rows recorded before keep the tails in
-- `result_json` and leave these NULL.
ALTER TABLE jobs ADD COLUMN stdout_tail TEXT;
ALTER TABLE jobs ADD COLUMN stderr_tail TEXT;
