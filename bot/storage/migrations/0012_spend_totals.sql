-- Budgets in constant time (bot/storage/spend.py). A budget check compares a month's spend (credits
-- captured, plus provider spend nobody was charged for) and the open holds with a cap. It summed the
-- append-only ledger, which grows with the month; these tables keep the sums instead.

-- Every server's captured (ledger 'capture' rows) and absorbed (absorbed_spend rows) credits of all time.
-- The triggers below add each row in the transaction that writes it, whatever code writes it (an
-- older process still running during an upgrade included), so the totals always equal those sums and
-- only ever grow (captures and absorbed credits are never negative, and neither table loses rows).
CREATE TABLE spend_totals (
    guild_id INTEGER PRIMARY KEY,
    captured INTEGER NOT NULL DEFAULT 0,
    absorbed INTEGER NOT NULL DEFAULT 0
);

-- A period start (`since`: ISO-8601 UTC text, compared with created_at like every range filter) whose
-- marks were taken, with the bot's own mark: what every server had captured and absorbed in rows
-- created before `since`, among the rows committed when the marks were taken. Spend since `since` =
-- running total - mark.
CREATE TABLE spend_periods (
    since           TEXT PRIMARY KEY,
    captured_before INTEGER NOT NULL,
    absorbed_before INTEGER NOT NULL,
    marked_at       TEXT NOT NULL
);
-- Each server's mark for a marked period. A server without one had no spend_totals row when the period
-- was marked: its mark is 0.
CREATE TABLE spend_marks (
    guild_id        INTEGER NOT NULL,
    since           TEXT NOT NULL,
    captured_before INTEGER NOT NULL,
    absorbed_before INTEGER NOT NULL,
    PRIMARY KEY (guild_id, since)
);

CREATE TRIGGER spend_totals_capture AFTER INSERT ON ledger WHEN NEW.kind = 'capture'
BEGIN
    INSERT INTO spend_totals (guild_id, captured) VALUES (NEW.guild_id, NEW.amount)
    ON CONFLICT (guild_id) DO UPDATE SET captured = captured + excluded.captured;
END;
CREATE TRIGGER spend_totals_absorbed AFTER INSERT ON absorbed_spend
BEGIN
    INSERT INTO spend_totals (guild_id, absorbed) VALUES (NEW.guild_id, NEW.credits)
    ON CONFLICT (guild_id) DO UPDATE SET absorbed = absorbed + excluded.absorbed;
END;
-- absorbed_spend is part of the books now, like the ledger: a changed or deleted row would leave the
-- totals counting credits that are no longer there.
CREATE TRIGGER absorbed_spend_no_update BEFORE UPDATE ON absorbed_spend
BEGIN SELECT RAISE(ABORT, 'absorbed_spend is append-only (spend_totals counts it)'); END;
CREATE TRIGGER absorbed_spend_no_delete BEFORE DELETE ON absorbed_spend
BEGIN SELECT RAISE(ABORT, 'absorbed_spend is append-only (spend_totals counts it)'); END;

-- The totals of the history written so far (PostgreSQL counts again under a lock: see postgres/0012).
INSERT INTO spend_totals (guild_id, captured, absorbed)
SELECT guild_id, SUM(captured), SUM(absorbed) FROM (
    SELECT guild_id, amount AS captured, 0 AS absorbed FROM ledger WHERE kind = 'capture'
    UNION ALL SELECT guild_id, 0, credits FROM absorbed_spend
) AS spend GROUP BY guild_id;

-- Open holds, summed by every budget check: an index of the accounts holding anything makes that sum
-- cost the number of open holds instead of the number of accounts. Both SQLite and PostgreSQL use it
-- for a query that repeats `held > 0`.
CREATE INDEX accounts_open_holds ON accounts (guild_id, held) WHERE held > 0;
