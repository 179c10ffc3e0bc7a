-- The run whose packages a run runs again (`ftsurvey runs rerun`), for `compare`.
ALTER TABLE runs ADD COLUMN rerun_of TEXT;
