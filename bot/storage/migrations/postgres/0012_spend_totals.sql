-- PostgreSQL's part of 0012. Other processes may still be writing (an upgrade while older ones run):
-- a capture committed between the count above and the triggers below would be missing from the totals
-- for good, and a budget would count less than was spent. So: no inserts into the counted tables until
-- this migration commits, count again from scratch, then the triggers.
LOCK TABLE ledger, absorbed_spend IN SHARE MODE;
DELETE FROM spend_totals;
INSERT INTO spend_totals (guild_id, captured, absorbed)
SELECT guild_id, SUM(captured), SUM(absorbed) FROM (
    SELECT guild_id, amount AS captured, 0 AS absorbed FROM ledger WHERE kind = 'capture'
    UNION ALL SELECT guild_id, 0, credits FROM absorbed_spend
) AS spend GROUP BY guild_id;

CREATE FUNCTION spend_totals_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'ledger' THEN
        INSERT INTO spend_totals (guild_id, captured) VALUES (NEW.guild_id, NEW.amount)
        ON CONFLICT (guild_id) DO UPDATE SET captured = spend_totals.captured + EXCLUDED.captured;
    ELSE
        INSERT INTO spend_totals (guild_id, absorbed) VALUES (NEW.guild_id, NEW.credits)
        ON CONFLICT (guild_id) DO UPDATE SET absorbed = spend_totals.absorbed + EXCLUDED.absorbed;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER spend_totals_capture AFTER INSERT ON ledger
    FOR EACH ROW WHEN (NEW.kind = 'capture') EXECUTE FUNCTION spend_totals_count();
CREATE TRIGGER spend_totals_absorbed AFTER INSERT ON absorbed_spend
    FOR EACH ROW EXECUTE FUNCTION spend_totals_count();

CREATE FUNCTION absorbed_spend_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'absorbed_spend is append-only (spend_totals counts it)';
END $$;
CREATE TRIGGER absorbed_spend_no_update BEFORE UPDATE ON absorbed_spend
    FOR EACH ROW EXECUTE FUNCTION absorbed_spend_refuse_change();
CREATE TRIGGER absorbed_spend_no_delete BEFORE DELETE ON absorbed_spend
    FOR EACH ROW EXECUTE FUNCTION absorbed_spend_refuse_change();
