-- What a run asks of the interpreter beyond its version, free-threading and TSAN: a debug
-- build or not (NULL: either), and one build by its id or commit (NULL: any).
ALTER TABLE runs ADD COLUMN req_debug BOOLEAN;
ALTER TABLE runs ADD COLUMN req_build TEXT;
