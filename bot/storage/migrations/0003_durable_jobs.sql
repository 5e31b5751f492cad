-- Durable jobs: what a job needs to run again after a restart, how far it got, and where its result
-- went. Input images and results live in DATA_DIR/jobs/<job id>/ (bot.jobfiles); the columns below
-- say which files and until when they are kept. Interaction tokens are never stored.

ALTER TABLE jobs ADD COLUMN spec TEXT;                   -- JSON (bot.engine.JobSpec): prompt, options, input files
ALTER TABLE jobs ADD COLUMN result TEXT;                 -- JSON once completed: result files, charge, notices
ALTER TABLE jobs ADD COLUMN interaction_at TEXT;         -- when the user's interaction was created (token age)
ALTER TABLE jobs ADD COLUMN origin_message_id INTEGER;   -- the message the job came from (Edit again, Retry, menu)
ALTER TABLE jobs ADD COLUMN started_at TEXT;             -- left the queue
ALTER TABLE jobs ADD COLUMN completed_at TEXT;           -- result stored (started_at..completed_at feeds the ETA)
ALTER TABLE jobs ADD COLUMN deadline_at TEXT;            -- the watchdog cancels a live job still running after this
ALTER TABLE jobs ADD COLUMN delivery_attempted_at TEXT;  -- a delivery was sent; after a crash, look before resending
ALTER TABLE jobs ADD COLUMN delivered_via TEXT;          -- interaction | channel | dm
ALTER TABLE jobs ADD COLUMN result_channel_id INTEGER;
ALTER TABLE jobs ADD COLUMN result_message_id INTEGER;
ALTER TABLE jobs ADD COLUMN files_expire_at TEXT;        -- when DATA_DIR/jobs/<id>/ may be deleted
