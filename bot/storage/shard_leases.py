"""Shard leases in PostgreSQL: which bot process serves which Discord gateway shard.

`bot/sharding.py` decides what to ask for; this module is the shared state it asks, over an asyncpg pool.
Two tables, created idempotently by `ShardLeases.prepare` (PostgreSQL only; SQLite runs one process):

- `shard_owners`: every process taking part, the shard count it runs with, when it joined and until when
  it counts as alive (each round of its coordinator pushes that forward by one lease). A process that is
  stopping has given its shards up but still has provider calls to finish: its `joined_at` is set to
  'infinity' (`retire`), which marks it leaving without a column every release would have to know;
  it still counts as alive (the provider ceilings stay split with it) until it `leave`s;
- `shard_leases`: one row per shard id, its holder (NULL = free) and until when the holder has it.

A shard changes hands only through one conditional statement (`claim`: free or expired rows, locked
with `FOR UPDATE SKIP LOCKED`), so two processes never hold the same shard at once. Every moment is
the database's own clock (`statement_timestamp()`), so processes on hosts whose clocks disagree still
agree on who holds what; tests pass `clock` to move time without waiting.

Job leases (`bot/jobs/leases.py`) are stamped by each process's own clock, so the fleet's clocks must
agree. Each time a process says it is alive it also records how far its clock is ahead of the
database's (`clock_ahead`, seconds; `host_clock` is the clock its job leases are stamped with), and
every process sees everyone's (`ShardOwner.clock_ahead`): bot.sharding tells each one how far its clock
is from the fleet's, and the job engine stops taking over other processes' jobs while that is too far.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bot.storage.connection import utcnow

if TYPE_CHECKING:
    import asyncpg

# Rows of processes dead this long are deleted (they no longer count as live long before that).
FORGET_OWNERS_AFTER = dt.timedelta(hours=1)
# Any constant shared by every Retouch process: `CREATE TABLE IF NOT EXISTS` run by several sessions at
# once can still fail on PostgreSQL's catalog, so table creation is serialised by this advisory lock.
SCHEMA_LOCK = 7_265_846_012

SCHEMA = """
CREATE TABLE IF NOT EXISTS shard_owners (
    owner       text PRIMARY KEY,
    shard_count integer NOT NULL CHECK (shard_count > 0),
    joined_at   timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL
);
-- Seconds the process's clock was ahead of the database's when it last said it was alive (added later:
-- a table made by an older release gains it here; its rows keep NULL until they say so).
ALTER TABLE shard_owners ADD COLUMN IF NOT EXISTS clock_ahead float8;
CREATE TABLE IF NOT EXISTS shard_leases (
    shard_id   integer PRIMARY KEY CHECK (shard_id >= 0),
    owner      text,
    expires_at timestamptz NOT NULL DEFAULT '-infinity'
);
"""

# `$1` is the injected clock, NULL in production: then the database's clock decides.
NOW = "COALESCE($1::timestamptz, statement_timestamp())"

# Returns whether the process was not counted before: no row, or one that had run out (it was cut off
# from the database for a lease): the others are told (`NOTIFY_FLEET`).
JOIN = f"""
WITH before AS (SELECT expires_at > {NOW} AS live FROM shard_owners WHERE owner = $2)
INSERT INTO shard_owners (owner, shard_count, joined_at, expires_at, clock_ahead)
VALUES ($2, $3, {NOW}, {NOW} + $4::interval, EXTRACT(EPOCH FROM $5::timestamptz - clock_timestamp()))
ON CONFLICT (owner) DO UPDATE SET shard_count = EXCLUDED.shard_count, expires_at = EXCLUDED.expires_at,
    clock_ahead = EXCLUDED.clock_ahead
RETURNING NOT COALESCE((SELECT live FROM before), false)
"""
# NOTIFY channel (bot/sharding.py hears it). A process joined or left the fleet: the payload is its name,
# and every process recounts the fleet at once, so the provider ceilings' parts change within milliseconds
# rather than at each process's next round. Shards were freed (a stop, a surplus given up) or a process is
# short of its quota (a newcomer): the payload is SHARDS_MOVED and its name, and every process runs a round
# at once, so no freed shard waits for the others' next regular round to be served again. (A process of an
# older Retouch version takes such a notice for a join or a leave: it only recounts the fleet.)
FLEET_CHANNEL = "retouch_fleet"
SHARDS_MOVED = "shards:"
NOTIFY_FLEET = "SELECT pg_notify($1, $2)"
FORGET = f"DELETE FROM shard_owners WHERE expires_at < {NOW} - $2::interval"
LIVE = f"""
SELECT owner, shard_count, joined_at = 'infinity' AS leaving, clock_ahead FROM shard_owners
WHERE expires_at > {NOW} ORDER BY joined_at, owner
"""
RETIRE = f"""
UPDATE shard_owners SET joined_at = 'infinity', expires_at = {NOW} + $3::interval WHERE owner = $2
"""
RENEW = f"""
UPDATE shard_leases SET expires_at = {NOW} + $3::interval WHERE owner = $2 RETURNING shard_id
"""
SEED = "INSERT INTO shard_leases (shard_id) SELECT generate_series(0, $1 - 1) ON CONFLICT DO NOTHING"
# Lowest ids first, so a lone process and a crowd fill the same shards; SKIP LOCKED lets concurrent
# claimers pass each other's rows instead of waiting for them, and the row lock taken here (re-checked
# against the row's newest version) is what makes a shard change hands exactly once.
CLAIM = f"""
WITH free AS (
    SELECT shard_id FROM shard_leases
    WHERE shard_id < $3 AND (owner IS NULL OR expires_at <= {NOW})
    ORDER BY shard_id
    LIMIT $4
    FOR UPDATE SKIP LOCKED
)
UPDATE shard_leases AS lease SET owner = $2, expires_at = {NOW} + $5::interval
FROM free WHERE lease.shard_id = free.shard_id
RETURNING lease.shard_id
"""
RELEASE = """
UPDATE shard_leases SET owner = NULL, expires_at = '-infinity'
WHERE owner = $1 AND ($2::integer[] IS NULL OR shard_id = ANY($2::integer[]))
"""
LEAVE = "DELETE FROM shard_owners WHERE owner = $1"
# Seconds until the first lease of another process runs out: a process that stopped renewing is taken
# over right then rather than at the next regular round.
NEXT_EXPIRY = f"""
SELECT EXTRACT(EPOCH FROM min(expires_at) - {NOW})::float8 FROM shard_leases
WHERE owner IS NOT NULL AND owner <> $2 AND expires_at > {NOW}
"""
HOLDERS = f"""
SELECT shard_id, owner FROM shard_leases WHERE owner IS NOT NULL AND expires_at > {NOW} ORDER BY shard_id
"""


@dataclass(frozen=True)
class ShardOwner:
    """A live process as the lease table sees it: its name, the shard count it runs with, and whether it
    is leaving (it serves no shard any more, but its last provider calls are still running)."""

    name: str
    shard_count: int
    leaving: bool = False
    clock_ahead: float | None = None  # seconds its clock was ahead of the database's (None: not said)


@dataclass(frozen=True)
class Fleet:
    """What a process sees when it says it is alive: the live processes, oldest first, and how many
    seconds until the first lease another process holds runs out (None: no such lease)."""

    owners: list[ShardOwner]
    next_expiry: float | None = None


class ShardLeases:
    """The lease tables over an asyncpg pool; every method is one round trip or one transaction."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        lease: dt.timedelta,
        clock: Callable[[], dt.datetime] | None = None,
        host_clock: Callable[[], dt.datetime] = utcnow,
        listen: Callable[[str, Callable[[str], None]], None] | None = None,
    ) -> None:
        self._pool = pool
        self.lease = lease
        self._clock = clock
        self._host_clock = host_clock  # what this process's job leases are stamped with
        self._listen = listen  # `PostgresDatabase.listen`, for `hear_changes`

    def hear_changes(self, heard: Callable[[str], None]) -> bool:
        """Call `heard(payload)` whenever a process joins or leaves, or shards move (see FLEET_CHANNEL and
        `fleet_notice`; best effort: a missed one is seen at the next round); False when this store cannot
        listen."""
        if self._listen is None:
            return False
        self._listen(FLEET_CHANNEL, heard)
        return True

    def _now(self) -> dt.datetime | None:
        return self._clock() if self._clock is not None else None

    async def prepare(self) -> None:
        """Create the tables if they are missing (safe to run from every process at once)."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
            await conn.execute(SCHEMA)

    async def live_owners(self) -> list[ShardOwner]:
        """Processes alive now, oldest first (the order quotas are handed out in)."""
        rows = await self._pool.fetch(LIVE, self._now())
        return [_owner(row) for row in rows]

    async def join(self, owner: str, shard_count: int) -> Fleet:
        """Say `owner` is alive for one more lease (registering it on its first call); the fleet after
        that. Forgets processes that died long ago."""
        now = self._now()
        async with self._pool.acquire() as conn, conn.transaction():
            # Read last, just before the statement leaves: what the offset gains is one trip's latency.
            if await conn.fetchval(JOIN, now, owner, shard_count, self.lease, self._host_clock()):
                await conn.execute(NOTIFY_FLEET, FLEET_CHANNEL, owner)  # sent at COMMIT
            await conn.execute(FORGET, now, FORGET_OWNERS_AFTER)
            rows = await conn.fetch(LIVE, now)
            next_expiry = await conn.fetchval(NEXT_EXPIRY, now, owner)
        return Fleet([_owner(row) for row in rows], next_expiry)

    async def renew(self, owner: str) -> frozenset[int]:
        """Extend every lease `owner` still holds by one lease; the shards it holds.

        A lease that ran out but that nobody claimed yet is still the owner's, so it is renewed too:
        only `claim` moves a shard, and it moves it in one statement.
        """
        rows = await self._pool.fetch(RENEW, self._now(), owner, self.lease)
        return frozenset(row["shard_id"] for row in rows)

    async def claim(self, owner: str, shard_count: int, limit: int) -> frozenset[int]:
        """Take up to `limit` shards below `shard_count` that are free or whose lease ran out."""
        if limit <= 0:
            return frozenset()
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(SEED, shard_count)
            rows = await conn.fetch(CLAIM, self._now(), owner, shard_count, limit, self.lease)
        return frozenset(row["shard_id"] for row in rows)

    async def release(self, owner: str, shard_ids: Collection[int]) -> None:
        """Give up these shards of `owner` at once; the others hear it and claim them right away."""
        if shard_ids:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(RELEASE, owner, sorted(shard_ids))
                await _say_shards_moved(conn, owner)  # sent at COMMIT

    async def retire(self, owner: str) -> None:
        """A stop begins: every shard of `owner` is free at once (the others hear it and take them over),
        and it is marked leaving (alive for one more lease, later than every process that is staying)
        until it `leave`s."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(RELEASE, owner, None)
            await conn.execute(RETIRE, self._now(), owner, self.lease)
            await _say_shards_moved(conn, owner)

    async def ask_for_shards(self, owner: str) -> None:
        """Tell the others `owner` is short of its quota: one holding a surplus gives it up at once."""
        await _say_shards_moved(self._pool, owner)

    async def leave(self, owner: str) -> None:
        """A clean stop: every shard of `owner` is free and it no longer counts as alive."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(RELEASE, owner, None)
            await conn.execute(LEAVE, owner)
            await conn.execute(NOTIFY_FLEET, FLEET_CHANNEL, owner)
            await _say_shards_moved(conn, owner)  # if `retire` failed

    async def holders(self) -> dict[int, str]:
        """{shard id: owner} for every lease that has not run out."""
        rows = await self._pool.fetch(HOLDERS, self._now())
        return {row["shard_id"]: row["owner"] for row in rows}


async def _say_shards_moved(conn: Any, owner: str) -> None:
    """Tell every process `owner` freed shards or is short of them (on a transaction's connection: sent
    at its COMMIT)."""
    await conn.execute(NOTIFY_FLEET, FLEET_CHANNEL, SHARDS_MOVED + owner)


def fleet_notice(payload: str) -> tuple[str, bool]:
    """A notice on FLEET_CHANNEL: the process that sent it, and whether shards moved (else: it joined or
    left the fleet)."""
    if payload.startswith(SHARDS_MOVED):
        return payload.removeprefix(SHARDS_MOVED), True
    return payload, False


def _owner(row: Sequence[Any]) -> ShardOwner:
    return ShardOwner(name=row[0], shard_count=row[1], leaving=row[2], clock_ahead=row[3])
