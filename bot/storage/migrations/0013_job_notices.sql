-- Where a running edit's public notice (cogs/_moderation.py: "alice is editing an image" with Stop edit)
-- was posted, so that whichever process ends the job removes it: with PostgreSQL the job may end on
-- another process than the one that posted it (a takeover), and after a restart the poster's memory
-- is gone. Cleared by the one process that removes (or takes over editing) the notice.
ALTER TABLE jobs ADD COLUMN notice_channel_id INTEGER;
ALTER TABLE jobs ADD COLUMN notice_message_id INTEGER;
