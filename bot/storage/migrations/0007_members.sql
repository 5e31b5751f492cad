-- What members notice (issue 13): each server's strictness of the free safety check before paid
-- calls (NULL = the bot-wide MODERATION setting).

ALTER TABLE guild_settings ADD COLUMN moderation TEXT CHECK (moderation IN ('off', 'standard', 'strict'));
