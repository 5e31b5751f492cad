-- A chain's thread is opened on its first result, so the thread has that message's id: the job whose
-- result it is says which channel the thread is under after the thread is deleted and the first
-- version's row has expired (RESULT_RETENTION_HOURS; job rows are kept JOB_HISTORY_DAYS). Looked up
-- by message id when a delivery finds its channel gone and when a restart looks for a posted result.
CREATE INDEX jobs_result_message ON jobs (result_message_id) WHERE result_message_id IS NOT NULL;
