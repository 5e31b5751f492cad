-- Circuits a process's breaker opened (bot/routing/breaker.py), shared by every process on the database:
-- a provider one process saw failing is skipped by all of them until `open_until` (the storage clock's
-- ISO-8601 UTC text, like every `*_at`). The row is deleted when a trial call succeeds (the circuit
-- closed for everyone); a row past `open_until` stays until then, as the breaker's half-open state.
CREATE TABLE open_circuits (
    provider    TEXT PRIMARY KEY,
    open_until  TEXT NOT NULL
);
