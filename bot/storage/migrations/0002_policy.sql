-- Credit policy: per-guild rules, role tiers, per-user defaults and the allowance refill record.
-- Policy rows are plain settings; every credit movement still goes through the ledger (0001).

CREATE TABLE guild_policy (
    guild_id         INTEGER PRIMARY KEY,
    allowance        INTEGER NOT NULL DEFAULT 0 CHECK (allowance >= 0),  -- credits per period (tops up to)
    allowance_period TEXT NOT NULL DEFAULT 'none'
                     CHECK (allowance_period IN ('none', 'daily', 'weekly', 'monthly')),
    starting_credits INTEGER CHECK (starting_credits >= 0),             -- NULL = STARTING_CREDITS
    max_quality      TEXT CHECK (max_quality IN ('low', 'medium', 'high')),  -- NULL = no cap
    models           TEXT,                      -- space-separated model ids; NULL = every model
    max_images       INTEGER CHECK (max_images >= 1),                   -- NULL = the bot's maximum
    monthly_cap_usd  TEXT,                      -- a decimal as text so cents stay exact; NULL = no cap
    cooldown_seconds INTEGER NOT NULL DEFAULT 0 CHECK (cooldown_seconds >= 0),
    max_concurrent   INTEGER NOT NULL DEFAULT 0 CHECK (max_concurrent >= 0),  -- 0 = no limit
    default_model    TEXT,                      -- NULL = the bot-wide DEFAULT_* setting
    default_quality  TEXT,
    default_size     TEXT,
    provider_order   TEXT,                      -- space-separated provider names; NULL = catalog order
    updated_by       INTEGER,
    updated_at       TEXT
);

-- A tier only ever adds to the guild's base rules: the most generous applicable value wins.
CREATE TABLE role_tiers (
    guild_id    INTEGER NOT NULL,
    role_id     INTEGER NOT NULL,
    allowance   INTEGER CHECK (allowance >= 0),                          -- NULL = the guild's allowance
    max_quality TEXT CHECK (max_quality IN ('low', 'medium', 'high')),   -- NULL = the guild's cap
    models      TEXT,                           -- space-separated ids, '*' = all; NULL = the guild's
    max_images  INTEGER CHECK (max_images >= 1),                         -- NULL = the guild's
    updated_by  INTEGER,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (guild_id, role_id)
);

-- A user's own defaults follow them across servers; NULL = the server's (then the bot's) default.
CREATE TABLE user_settings (
    user_id           INTEGER PRIMARY KEY,
    quality           TEXT,
    model             TEXT,
    size              TEXT,
    output_format     TEXT,
    background        TEXT,
    skip_mask_preview INTEGER,
    updated_at        TEXT NOT NULL
);

-- One row per account and allowance period: the primary key makes a second refill impossible.
CREATE TABLE allowance_refills (
    guild_id   INTEGER NOT NULL,
    user_id    INTEGER NOT NULL,
    period     TEXT NOT NULL,                   -- e.g. 'monthly:2026-11-01'
    added      INTEGER NOT NULL,                -- credits added (0 if already at the allowance)
    created_at TEXT NOT NULL,
    PRIMARY KEY (guild_id, user_id, period)
);

-- The monthly cap and the spend report read a guild's ledger by time.
CREATE INDEX ledger_guild_time ON ledger (guild_id, created_at);
