-- Which process runs a live job, and until when (bot/jobs/leases.py). With PostgreSQL several bot
-- processes share the `jobs` table: the one that creates a job owns it and renews its lease; when a
-- process dies, another claims its jobs once their leases run out and resumes them as a restart does.
-- Every write that matters (the provider submit, the capture, the delivery record, the release)
-- checks `owner` in the same statement or transaction, so a process that lost a job cannot act on it.
-- `lease_expires_at` is the storage clock's ISO-8601 UTC text, compared as text like every `*_at`.
-- NULL owner: nobody holds the job (rows from before this migration, or handed back at a clean stop).
ALTER TABLE jobs ADD COLUMN owner TEXT;
ALTER TABLE jobs ADD COLUMN lease_expires_at TEXT;

-- The claim looks only at live jobs whose lease ran out; ended jobs never need this index.
CREATE INDEX jobs_lease ON jobs (lease_expires_at)
    WHERE state IN ('queued', 'reserved', 'submitting', 'submitted', 'completed');
