-- What the providers told us about a model route at run time (bot.lifecycle): a shutdown date read
-- from OpenAI's model list, a model missing from that list, or a "model gone" answer to an edit.
-- Keyed by the provider and the provider's own model id (a catalog route). Survives restarts, so the
-- next job never asks a dead route again.

CREATE TABLE route_status (
    provider     TEXT NOT NULL,
    model        TEXT NOT NULL,            -- the provider's id for the model (the catalog route's `model`)
    shutdown     TEXT,                     -- YYYY-MM-DD from the provider's model list; NULL = none announced
    listed       INTEGER,                  -- 1 in the provider's model list, 0 missing from it, NULL unknown
    gone_at      TEXT,                     -- when the provider answered "model gone"; NULL = not seen
    gone_reason  TEXT,                     -- error class, status and code of that answer (no body text)
    updated_at   TEXT NOT NULL,
    PRIMARY KEY (provider, model)
);

-- Which stored defaults were moved off a dead model, so the member hears about it once.
CREATE TABLE model_notices (
    user_id      INTEGER NOT NULL,
    notice       TEXT NOT NULL,
    created_at   TEXT NOT NULL
);
CREATE INDEX model_notices_user ON model_notices (user_id);

-- The route's own model id at the provider that took a job (Atlas Cloud sells gpt-image-2 on two
-- routes with different prices): a resumed job is followed and charged on that route.
ALTER TABLE jobs ADD COLUMN provider_model TEXT;
