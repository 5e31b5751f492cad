-- A cancel asked for on a process that does not run the job (bot/jobs/leases.py): with PostgreSQL the
-- process that receives the Cancel or Stop click may not be the one holding the job. The request is
-- written here; the holder reads it back with its next lease renewal (the same statement) and cancels
-- the job as a local cancel does, and a process that takes the job over cancels it instead of resuming
-- it. `cancel_reason` says whose it was, which decides the charge: 'cancelled' (the requester's own) or
-- 'stopped' (a moderator's). The first request stands; one on a job that ended meanwhile is not written.
-- `cancel_requested_at` is the storage clock's ISO-8601 UTC text, like every `*_at`.
ALTER TABLE jobs ADD COLUMN cancel_requested_at TEXT;
ALTER TABLE jobs ADD COLUMN cancel_actor_id INTEGER;
ALTER TABLE jobs ADD COLUMN cancel_reason TEXT CHECK (cancel_reason IN ('cancelled', 'stopped'));
