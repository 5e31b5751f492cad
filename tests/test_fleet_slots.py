"""A provider's ceiling across more processes than it has calls (bot/storage/fleet_slots.py, and the
limiter's use of it in bot/concurrency.py), on a real PostgreSQL: every "process" here is its own
`Storage` with its own connection pool, as separate bot processes have. Skipped without a server.

No test waits on the wall clock for an answer it asserts: waits are for events, under a generous bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time

import pytest

from bot.concurrency import ProviderLimiter, first_slot
from bot.providers import errors as perr
from bot.storage import Storage, fleet_slots
from bot.storage.fleet_slots import FleetSlots, slot_key
from bot.storage.postgres import PostgresDatabase
from tests.fixtures import storages
from tests.postgres import SilentNetwork

CEILING = 3
# Providers named for this run: advisory locks are the whole database's, not the test schema's, so
# another suite on the same server cannot be counted here.
P, Q = f"p-{secrets.token_hex(4)}", f"q-{secrets.token_hex(4)}"
WAIT = 10.0  # a generous bound on what should come at once (NOTIFY) or within a poll


def slots_of(storage: Storage) -> FleetSlots:
    db = storage.db
    assert isinstance(db, PostgresDatabase)
    return FleetSlots(db.pool, db.listen)


async def advisory_locks(storage: Storage, provider: str) -> int:
    """Slot locks on `provider` held in the whole database, by any session."""
    row = await storage.db.one(
        "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND classid::int = ? AND objsubid = 2",
        (slot_key(provider),),
    )
    return 0 if row is None else int(row[0])


async def end_slot_holders(storage: Storage, provider: str) -> None:
    """End, from `storage`, every server process holding one of `provider`'s slots: as PostgreSQL sees a
    process killed with -9 (its connection ends, and with it the session's locks)."""
    await storage.db.all(
        "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND classid::int = ?",
        (slot_key(provider),),
    )
    # pg_terminate_backend only signals: the locks go when the server process has ended, a moment later.
    for _ in range(int(WAIT * 100)):
        if await advisory_locks(storage, provider) == 0:
            return
        await asyncio.sleep(0.01)


async def until_ran(observer: Storage, application: str, query: str) -> None:
    """Until a session of `application` (a process's own connections) has last run `query`, as seen from
    `observer`'s connections."""
    for _ in range(int(WAIT * 100)):
        row = await observer.db.one(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = ? AND query = ?",
            (application, query),
        )
        if row is not None and row[0]:
            return
        await asyncio.sleep(0.01)
    raise TimeoutError(f"{application} never ran {query}")


async def test_more_takers_than_slots_hold_each_slot_once_and_a_slot_given_back_goes_to_a_waiter(
    postgres_url: str,
):
    async with storages(postgres_url, 5) as stores:
        fleet = [slots_of(s) for s in stores]
        first = [await f.take(P, CEILING) for f in fleet[:CEILING]]
        assert sorted(first) == list(range(CEILING))  # each slot once
        assert await advisory_locks(stores[0], P) == CEILING
        waiting = [asyncio.create_task(f.take(P, CEILING)) for f in fleet[CEILING:]]
        await asyncio.sleep(0.3)
        assert not any(task.done() for task in waiting)  # no free slot: both wait
        await fleet[1].give(P, first[1])
        done, pending = await asyncio.wait(waiting, timeout=WAIT, return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1 and len(pending) == 1
        assert [t.result() for t in done] == [first[1]]  # the one slot that came free
        assert await advisory_locks(stores[0], P) == CEILING
        # Another provider's slots are its own.
        assert await fleet[1].take(Q, 1) == 0
        await fleet[1].give(Q, 0)
        # Everyone gives back: the last waiter gets one, then nothing is left locked anywhere.
        await fleet[0].give(P, first[0])
        await asyncio.wait_for(asyncio.gather(*pending), WAIT)
        for taker in fleet:
            for provider, slot in taker.held:
                await taker.give(provider, slot)
        assert await advisory_locks(stores[0], P) == 0


async def test_a_slot_given_back_wakes_a_process_waiting_for_it_at_once_not_at_its_next_poll(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
):
    """A give is announced (NOTIFY) to the processes waiting for that provider's slots, so the call
    waiting elsewhere goes out the moment the slot is free; the poll only covers a lost announcement.
    With polls an hour apart, the waiter still gets the slot at once."""
    monkeypatch.setattr(fleet_slots, "POLL_SECONDS", 3600.0)
    name = f"retouch-test-{secrets.token_hex(4)}"
    async with (
        storages(postgres_url, 1) as [giving],
        storages(f"{postgres_url}&application_name={name}", 1) as [waiting],
    ):
        ours, theirs = slots_of(giving), slots_of(waiting)
        assert await ours.take(P, 1) == 0
        taking = asyncio.create_task(theirs.take(P, 1))
        await until_ran(giving, name, f'LISTEN "{fleet_slots.SLOT_CHANNEL}"')
        await until_ran(giving, name, "SELECT pg_advisory_unlock_all()")  # its try found none free
        assert not taking.done()
        await ours.give(P, 0)
        assert await asyncio.wait_for(taking, WAIT) == 0
        await theirs.give(P, 0)
        assert await advisory_locks(giving, P) == 0


async def test_a_dead_processes_slots_come_free_with_its_connection(
    postgres_url: str, caplog: pytest.LogCaptureFixture
):
    async with storages(postgres_url, 2) as (dying, alive):
        theirs = slots_of(dying)
        assert await theirs.take(P, 1) == 0
        ours = slots_of(alive)
        waiting = asyncio.create_task(ours.take(P, 1))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        # kill -9: PostgreSQL sees the connection end, and with it the session's locks.
        await end_slot_holders(alive, P)
        assert await asyncio.wait_for(waiting, WAIT) == 0
        # Had the "dead" process lived on without its connection, it would know its slot went with it.
        with caplog.at_level(logging.WARNING, logger="bot.storage.fleet_slots"):
            await theirs.give(P, 0)
        assert "giving a fleet-wide slot back failed" in caplog.text
        assert f"fleet-wide slots lost with their database connection ({P} 0)" in caplog.text
        assert not theirs.held
        await ours.give(P, 0)


async def test_a_take_cancelled_at_any_point_leaves_no_slot_taken(postgres_url: str):
    """A job cancelled while its call waits for a slot, or while the server is granting one: the slot
    must not stay locked in this process's session, unknown to it, for as long as it lives."""
    async with storages(postgres_url, 2) as (storage, other):
        slots = slots_of(storage)
        for turns in range(12):  # cancelled after 0, 1, 2, ... turns of the event loop
            taking = asyncio.create_task(slots.take(P, 1))
            for _ in range(turns):
                await asyncio.sleep(0)
            taking.cancel()
            try:
                slot = await taking
            except asyncio.CancelledError:
                pass
            else:  # it finished before the cancel came: an ordinary take
                assert slot is not None
                await slots.give(P, slot)
            await until_nothing_held(slots, other, turns)
        # Cancelled twice (a deadline and a member's cancel together), a few turns apart.
        for first in range(8):
            for gap in range(3):
                taking = asyncio.create_task(slots.take(P, 1))
                for _ in range(first):
                    await asyncio.sleep(0)
                taking.cancel()
                for _ in range(gap):
                    await asyncio.sleep(0)
                taking.cancel()
                outcome = (await asyncio.gather(taking, return_exceptions=True))[0]
                if isinstance(outcome, int):
                    await slots.give(P, outcome)
                await until_nothing_held(slots, other, (first, gap))
        # And one waiting for a slot another process holds.
        theirs = slots_of(other)
        assert await theirs.take(P, 1) == 0
        waiting = asyncio.create_task(slots.take(P, 1))
        await asyncio.sleep(0.2)
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        await theirs.give(P, 0)
        assert not slots.held and await advisory_locks(other, P) == 0


async def until_nothing_held(slots: FleetSlots, storage: Storage, case: object) -> None:
    """A slot granted to a take nobody waits for any more goes back on its own, just after."""
    deadline = asyncio.get_running_loop().time() + WAIT
    while slots.held or await advisory_locks(storage, P):
        assert asyncio.get_running_loop().time() < deadline, f"a slot stayed taken ({case})"
        await asyncio.sleep(0.01)


async def test_a_take_after_the_kept_connection_died_gets_its_slot_on_a_fresh_one(
    postgres_url: str, caplog: pytest.LogCaptureFixture
):
    async with storages(postgres_url, 2) as (storage, other):
        slots = slots_of(storage)
        assert await slots.take(P, 1) == 0  # the connection is kept while this slot is held
        await end_slot_holders(other, P)
        with caplog.at_level(logging.WARNING, logger="bot.storage.fleet_slots"):
            assert await slots.take(Q, 1) == 0  # the database answers: not a call without a slot
        assert f"fleet-wide slots lost with their database connection ({P} 0)" in caplog.text
        assert "no fleet-wide slot" not in caplog.text
        assert slots.held == {(Q, 0)}
        await slots.give(Q, 0)


async def test_a_call_whose_slot_went_with_a_lost_connection_does_not_free_the_next_calls_slot(
    postgres_url: str,
):
    async with storages(postgres_url, 2) as (storage, other):
        slots = slots_of(storage)
        old = await slots.take(P, 2, 0)  # a long call holds slot 0
        await end_slot_holders(other, P)  # the kept connection is lost, and slot 0 with it
        new = await asyncio.wait_for(slots.take(P, 2, 0), WAIT)  # the next call: slot 0, on a fresh one
        assert (old, new, await advisory_locks(other, P)) == (0, 0, 1)
        await slots.give(P, old)  # the long call ends
        assert await advisory_locks(other, P) == 1 and slots.held == {(P, 0)}  # the next call's, still
        await slots.give(P, new)
        assert await advisory_locks(other, P) == 0 and not slots.held


async def test_a_take_with_every_slot_held_here_notices_the_lost_connection_and_gets_the_free_slot(
    postgres_url: str,
):
    async with storages(postgres_url, 2) as (storage, other):
        slots = slots_of(storage)
        old = await slots.take(P, 1)  # a long call holds the only slot
        await end_slot_holders(other, P)  # its connection is lost: the slot is free fleet-wide
        assert await advisory_locks(other, P) == 0
        new = await asyncio.wait_for(slots.take(P, 1, within=0.0), WAIT)  # its first try, not a poll
        assert (old, new, await advisory_locks(other, P)) == (0, 0, 1)
        await slots.give(P, new)
        assert await advisory_locks(other, P) == 0 and not slots.held


async def test_the_connection_goes_back_to_the_pool_with_no_lock_left_on_it(postgres_url: str):
    async with storages(postgres_url, 1) as [storage]:
        db = storage.db
        assert isinstance(db, PostgresDatabase)
        slots = FleetSlots(db.pool, db.listen)
        idle = db.pool.get_idle_size()
        slot = await slots.take(P, 2)
        assert slot is not None and db.pool.get_idle_size() == idle - 1  # kept while it holds a slot
        await slots.give(P, slot)
        assert db.pool.get_idle_size() == idle and await advisory_locks(storage, P) == 0
        # The pool keeps sessions as they are (no reset): every connection it hands out holds no slot.
        async with db.pool.acquire() as conn:
            assert (
                await conn.fetchval(
                    "SELECT COUNT(*) FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'advisory'"
                )
                == 0
            )


async def test_without_the_database_a_call_goes_ahead_without_a_slot_and_says_so(
    postgres_url: str, caplog: pytest.LogCaptureFixture
):
    storage = await Storage.open(postgres_url)
    slots = slots_of(storage)
    await storage.close()  # the database is gone for this process
    with caplog.at_level(logging.WARNING, logger="bot.storage.fleet_slots"):
        assert await slots.take(P, 2) is None
        assert await slots.take(P, 2) is None
    assert f"{P}: no fleet-wide slot" in caplog.text
    assert caplog.text.count("no fleet-wide slot") == 1  # once per outage, not once per call
    # Nor does a closed database start listening again (a task that would retry for ever).
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "retouch-listen" and not t.done()]


async def test_a_database_gone_silent_holds_a_call_only_so_long_then_slots_work_again(
    postgres_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    """The network to PostgreSQL goes silent (no answer, no error) while this process holds a slot: a
    take waits `TRY_SECONDS`, not for ever, and the call goes ahead without a slot; the silent
    connection is closed, so once the network is back slots are taken again."""
    monkeypatch.setattr(fleet_slots, "TRY_SECONDS", 0.5)
    async with SilentNetwork(postgres_url) as network:
        storage = await Storage.open(network.url)
        try:
            slots = slots_of(storage)
            assert await slots.take(P, CEILING, 0) == 0  # the connection holding it is kept
            network.silent = True
            with caplog.at_level(logging.WARNING, logger="bot.storage.fleet_slots"):
                assert await asyncio.wait_for(slots.take(P, CEILING, 1), WAIT) is None
                assert await asyncio.wait_for(slots.take(P, CEILING, 1), WAIT) is None
            assert f"{P}: no fleet-wide slot (the database: TimeoutError)" in caplog.text
            network.silent = False
            slot = await asyncio.wait_for(slots.take(P, CEILING, 1), WAIT)
            assert slot == 1 and slots.held == {(P, 1)}  # slot 0 went with the closed connection
            await slots.give(P, 1)
        finally:
            await storage.close()


async def test_a_slot_given_back_over_a_silent_network_does_not_hold_the_process(
    postgres_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    """The network goes silent as a call gives its slot back: the give ends after `TRY_SECONDS` (the
    slot goes with the closed connection), and slots are taken again once the network is back."""
    monkeypatch.setattr(fleet_slots, "TRY_SECONDS", 0.5)
    async with SilentNetwork(postgres_url) as network:
        storage = await Storage.open(network.url)
        try:
            slots = slots_of(storage)
            assert await slots.take(P, CEILING, 0) == 0
            network.silent = True
            with caplog.at_level(logging.WARNING, logger="bot.storage.fleet_slots"):
                await asyncio.wait_for(slots.give(P, 0), WAIT)
            assert f"{P}: giving a fleet-wide slot back failed (TimeoutError)" in caplog.text
            assert slots.held == frozenset()
            network.silent = False
            # Slot 0 stays locked until the server hears its session end: the next one is taken.
            assert await asyncio.wait_for(slots.take(P, CEILING, 0), WAIT) == 1
            await slots.give(P, 1)
        finally:
            await storage.close()


async def test_more_processes_than_a_ceiling_never_have_more_calls_at_the_provider_than_it(
    postgres_url: str,
):
    """The limiter as each bot process runs it: five processes, a ceiling of three, and every process
    firing four calls at once. Without the slots each would keep one call and five would run."""
    async with storages(postgres_url, 5) as stores:
        limiters = []
        for rank, storage in enumerate(stores):
            limiter = ProviderLimiter({P: (CEILING, CEILING)})
            limiter.fleet_slots = slots_of(storage)
            limiter.share_with(len(stores), rank)
            assert limiter.limit(P) == 1  # its own part: one call
            limiters.append(limiter)
        at_provider, peak, sent = 0, 0, 0

        async def send() -> None:
            nonlocal at_provider, peak, sent
            at_provider += 1
            peak = max(peak, at_provider)
            await asyncio.sleep(0.05)  # the provider works on it; calls of all five overlap
            at_provider -= 1
            sent += 1

        calls = [limiter.call(P, send) for limiter in limiters for _ in range(4)]
        await asyncio.wait_for(asyncio.gather(*calls), 60)
        assert sent == 20
        assert peak == CEILING  # never more, and the whole ceiling was used
        for limiter in limiters:
            await limiter.returned()  # a finished call's slot goes back without holding its result up
        assert await advisory_locks(stores[0], P) == 0


async def test_in_a_steady_fleet_each_call_takes_a_slot_of_its_own_part_at_once(postgres_url: str):
    async with storages(postgres_url, 1) as [storage]:
        slots = slots_of(storage)
        limiter = ProviderLimiter({P: (6, 6)})
        limiter.fleet_slots = slots
        limiter.share_with(3, 1)  # 6 over three processes: 2, 2, 2; this one's are slots 2 and 3
        seen: list[frozenset[tuple[str, int]]] = []

        async def send() -> None:
            seen.append(slots.held)

        await limiter.call(P, send)
        await limiter.returned()
        assert seen == [{(P, 2)}] and not slots.held
        # A process on its own takes one too: a process that joins it must find its calls counted.
        alone = ProviderLimiter({P: (6, 6)})
        alone.fleet_slots = slots
        await alone.call(P, send)
        await alone.returned()
        [(provider, slot)] = seen[-1]  # one, anywhere (told no rank, it has no part of its own)
        assert provider == P and 0 <= slot < 6 and not slots.held


async def test_a_process_joining_waits_for_the_slots_the_others_calls_still_hold(postgres_url: str):
    """Two processes share a ceiling of 2, a call each at the provider; a third joins. Its part is taken
    at once, but the calls out already hold both slots: its call waits for one of them to end."""
    async with storages(postgres_url, 3) as stores:
        limiters = [ProviderLimiter({P: (2, 2)}) for _ in stores]
        for limiter, storage in zip(limiters, stores, strict=True):
            limiter.fleet_slots = slots_of(storage)
        at_provider, peak = 0, 0
        gate, both_out = asyncio.Event(), asyncio.Event()

        async def send() -> None:
            nonlocal at_provider, peak
            at_provider += 1
            peak = max(peak, at_provider)
            if at_provider == 2:
                both_out.set()
            await gate.wait()
            at_provider -= 1

        for rank, limiter in enumerate(limiters[:2]):
            limiter.share_with(2, rank)
        first = [asyncio.create_task(limiter.call(P, send)) for limiter in limiters[:2]]
        await asyncio.wait_for(both_out.wait(), WAIT)
        for rank, limiter in enumerate(limiters):
            limiter.share_with(3, rank)  # the third joins: 2 over 3 processes
        newcomer = asyncio.create_task(limiters[2].call(P, send))
        await asyncio.sleep(0.3)
        assert at_provider == 2 and not newcomer.done()  # it waits: both slots are held
        gate.set()
        await asyncio.wait_for(asyncio.gather(*first, newcomer), WAIT)
        assert peak == 2


def test_each_process_tries_its_own_part_of_the_slots_first():
    assert [first_slot(4, 3, rank) for rank in range(3)] == [0, 2, 3]  # parts 2, 1, 1
    assert [first_slot(6, 3, rank) for rank in range(3)] == [0, 2, 4]
    assert [first_slot(3, 5, rank) for rank in range(5)] == [0, 1, 2, 0, 1]  # one call each, round
    assert first_slot(4, 3, None) is None


class CountedSlots(FleetSlots):
    """FleetSlots that say when a take found every slot taken (its call waits, unsent)."""

    def __init__(self, storage: Storage) -> None:
        db = storage.db
        assert isinstance(db, PostgresDatabase)
        super().__init__(db.pool, db.listen)
        self.refused = asyncio.Event()

    async def _try(self, provider: str, ceiling: int, first: int | None) -> int | None:
        slot = await super()._try(provider, ceiling, first)
        if slot is None:
            self.refused.set()
        return slot


async def test_a_process_joining_a_lone_one_waits_for_the_slots_its_calls_hold(postgres_url: str):
    """Alone, a process's calls hold slots too: a newcomer that shares the ceiling at once must find
    them taken, not send a call on top of the ceiling while the lone one's calls are out."""
    async with storages(postgres_url, 2) as stores:
        limiters = [ProviderLimiter({P: (2, 2)}) for _ in stores]
        limiters[0].fleet_slots = slots_of(stores[0])
        newcomer_slots = limiters[1].fleet_slots = CountedSlots(stores[1])
        out, gate, two_out, three_out = [0], asyncio.Event(), asyncio.Event(), asyncio.Event()

        async def send() -> None:
            out[0] += 1
            if out[0] >= 2:
                (two_out if out[0] == 2 else three_out).set()
            await gate.wait()
            out[0] -= 1

        limiters[0].share_with(1, 0)  # alone
        first = [asyncio.create_task(limiters[0].call(P, send)) for _ in range(2)]
        await asyncio.wait_for(two_out.wait(), WAIT)
        for rank, limiter in enumerate(limiters):  # the second joins; both have heard
            limiter.share_with(2, rank)
        newcomer = asyncio.create_task(limiters[1].call(P, send))
        refused, over = (
            asyncio.create_task(newcomer_slots.refused.wait()),
            asyncio.create_task(three_out.wait()),
        )
        await asyncio.wait({refused, over}, timeout=WAIT, return_when=asyncio.FIRST_COMPLETED)
        refused.cancel()
        over.cancel()
        try:
            assert newcomer_slots.refused.is_set() and out[0] == 2 and not newcomer.done()
        finally:
            gate.set()
            await asyncio.gather(*first, newcomer)


async def test_a_call_that_cannot_get_a_fleet_slot_before_its_deadline_is_refused_unsent(postgres_url: str):
    """As for this process's own slots: refused (RateLimited, not accepted) so routing can try another
    provider, not left waiting until the job times out."""
    async with storages(postgres_url, 2) as (a, b):
        holder = slots_of(a)
        assert {await holder.take(P, 2, 0), await holder.take(P, 2, 1)} == {0, 1}  # another's calls
        limiter = ProviderLimiter({P: (2, 2)})
        limiter.fleet_slots = slots_of(b)
        limiter.share_with(2, 1)
        sent: list[int] = []

        async def send() -> None:
            sent.append(1)

        try:
            with pytest.raises(perr.RateLimited) as refused:
                await asyncio.wait_for(
                    limiter.call(P, send, deadline=time.monotonic() + 0.5, may_go_elsewhere=True), WAIT
                )
            assert not refused.value.accepted and refused.value.status is None and sent == []
            assert limiter.snapshot()[P].in_flight == 0  # its own slot went back too
        finally:
            for provider, slot in holder.held:
                await holder.give(provider, slot)


async def test_back_to_back_calls_in_a_steady_fleet_each_take_the_slot_of_their_own_part(postgres_url: str):
    """A finished call hands its slot back in the background (bot.concurrency `_give_back`). Its give
    started only once awaited, after the next call's take had the connection: that take skipped the
    slot still held here and locked one of another process's part, which then had to wait for it."""
    async with storages(postgres_url, 1) as [storage]:
        slots = slots_of(storage)
        limiter = ProviderLimiter({P: (3, 3)})
        limiter.fleet_slots = slots
        limiter.share_with(3, 1)  # one of three processes: its part is slot 1
        seen: list[frozenset[tuple[str, int]]] = []

        async def send() -> None:
            seen.append(slots.held)

        for _ in range(3):
            await limiter.call(P, send)
        await limiter.returned()
        assert seen == [frozenset({(P, 1)})] * 3
        assert slots.held == frozenset()
