-- Accounts, the append-only credit ledger, jobs and guild settings.
-- Invariant kept by every write: for each account, balance = SUM(ledger.delta_balance) and
-- held = SUM(ledger.delta_held) over that account's ledger rows.

CREATE TABLE accounts (
    guild_id   INTEGER NOT NULL,           -- 0 for direct messages
    user_id    INTEGER NOT NULL,
    balance    INTEGER NOT NULL CHECK (balance >= 0),  -- available credits
    held       INTEGER NOT NULL CHECK (held >= 0),     -- reserved by running jobs
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (guild_id, user_id)
);

CREATE TABLE ledger (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    guild_id      INTEGER NOT NULL,
    user_id       INTEGER NOT NULL,
    job_id        TEXT,
    kind          TEXT NOT NULL CHECK (kind IN ('grant', 'reserve', 'capture', 'release', 'adjust')),
    amount        INTEGER NOT NULL,        -- credits moved, as the kind reads (charged for capture)
    delta_balance INTEGER NOT NULL,
    delta_held    INTEGER NOT NULL,
    actor_id      INTEGER,                 -- admin who granted/adjusted; NULL for the bot itself
    reason        TEXT,
    created_at    TEXT NOT NULL
);
CREATE INDEX ledger_account ON ledger (guild_id, user_id, id);
-- One reserve, one capture, one release per job at most: the database enforces idempotency.
CREATE UNIQUE INDEX ledger_job_kind ON ledger (job_id, kind)
    WHERE job_id IS NOT NULL AND kind IN ('reserve', 'capture', 'release');

CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;

CREATE TABLE jobs (
    id                  TEXT PRIMARY KEY,
    guild_id            INTEGER NOT NULL,
    user_id             INTEGER NOT NULL,
    channel_id          INTEGER,
    state               TEXT NOT NULL,
    model               TEXT NOT NULL,
    quality             TEXT NOT NULL,
    size                TEXT NOT NULL,
    count               INTEGER NOT NULL,
    reserved            INTEGER NOT NULL DEFAULT 0,
    captured            INTEGER,
    provider            TEXT,
    provider_request_id TEXT,
    error_code          TEXT,
    error_ref           TEXT,
    created_at          TEXT NOT NULL,
    updated_at          TEXT NOT NULL,
    finished_at         TEXT
);
CREATE INDEX jobs_user ON jobs (guild_id, user_id, created_at);
CREATE INDEX jobs_state ON jobs (state);

CREATE TABLE guild_settings (
    guild_id       INTEGER PRIMARY KEY,
    thread_results INTEGER                 -- NULL = use the bot-wide default
);
