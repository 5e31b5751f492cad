-- PostgreSQL's part of 0006: retention may erase an old row's free text and actor, nothing else.
CREATE FUNCTION ledger_keep_books() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.id, NEW.guild_id, NEW.user_id, NEW.job_id, NEW.kind, NEW.amount, NEW.delta_balance,
        NEW.delta_held, NEW.created_at)
        IS DISTINCT FROM (OLD.id, OLD.guild_id, OLD.user_id, OLD.job_id, OLD.kind, OLD.amount,
        OLD.delta_balance, OLD.delta_held, OLD.created_at)
       OR (NEW.reason IS DISTINCT FROM OLD.reason AND NEW.reason IS NOT NULL)
       OR (NEW.actor_id IS DISTINCT FROM OLD.actor_id AND NEW.actor_id IS NOT NULL) THEN
        RAISE EXCEPTION 'the ledger is append-only (only old free-text detail may be erased)';
    END IF;
    RETURN NEW;
END $$;
DROP TRIGGER ledger_no_update ON ledger;
CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger FOR EACH ROW EXECUTE FUNCTION ledger_keep_books();
