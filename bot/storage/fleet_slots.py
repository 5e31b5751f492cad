"""A provider's ceiling held across more processes than it has calls (PostgreSQL only).

bot.concurrency splits each provider's ceiling (`<PREFIX>_MAX_CONCURRENT`) among the live processes, and
each call of a fleet also takes one of the ceiling's numbered slots here, so the total holds while the
fleet changes (a newcomer takes its part before the others have shrunk theirs) and when a part would be
less than one call (more processes than the ceiling). Each process tries its own part of the slots
first, so in a steady fleet a take is one statement that succeeds. A slot is a
session-level advisory lock (provider, slot number) on one pooled connection this process keeps while
its calls hold slots: PostgreSQL frees a dead process's locks with its connection, so a crash never
strands a slot, and no lease has to be renewed. A slot given back is announced through NOTIFY, so a
process waiting for one tries at once instead of at its next poll. The pool does not reset sessions
(bot.storage.postgres `_keep_session`), so the connection goes back only with every lock on it undone.

If the database cannot be reached or does not answer within TRY_SECONDS, a call goes ahead without a
slot (with a warning): the provider's own 429s, which the adaptive limits obey, are then what keeps
the fleet near the ceiling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from typing import Any

import asyncpg

from bot.storage.connection import lock_key
from bot.storage.postgres import CONNECTION_ERRORS

log = logging.getLogger(__name__)

SLOT_CHANNEL = "retouch_fleet_slots"  # NOTIFY channel; the payload is the provider whose slot came free
# A process waiting for a slot tries again this often when no notification came (one may be lost).
POLL_SECONDS = 0.5
# How long one try may take: past it (a network gone silent, a pool with no connection free) the
# database counts as unreachable, so the call goes ahead without a slot instead of waiting for ever.
TRY_SECONDS = 5.0


def slot_key(provider: str) -> int:
    """The first half of a slot's advisory lock key: 32 bits for `provider`, the same in every process.
    (The two-key form of advisory locks is a key space of its own, apart from the transactions' locks.)"""
    return lock_key(("fleet-slots", provider)) >> 32


class Slot(int):
    """A slot's number as `take` returns it, tied to the kept connection whose lock it is (`connection`:
    that connection's generation here). A connection lost takes its locks with it, and a later call may
    take the same number again on a fresh one: `give` of the old call must not unlock the new call's."""

    connection: int

    def __new__(cls, number: int, connection: int) -> Slot:
        slot = super().__new__(cls, number)
        slot.connection = connection
        return slot


class FleetSlots:
    """The numbered slots of providers' ceilings, shared by every process on one PostgreSQL."""

    def __init__(self, pool: asyncpg.Pool, listen: Callable[[str, Callable[[str], None]], None]) -> None:
        self._pool = pool
        self._listen = listen
        self._listening = False
        self._conn: Any = None  # the pooled connection holding this process's slots, while it holds any
        self._generation = 0  # counts the connections kept so far: `Slot.connection`
        self._held: set[tuple[str, int]] = set()
        self._busy = asyncio.Lock()  # one statement at a time on that connection
        self._freed: dict[str, asyncio.Event] = {}
        self._returning: set[asyncio.Future[None]] = set()  # slots going back that nobody waited for
        self._unreachable = False  # the last take found no database (warned once until it answers)

    @property
    def held(self) -> frozenset[tuple[str, int]]:
        """(provider, slot) pairs this process holds now."""
        return frozenset(self._held)

    async def take(
        self, provider: str, ceiling: int, first: int | None = None, *, within: float | None = None
    ) -> int | None:
        """Wait until one of `provider`'s `ceiling` slots is free and take it: its number (a `Slot`), for
        `give`.
        Tries slot `first` first, then the ones after it (anywhere, without one). None when the
        database cannot be reached (the call goes ahead without one; said once per outage).
        TimeoutError when none came free within `within` seconds after the first try."""
        self._start_listening()
        freed = self._freed.setdefault(provider, asyncio.Event())
        loop = asyncio.get_running_loop()
        give_up = None if within is None else loop.time() + within
        while True:
            freed.clear()
            try:
                async with asyncio.timeout(TRY_SECONDS):
                    slot = await self._try_twice(provider, ceiling, first)
            except CONNECTION_ERRORS as exc:
                if isinstance(exc, TimeoutError):
                    self._cut_silent()
                if not self._unreachable:
                    log.warning(
                        "%s: no fleet-wide slot (the database: %s); calling without one until it is back",
                        provider,
                        type(exc).__name__,
                    )
                self._unreachable = True
                return None
            self._unreachable = False
            if slot is not None:
                return slot
            wait = POLL_SECONDS if give_up is None else min(POLL_SECONDS, give_up - loop.time())
            if wait <= 0:
                raise TimeoutError(f"no {provider} slot came free in time")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await freed.wait()

    def _cut_silent(self) -> None:
        """A try took too long: close the kept connection at once. One that went silent would hold
        `_busy` for ever; closed, the try still running on it fails and drops its slots."""
        if self._conn is not None:
            _terminate(self._conn)

    def give(self, provider: str, slot: int) -> asyncio.Future[None]:
        """Free a slot `take` returned, and tell the waiting processes; nothing if it went with a lost
        connection (a plain number: whatever this process holds under it). Runs to its end even when
        the caller is cancelled, so a slot is never left locked here and forgotten. Started at once, not
        when awaited: a take asked for after it (the next call, handed back in the background) finds
        the slot free again, in its own part, rather than taking another process's."""
        return asyncio.shield(asyncio.ensure_future(self._give(provider, slot)))

    async def _try_twice(self, provider: str, ceiling: int, first: int | None) -> int | None:
        """A try, and one more on a fresh connection when the one kept here had died meanwhile (a
        database that is back must not send a call out without a slot)."""
        try:
            return await self._try_whole(provider, ceiling, first)
        except CONNECTION_ERRORS:
            return await self._try_whole(provider, ceiling, first)

    async def _try_whole(self, provider: str, ceiling: int, first: int | None) -> int | None:
        """`_try`, run to its end even when the caller is cancelled meanwhile (once or more): a lock the
        server granted must be known here, else the slot stays taken while this process lives; with
        nobody left to use it, it goes straight back."""
        attempt = asyncio.ensure_future(self._try(provider, ceiling, first))
        try:
            return await asyncio.shield(attempt)
        except asyncio.CancelledError:
            attempt.add_done_callback(lambda done: self._give_back_unused(provider, done))
            raise

    def _give_back_unused(self, provider: str, attempt: asyncio.Future[int | None]) -> None:
        slot = None if attempt.cancelled() or attempt.exception() is not None else attempt.result()
        if slot is None:
            return
        returning = asyncio.ensure_future(self._give(provider, slot))
        self._returning.add(returning)  # kept until done: the loop holds tasks only weakly
        returning.add_done_callback(self._returning.discard)

    async def _try(self, provider: str, ceiling: int, first: int | None) -> int | None:
        key = slot_key(provider)
        async with self._busy:
            conn = await self._connection()
            try:
                # Its own part first; without one, anywhere (waiting processes spread over the slots).
                start = random.randrange(ceiling) if first is None else first % ceiling
                order = [(start + n) % ceiling for n in range(ceiling)]
                # A session may lock a key twice: a slot held here is not a free one.
                free = [slot for slot in order if (provider, slot) not in self._held]
                for slot in free:
                    if await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", key, slot):
                        self._held.add((provider, slot))
                        return Slot(slot, self._generation)
                if not free:
                    # Every slot is held here, so nothing above touched the connection: were it lost,
                    # with its locks, these slots would be free in the database and no take would see it.
                    await conn.fetchval("SELECT 1")
                await self._release_if_idle()
                return None
            except CONNECTION_ERRORS:
                await self._drop()
                raise

    async def _give(self, provider: str, slot: int) -> None:
        async with self._busy:
            if (provider, slot) not in self._held or self._conn is None or not self._current(slot):
                return  # it went with a lost connection
            try:
                async with asyncio.timeout(TRY_SECONDS):  # a silent connection must not hold `_busy`
                    await self._conn.execute(
                        "SELECT pg_advisory_unlock($1, $2), pg_notify($3, $4)",
                        slot_key(provider),
                        slot,
                        SLOT_CHANNEL,
                        provider,
                    )
                self._held.discard((provider, slot))
                await self._release_if_idle()
            except CONNECTION_ERRORS as exc:
                log.warning("%s: giving a fleet-wide slot back failed (%s)", provider, type(exc).__name__)
                await self._drop()

    def _current(self, slot: int) -> bool:
        """`slot` is locked on the connection kept now (as far as a plain number can say)."""
        return not isinstance(slot, Slot) or slot.connection == self._generation

    async def _connection(self) -> Any:
        if self._conn is None:
            self._conn = await self._pool.acquire(timeout=TRY_SECONDS)
            self._generation += 1
        return self._conn

    async def _release_if_idle(self) -> None:
        """No slot held: the connection goes back to the pool, with no lock left on it."""
        if self._held or self._conn is None:
            return
        conn, self._conn = self._conn, None
        try:
            async with asyncio.timeout(TRY_SECONDS):  # a silent connection must not hold `_busy`
                await conn.execute("SELECT pg_advisory_unlock_all()")
        except CONNECTION_ERRORS:
            _terminate(conn)  # a lock may be left on it: it must not go back as it is
        with contextlib.suppress(*CONNECTION_ERRORS):
            await self._pool.release(conn)

    async def _drop(self) -> None:
        """The connection failed: its locks are gone (or go with it now), and so are the slots it held."""
        if self._held:
            log.warning(
                "fleet-wide slots lost with their database connection (%s): until these calls end the "
                "fleet may pass the providers' ceilings",
                ", ".join(f"{p} {s}" for p, s in sorted(self._held)),
            )
        self._held.clear()
        conn, self._conn = self._conn, None
        if conn is not None:
            _terminate(conn)
            with contextlib.suppress(*CONNECTION_ERRORS):
                await self._pool.release(conn)

    def _start_listening(self) -> None:
        if not self._listening:
            self._listening = True
            self._listen(SLOT_CHANNEL, self._heard)

    def _heard(self, provider: str) -> None:
        event = self._freed.get(provider)
        if event is not None:
            event.set()


def _terminate(conn: Any) -> None:
    """Close a pooled connection at once; one asyncpg already took back (it was lost) needs nothing."""
    with contextlib.suppress(asyncpg.InterfaceError):
        conn.terminate()
