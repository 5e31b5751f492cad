-- A result its requester or a moderator deleted with its Delete button stays a version of its chain
-- (an Undo of the version after it must say the earlier one was deleted, not that there is nothing to
-- undo), but /history no longer lists it (its link leads nowhere) and Edit again no longer continues
-- from it. `deleted_at` is the storage clock's ISO-8601 UTC text, like every `*_at`; NULL = posted.
ALTER TABLE edit_versions ADD COLUMN deleted_at TEXT;
