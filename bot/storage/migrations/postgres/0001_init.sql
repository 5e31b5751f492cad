-- PostgreSQL's part of 0001 (bot/storage/postgres.py runs it after 0001_init.sql, translated).

-- The ledger is append-only: SQLite's two triggers, as PL/pgSQL.
CREATE FUNCTION ledger_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the ledger is append-only';
END $$;
CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();

-- SQLite numbers every row of a table without an INTEGER PRIMARY KEY in insertion order (`rowid`), and
-- the queries break ties between jobs created in the same millisecond by it. The same column here.
ALTER TABLE jobs ADD COLUMN rowid BIGINT GENERATED ALWAYS AS IDENTITY;
