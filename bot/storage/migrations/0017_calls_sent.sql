-- How many of a job's paid calls left this bot for the provider, counted as each leaves (after any wait
-- for the provider's concurrency slot): whoever settles the job after a restart or a takeover prices
-- what the provider may bill by the calls that left, not by every image (an emulated `count` is a call
-- per image, and some may never have left). Reset when a route is tried. NULL: not counted (a row
-- written before this migration, or by a release that did not count), so every image is counted.
ALTER TABLE jobs ADD COLUMN calls_sent INTEGER;
