-- Quality caps reach the levels GPT Image 2.5 and 2.6 added (xhigh, max). The caps of 0002 stopped at
-- high, and "high" was read as no cap at all, so a server could not keep members off xhigh and max
-- (four times high's price). SQLite cannot change a CHECK in place: both tables are rebuilt, their
-- rows copied as they are (a NULL guild cap still means no cap; a tier's NULL still means the
-- server's cap).

CREATE TABLE guild_policy_0014 (
    guild_id         INTEGER PRIMARY KEY,
    allowance        INTEGER NOT NULL DEFAULT 0 CHECK (allowance >= 0),
    allowance_period TEXT NOT NULL DEFAULT 'none'
                     CHECK (allowance_period IN ('none', 'daily', 'weekly', 'monthly')),
    starting_credits INTEGER CHECK (starting_credits >= 0),
    max_quality      TEXT CHECK (max_quality IN ('low', 'medium', 'high', 'xhigh', 'max')),  -- NULL = no cap
    models           TEXT,
    max_images       INTEGER CHECK (max_images >= 1),
    monthly_cap_usd  TEXT,
    cooldown_seconds INTEGER NOT NULL DEFAULT 0 CHECK (cooldown_seconds >= 0),
    max_concurrent   INTEGER NOT NULL DEFAULT 0 CHECK (max_concurrent >= 0),
    default_model    TEXT,
    default_quality  TEXT,
    default_size     TEXT,
    provider_order   TEXT,
    updated_by       INTEGER,
    updated_at       TEXT
);
INSERT INTO guild_policy_0014 (
    guild_id, allowance, allowance_period, starting_credits, max_quality, models, max_images,
    monthly_cap_usd, cooldown_seconds, max_concurrent, default_model, default_quality, default_size,
    provider_order, updated_by, updated_at
)
SELECT
    guild_id, allowance, allowance_period, starting_credits, max_quality, models, max_images,
    monthly_cap_usd, cooldown_seconds, max_concurrent, default_model, default_quality, default_size,
    provider_order, updated_by, updated_at
FROM guild_policy;
DROP TABLE guild_policy;
ALTER TABLE guild_policy_0014 RENAME TO guild_policy;

CREATE TABLE role_tiers_0014 (
    guild_id    INTEGER NOT NULL,
    role_id     INTEGER NOT NULL,
    allowance   INTEGER CHECK (allowance >= 0),
    max_quality TEXT CHECK (max_quality IN ('low', 'medium', 'high', 'xhigh', 'max')),  -- NULL = the guild's cap
    models      TEXT,
    max_images  INTEGER CHECK (max_images >= 1),
    updated_by  INTEGER,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (guild_id, role_id)
);
INSERT INTO role_tiers_0014 (guild_id, role_id, allowance, max_quality, models, max_images, updated_by, updated_at)
SELECT guild_id, role_id, allowance, max_quality, models, max_images, updated_by, updated_at FROM role_tiers;
DROP TABLE role_tiers;
ALTER TABLE role_tiers_0014 RENAME TO role_tiers;
