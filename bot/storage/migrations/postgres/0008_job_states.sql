-- PostgreSQL's part of 0008: where SQLite needs two triggers, PostgreSQL adds the CHECK itself. The
-- list is kept equal to bot.jobs.model.JobState by tests/test_job_states.py.
ALTER TABLE jobs ADD CONSTRAINT "jobs.state must be a JobState"
    CHECK (state IN ('queued', 'reserved', 'submitting', 'submitted', 'completed', 'delivered', 'failed', 'cancelled'));
