"""Open circuits shared by the processes on one database (bot.routing.breaker `share`, bot.storage.circuits).

Every test runs on both backends; a second `Storage` on the same database stands in for another process.
Each process's breaker has its own monotonic clock (they disagree, as on two hosts); the storage clock
is the one they share. Time moves by hand, never by sleeping.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable

import pytest

from bot.routing import CircuitBreaker
from bot.routing.breaker import CLOSED, HALF_OPEN, OPEN
from bot.storage import Storage, connection

COOLDOWN = 60.0


class Clocks:
    """The storage clock and one monotonic clock per process, moved together."""

    def __init__(self) -> None:
        self.wall = dt.datetime(2030, 5, 1, 12, 0, tzinfo=dt.UTC)
        self.elapsed = 0.0

    def monotonic(self, start: float) -> Callable[[], float]:
        return lambda: start + self.elapsed

    def advance(self, seconds: float) -> None:
        self.elapsed += seconds
        self.wall += dt.timedelta(seconds=seconds)


@pytest.fixture
def clocks() -> Clocks:
    return Clocks()


@pytest.fixture
def storage_clock(clocks: Clocks) -> Callable[[], dt.datetime]:
    return lambda: clocks.wall


@pytest.fixture
async def other(database_url: str, storage: Storage, clocks: Clocks) -> AsyncIterator[Storage]:
    """Another process's connection to the test's database (opened after `storage` migrated it)."""
    s = await Storage.open(database_url, clock=lambda: clocks.wall)
    yield s
    await s.close()


def breakers(clocks: Clocks) -> tuple[CircuitBreaker, CircuitBreaker]:
    a = CircuitBreaker(threshold=2, cooldown=COOLDOWN, clock=clocks.monotonic(1000.0))
    b = CircuitBreaker(threshold=2, cooldown=COOLDOWN, clock=clocks.monotonic(7.0))
    return a, b


def fail(breaker: CircuitBreaker, provider: str, times: int) -> None:
    for _ in range(times):
        assert breaker.allow(provider)
        breaker.record(provider, False)


async def opened_in_a_and_both_half_open(
    storage: Storage, other: Storage, clocks: Clocks, provider: str
) -> tuple[CircuitBreaker, CircuitBreaker]:
    """Breakers of two processes after `provider`'s circuit opened in a, was shared, and its open period
    ended: each may let one trial call through."""
    a, b = breakers(clocks)
    fail(a, provider, 2)
    await a.share(storage.circuits)
    await b.share(other.circuits)
    clocks.advance(COOLDOWN)
    assert (a.state(provider), b.state(provider)) == (HALF_OPEN, HALF_OPEN)
    return a, b


async def test_a_circuit_opened_in_one_process_is_open_in_another_until_it_ends_and_one_success_closes_it(
    storage: Storage, other: Storage, clocks: Clocks
):
    a, b = breakers(clocks)
    fail(a, "wavespeed", 2)
    assert a.state("wavespeed") == OPEN
    await b.share(other.circuits)
    assert b.allow("wavespeed")  # a has not handed it over yet

    clocks.advance(10)
    await a.share(storage.circuits)
    await b.share(other.circuits)
    assert (b.state("wavespeed"), b.allow("wavespeed")) == (OPEN, False)
    assert b.state("openai") == CLOSED  # only the failing provider

    clocks.advance(49.9)  # both still inside the minute a opened it for
    await b.share(other.circuits)
    assert (a.allow("wavespeed"), b.allow("wavespeed")) == (False, False)

    clocks.advance(0.1)  # the open period ends at the same moment everywhere: one trial call each
    assert (a.state("wavespeed"), b.state("wavespeed")) == (HALF_OPEN, HALF_OPEN)
    assert b.allow("wavespeed")
    assert not b.allow("wavespeed")
    assert a.allow("wavespeed")

    b.record("wavespeed", True)  # b's trial worked: closed there at once, everywhere after the rounds
    assert b.state("wavespeed") == CLOSED
    await b.share(other.circuits)
    assert a.state("wavespeed") == HALF_OPEN
    await a.share(storage.circuits)
    assert a.state("wavespeed") == CLOSED
    assert a.allow("wavespeed") and a.allow("wavespeed")
    a.record("wavespeed", False)  # a's trial answered after the close: one failure, not a new opening
    assert a.state("wavespeed") == CLOSED
    assert await storage.circuits.exchange({}, ()) == {}  # the row is gone


async def test_a_failed_trial_elsewhere_opens_the_circuit_again_for_everyone(
    storage: Storage, other: Storage, clocks: Clocks
):
    a, b = await opened_in_a_and_both_half_open(storage, other, clocks, "atlascloud")
    assert b.allow("atlascloud")  # b probes first, and it fails
    b.record("atlascloud", False)
    clocks.advance(5)
    await b.share(other.circuits)
    assert a.state("atlascloud") == HALF_OPEN  # a has not heard yet
    await a.share(storage.circuits)
    assert (a.state("atlascloud"), a.allow("atlascloud")) == (OPEN, False)

    clocks.advance(COOLDOWN - 5 - 0.1)
    assert a.state("atlascloud") == OPEN
    clocks.advance(0.1)
    assert a.state("atlascloud") == HALF_OPEN


async def test_what_changed_here_since_the_last_round_wins_over_the_stored_view(
    storage: Storage, other: Storage, clocks: Clocks
):
    a, b = await opened_in_a_and_both_half_open(storage, other, clocks, "segmind")
    assert a.allow("segmind") and b.allow("segmind")
    b.record("segmind", True)  # b closes it (row still there until b's round) ...
    a.record("segmind", False)  # ... while a's trial fails and opens it again
    await a.share(storage.circuits)
    assert a.state("segmind") == OPEN  # a's own news, not the stored (older) row
    await b.share(other.circuits)  # b hands over its close: the row goes
    assert b.state("segmind") == CLOSED  # b's news wins here too
    await a.share(storage.circuits)
    assert a.state("segmind") == CLOSED  # the last word in the database: closed for everyone


async def test_a_failed_exchange_hands_the_opens_over_next_time(storage: Storage, clocks: Clocks):
    a, _ = breakers(clocks)
    fail(a, "openai", 2)
    with pytest.raises(ConnectionError):
        await a.share(Down())
    await a.share(storage.circuits)
    assert await storage.circuits.exchange({}, ()) == {"openai": pytest.approx(COOLDOWN, abs=0.01)}


class Down:
    """A database the exchange cannot reach."""

    async def exchange(self, opened: object, closed: object) -> dict[str, float]:
        raise ConnectionError("database away")


async def test_a_close_that_could_not_be_handed_over_never_wipes_a_newer_open_from_elsewhere(
    storage: Storage, other: Storage, clocks: Clocks
):
    a, b = await opened_in_a_and_both_half_open(storage, other, clocks, "openai")
    assert a.allow("openai")  # a's trial works, but its database is away when it hands the close over
    a.record("openai", True)
    with pytest.raises(ConnectionError):
        await a.share(Down())
    clocks.advance(20)  # b's own trial fails later: the provider fails again, b opens it for everyone
    assert b.allow("openai")
    b.record("openai", False)
    await b.share(other.circuits)

    clocks.advance(10)  # a's database is back: its old close is stale by now
    await a.share(storage.circuits)
    await b.share(other.circuits)
    assert (a.state("openai"), b.state("openai")) == (OPEN, OPEN)
    assert await storage.circuits.exchange({}, ()) == {"openai": pytest.approx(COOLDOWN - 10, abs=0.01)}


async def test_an_older_open_handed_over_late_does_not_shorten_a_newer_one(storage: Storage, other: Storage):
    await other.circuits.exchange({"replicate": COOLDOWN}, ())
    assert await storage.circuits.exchange({"replicate": 5.0}, ()) == {
        "replicate": pytest.approx(COOLDOWN, abs=0.01)
    }
    assert await storage.circuits.exchange({"replicate": COOLDOWN + 30}, ()) == {
        "replicate": pytest.approx(COOLDOWN + 30, abs=0.01)
    }


class HostClockAhead:
    """The `datetime` module as bot.storage.connection sees it on a host whose clock is ten minutes ahead
    (the host's clock is what an uninjected storage clock reads)."""

    UTC = dt.UTC
    SKEW = dt.timedelta(minutes=10)

    class datetime:  # stands in for `dt.datetime`
        @staticmethod
        def now(tz: dt.tzinfo) -> dt.datetime:
            return dt.datetime.now(tz) + HostClockAhead.SKEW


async def test_a_host_clock_ahead_keeps_a_circuit_open_elsewhere_for_the_cooldown_not_longer(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
):
    # Processes on several hosts (PostgreSQL) date the rows by the database's clock, not their own.
    ahead, other = await Storage.open(postgres_url), await Storage.open(postgres_url)
    try:
        with monkeypatch.context() as host:
            host.setattr(connection, "dt", HostClockAhead)
            assert ahead.db.now() - dt.datetime.now(dt.UTC) > HostClockAhead.SKEW / 2
            await ahead.circuits.exchange({"openai": COOLDOWN}, ())
        seen = await other.circuits.exchange({}, ())
        assert 0 < seen["openai"] <= COOLDOWN
    finally:
        await ahead.close()
        await other.close()
