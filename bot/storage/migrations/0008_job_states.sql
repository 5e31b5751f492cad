-- Job states are the enum bot.jobs.model.JobState (a StrEnum: the strings below). The database
-- refuses any other value, so a misspelt state written by code or by hand fails at once instead of
-- leaving a job that neither recovery (LIVE_STATES) nor the sweep (TERMINAL_STATES) ever looks at.
-- SQLite cannot add a CHECK constraint to an existing table, and rebuilding `jobs` would copy every
-- row and recreate its indexes for the same effect: these two triggers are that CHECK. The list is
-- kept equal to JobState by tests/test_job_states.py.

CREATE TRIGGER jobs_state_check_insert BEFORE INSERT ON jobs
WHEN NEW.state NOT IN ('queued', 'reserved', 'submitting', 'submitted', 'completed', 'delivered', 'failed', 'cancelled')
BEGIN
    SELECT RAISE(ABORT, 'jobs.state must be a JobState');
END;

CREATE TRIGGER jobs_state_check_update BEFORE UPDATE OF state ON jobs
WHEN NEW.state NOT IN ('queued', 'reserved', 'submitting', 'submitted', 'completed', 'delivered', 'failed', 'cancelled')
BEGIN
    SELECT RAISE(ABORT, 'jobs.state must be a JobState');
END;
