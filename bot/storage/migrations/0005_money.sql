-- The operator's money: which servers the bot serves and what each may spend of the operator's budget.
-- Only the operator (OWNER_IDS, or the application's owner) writes these rows; server admins cannot.

CREATE TABLE operator_guilds (
    guild_id      INTEGER PRIMARY KEY,
    approved      INTEGER NOT NULL DEFAULT 0 CHECK (approved IN (0, 1)),  -- ALLOWED_GUILD_IDS also approve
    allotment_usd TEXT,                     -- monthly USD the server may spend; NULL = up to the bot's budget
    updated_by    INTEGER,
    updated_at    TEXT NOT NULL
);

-- The bot-wide budget sums every server's captures this month inside each reservation's transaction.
CREATE INDEX ledger_kind_time ON ledger (kind, created_at, guild_id, amount);

-- Provider spend nobody was charged for: a result the bot made but could not deliver (Discord or the
-- bot failed). The member is refunded, but the operator paid, so it counts against the budgets.
CREATE TABLE absorbed_spend (
    job_id     TEXT PRIMARY KEY,
    guild_id   INTEGER NOT NULL,
    user_id    INTEGER NOT NULL,
    credits    INTEGER NOT NULL CHECK (credits >= 0),
    reason     TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX absorbed_spend_time ON absorbed_spend (created_at, guild_id);
