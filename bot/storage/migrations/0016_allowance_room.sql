-- An allowance top-up counts the member's held credits as theirs (a hold released after the boundary
-- must not give them the allowance on top of it). A hold captured after it instead was the last
-- period's spending, and its capture adds what the top-up left out (bot.storage.ledger). For that the
-- top-up keeps how far below the allowance the account was with its holds (`room`, negative above it)
-- and the newest ledger row of the account it counted (`counted_to`: the holds it counted are reserve
-- rows up to that id). Both NULL: a top-up that counted no hold, or one made before this migration.
ALTER TABLE allowance_refills ADD COLUMN room INTEGER;
ALTER TABLE allowance_refills ADD COLUMN counted_to INTEGER;
