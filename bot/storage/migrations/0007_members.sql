-- What members notice (issue 13): each server's strictness of the free safety check before paid
-- calls (NULL = the bot-wide MODERATION setting).

ALTER TABLE guild_settings ADD COLUMN moderation TEXT CHECK (moderation IN ('off', 'standard', 'strict'));

-- Edit history: each posted result (and each Undo repost) is a version in a chain. Only Discord ids
-- are kept, never images (a version's picture is its message's attachment on Discord), and a row is
-- deleted once `expires_at` (RESULT_RETENTION_HOURS after it was posted) has passed.
CREATE TABLE edit_versions (
    message_id INTEGER PRIMARY KEY,      -- the posted result or Undo repost
    channel_id INTEGER NOT NULL,         -- where it is (a thread id for results in a thread)
    guild_id INTEGER NOT NULL,           -- 0 for DMs
    user_id INTEGER NOT NULL,            -- whose edit it is
    job_id TEXT NOT NULL,                -- the job whose image it shows (a repost shows an earlier one's)
    chain_id INTEGER NOT NULL,           -- message id of the chain's first version
    parent_message_id INTEGER,           -- the version it was made from; NULL for a chain's first
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
CREATE INDEX edit_versions_by_user ON edit_versions (guild_id, user_id, created_at);
CREATE INDEX edit_versions_by_chain ON edit_versions (chain_id, created_at);
CREATE INDEX edit_versions_by_expiry ON edit_versions (expires_at);
