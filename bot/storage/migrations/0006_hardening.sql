-- Retention: history older than JOB_HISTORY_DAYS is pruned (bot.engine sweep, hourly). Ended job
-- rows are deleted; ledger rows stay (they are the books) but lose the free text an admin typed and
-- who typed it. No amount, delta or key column may ever change, so every account still satisfies
-- balance = SUM(delta_balance) and held = SUM(delta_held).

DROP TRIGGER ledger_no_update;
CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
WHEN NEW.id IS NOT OLD.id OR NEW.guild_id IS NOT OLD.guild_id OR NEW.user_id IS NOT OLD.user_id
    OR NEW.job_id IS NOT OLD.job_id OR NEW.kind IS NOT OLD.kind OR NEW.amount IS NOT OLD.amount
    OR NEW.delta_balance IS NOT OLD.delta_balance OR NEW.delta_held IS NOT OLD.delta_held
    OR NEW.created_at IS NOT OLD.created_at
    OR (NEW.reason IS NOT OLD.reason AND NEW.reason IS NOT NULL)
    OR (NEW.actor_id IS NOT OLD.actor_id AND NEW.actor_id IS NOT NULL)
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only (only old free-text detail may be erased)'); END;

CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
