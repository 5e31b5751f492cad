-- PostgreSQL's part of 0004: model notices are handed out in insertion order (SQLite's implicit rowid).
ALTER TABLE model_notices ADD COLUMN rowid BIGINT GENERATED ALWAYS AS IDENTITY;
