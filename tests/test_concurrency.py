"""Adaptive provider limits, fair queue turns and cheap queue feedback (bot/concurrency.py).

The limiter runs on an injected clock and sleep: a pause (Retry-After) advances the fake clock instead
of waiting, so nothing here sleeps to wait. Calls that must be in flight together are held on events.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from bot.concurrency import (
    BACKOFF_SECONDS,
    REMEMBER_REFUSAL_SECONDS,
    RETRY_AFTER_FLOOR,
    RETRY_MIN_WINDOW,
    START_CONCURRENCY,
    FairTurns,
    FeedbackThrottle,
    ProviderLimiter,
    RateLimitWatch,
    fair_order,
)
from bot.config import load_settings
from bot.providers import errors as perr

BASE_ENV = {"DISCORD_TOKEN": "tok-abcdef123456"}


class FakeTime:
    """A monotonic clock and a sleep that only moves it (and yields, so other tasks run)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def limiter(start: int, ceiling: int | None, time: FakeTime) -> ProviderLimiter:
    return ProviderLimiter({"p": (start, ceiling)}, clock=time, sleep=time.sleep)


async def settle(condition: Callable[[], bool], rounds: int = 1000) -> None:
    """Let the event loop run until `condition` holds (no wall-clock wait)."""
    for _ in range(rounds):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


async def full_round(lim: ProviderLimiter) -> None:
    """Fill every slot of provider p with calls held in flight together, then let them all succeed."""
    n = lim.limit("p")
    gate = asyncio.Event()

    async def held() -> str:
        await gate.wait()
        return "ok"

    tasks = [asyncio.ensure_future(lim.call("p", held)) for _ in range(n)]
    await settle(lambda: lim.snapshot()["p"].in_flight == n)
    gate.set()
    await asyncio.gather(*tasks)


class HeldCalls:
    """Calls that start, count themselves, and wait for `gate` before answering "ok"."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.started = 0

    async def held(self) -> str:
        self.started += 1
        await self.gate.wait()
        return "ok"

    def send(self, lim: ProviderLimiter, count: int) -> list[asyncio.Future[str]]:
        return [asyncio.ensure_future(lim.call("p", self.held)) for _ in range(count)]


async def held_calls(
    lim: ProviderLimiter, sent: int, started: int
) -> tuple[HeldCalls, list[asyncio.Future[str]]]:
    """`sent` calls held until `calls.gate` is set, once `started` of them are under way."""
    calls = HeldCalls()
    tasks = calls.send(lim, sent)
    await settle(lambda: calls.started == started)
    return calls, tasks


async def the_only_slot_held(time: FakeTime) -> tuple[ProviderLimiter, HeldCalls, list[asyncio.Future[str]]]:
    """A limiter of one slot, taken by a call held until `calls.gate` is set."""
    lim = limiter(1, 1, time)
    calls, holding = await held_calls(lim, 1, 1)
    return lim, calls, holding


def rate_limited(retry_after: float | None = None) -> perr.RateLimited:
    return perr.RateLimited("429", provider="p", status=429, retry_after=retry_after, accepted=False)


# -- increase -----------------------------------------------------------------------------------------


async def test_the_limit_grows_by_about_one_per_full_round_of_successes() -> None:
    time = FakeTime()
    lim = limiter(2, 10, time)

    await full_round(lim)
    await full_round(lim)

    assert lim.limit("p") == 3
    for _ in range(3):
        await full_round(lim)
    assert lim.limit("p") == 4


async def test_successes_while_the_limit_is_not_in_use_do_not_raise_it() -> None:
    time = FakeTime()
    lim = limiter(4, 10, time)

    async def ok() -> str:
        return "ok"

    for _ in range(50):
        assert await lim.call("p", ok) == "ok"

    assert lim.limit("p") == 4


async def test_the_limit_never_passes_its_ceiling() -> None:
    time = FakeTime()
    lim = limiter(2, 3, time)

    for _ in range(20):
        await full_round(lim)

    assert lim.limit("p") == 3
    assert lim.snapshot()["p"].ceiling == 3


async def test_calls_over_the_limit_wait_for_a_slot() -> None:
    time = FakeTime()
    lim = limiter(2, 2, time)
    calls, tasks = await held_calls(lim, 5, 2)
    for _ in range(20):
        await asyncio.sleep(0)
    assert calls.started == 2 and lim.snapshot()["p"].in_flight == 2
    calls.gate.set()
    assert await asyncio.gather(*tasks) == ["ok"] * 5


async def test_live_processes_split_a_providers_ceiling_and_a_dead_ones_part_goes_to_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    time = FakeTime()
    lim = ProviderLimiter({"p": (6, 6), "free": (4, None)}, clock=time, sleep=time.sleep)
    lim.share_with(3)  # three processes, one account at the provider: two calls each
    assert (lim.limit("p"), lim.limit("free")) == (2, 4)  # no ceiling: nothing to split
    lim.share_with(4)
    assert lim.limit("p") == 1  # never below one call
    lim.share_with(7)  # each process's queue still moves, so together they pass the ceiling: said once
    lim.share_with(7)
    assert [r.message for r in caplog.records if "share p's ceiling" in r.message] == [
        "7 processes share p's ceiling of 6 calls at once: each still makes one, so up to 7 reach it "
        "together (raise p's ceiling or run fewer processes)"
    ]
    lim.share_with(2)
    calls, tasks = await held_calls(lim, 6, 3)
    for _ in range(20):
        await asyncio.sleep(0)
    assert calls.started == 3
    lim.share_with(1)  # the other process died: its part is this one's, and waiting calls go at once
    await settle(lambda: calls.started == 6)
    assert lim.limit("p") == 6
    calls.gate.set()
    assert await asyncio.gather(*tasks) == ["ok"] * 6


@pytest.mark.parametrize(
    ("ceiling", "processes", "parts"),
    [
        (4, 3, [2, 1, 1]),  # floor alone would use 3 of the account's 4 calls
        (3, 2, [2, 1]),  # WaveSpeed's entry tier over two processes: 2 alone would be used
        (6, 3, [2, 2, 2]),
        (7, 3, [3, 2, 2]),
        (5, 4, [2, 1, 1, 1]),
        (100, 3, [34, 33, 33]),
        (4, 1, [4]),
        (1, 1, [1]),
        (3, 3, [1, 1, 1]),
        (3, 5, [1, 1, 1, 1, 1]),  # more processes than the ceiling: one each, together past it
    ],
)
def test_the_parts_of_a_ceiling_add_up_to_it_the_first_ranks_taking_the_remainder(
    ceiling: int, processes: int, parts: list[int]
) -> None:
    time = FakeTime()
    lim = limiter(ceiling, ceiling, time)
    seen = []
    for rank in range(processes):  # each process of the fleet, as it hears its own place
        lim.share_with(processes, rank)
        seen.append(lim.limit("p"))
    assert seen == parts
    assert min(seen) >= 1
    if processes <= ceiling:
        assert sum(seen) == ceiling
    lim.share_with(processes)  # told no place: no extra call, which the first ranks may be taking
    assert lim.limit("p") == max(1, ceiling // processes)


async def test_a_waiting_call_goes_as_soon_as_this_processs_part_of_the_ceiling_grows(
    caplog: pytest.LogCaptureFixture,
) -> None:
    time = FakeTime()
    lim = limiter(5, 5, time)
    lim.share_with(3, 2)  # the last of three: 2, 2, 1
    calls, tasks = await held_calls(lim, 6, 1)
    lim.share_with(2, 1)  # a process before it died: 3, 2, and it is now the last of two
    await settle(lambda: calls.started == 2)
    lim.share_with(2, 0)  # first of two (its rank alone changed): the extra call is its own
    await settle(lambda: calls.started == 3)
    for _ in range(20):
        await asyncio.sleep(0)
    assert calls.started == 3 and lim.snapshot()["p"].in_flight == 3  # never past its part
    lim.share_with(7, 0)  # more processes than calls: one each, said once whatever the rank
    lim.share_with(7, 6)
    assert len([r for r in caplog.records if "share p's ceiling" in r.message]) == 1
    calls.gate.set()
    assert await asyncio.gather(*tasks) == ["ok"] * 6


class SlowSlots:
    """A ceiling's slots held in memory (the real ones are PostgreSQL locks: tests/test_fleet_slots.py),
    whose give takes a while, as a database round trip does."""

    def __init__(self) -> None:
        self.held: set[int] = set()
        self.giving = asyncio.Event()
        self._changed = asyncio.Condition()

    async def take(
        self, provider: str, ceiling: int, first: int | None = None, *, within: float | None = None
    ) -> int | None:
        async with self._changed:
            await self._changed.wait_for(lambda: len(self.held) < ceiling)
            slot = min(set(range(ceiling)) - self.held)
            self.held.add(slot)
            return slot

    async def give(self, provider: str, slot: int) -> None:
        async def back() -> None:
            self.giving.set()
            await asyncio.sleep(0.2)
            async with self._changed:
                self.held.discard(slot)
                self._changed.notify_all()

        await asyncio.shield(back())  # as FleetSlots.give: the slot goes back whatever the caller does


async def test_a_call_cancelled_while_its_fleet_slot_goes_back_leaves_this_processs_own_slot_free() -> None:
    lim = limiter(3, 3, FakeTime())
    slots = SlowSlots()
    lim.fleet_slots = slots
    lim.share_with(5, 4)  # more processes than calls: one call here, and a fleet slot for each
    assert lim.limit("p") == 1

    async def quick() -> str:
        return "ok"

    first = asyncio.create_task(lim.call("p", quick))
    await asyncio.wait_for(slots.giving.wait(), 5)
    first.cancel()  # a job cancel or a stop lands during the give's round trip
    await asyncio.gather(first, return_exceptions=True)
    assert lim.snapshot()["p"].in_flight == 0
    assert await asyncio.wait_for(lim.call("p", quick), 5) == "ok"  # the next call is not stuck


async def test_a_call_waiting_for_a_fleet_slot_is_not_shown_as_at_the_provider() -> None:
    lim = limiter(1, 1, FakeTime())
    slots = SlowSlots()
    lim.fleet_slots = slots
    lim.share_with(2, 1)  # two processes, one call: this one waits for the other's slot
    slots.held.add(0)  # the other process's call
    waiting = asyncio.create_task(lim.call("p", lambda: asyncio.sleep(0, "ok")))
    await settle(lambda: lim._state("p").slot_waits == 1)
    assert lim.snapshot()["p"].in_flight == 0  # /metrics and /diagnose: nothing sent from here yet
    await slots.give("p", 0)
    assert await asyncio.wait_for(waiting, 5) == "ok"
    assert lim.snapshot()["p"].in_flight == 0


# -- decrease, Retry-After, deadline ------------------------------------------------------------------


async def test_a_429_cuts_the_limit_pauses_for_retry_after_and_sends_the_call_again() -> None:
    time = FakeTime()
    lim = limiter(8, 16, time)
    gate = asyncio.Event()
    sent_at: list[float] = []
    refused_once = False

    async def held() -> str:
        await gate.wait()
        return "ok"

    async def refused_then_ok() -> str:
        nonlocal refused_once
        sent_at.append(time.now)
        if not refused_once:
            refused_once = True
            raise rate_limited(retry_after=7.0)
        return "ok"

    others = [asyncio.ensure_future(lim.call("p", held)) for _ in range(7)]
    await settle(lambda: lim.snapshot()["p"].in_flight == 7)
    started = time.now
    late = asyncio.ensure_future(lim.call("p", refused_then_ok, deadline=started + 300))
    await settle(lambda: len(sent_at) == 1 and time.slept)

    state = lim.snapshot()["p"]
    assert state.limit == 4  # halved: 8 in flight drew the 429
    assert state.refused_at == 8
    assert time.slept == [7.0]  # the pause is the provider's Retry-After
    assert len(sent_at) == 1  # paused, then waiting for one of the 4 slots the 7 others still hold
    gate.set()
    assert await late == "ok"
    assert await asyncio.gather(*others) == ["ok"] * 7
    assert len(sent_at) == 2
    assert sent_at[1] - sent_at[0] >= 7.0  # not sent again before the provider's Retry-After


async def test_new_calls_wait_out_the_pause_of_a_429() -> None:
    time = FakeTime()
    lim = limiter(4, 4, time)
    sent_at: list[float] = []

    async def refused() -> str:
        raise rate_limited(retry_after=12.0)

    async def ok() -> str:
        sent_at.append(time.now)
        return "ok"

    with pytest.raises(perr.RateLimited):
        await lim.call("p", refused, deadline=time.now + 20)  # 12 s + the retry window outlast it
    paused_at = time.now
    assert await lim.call("p", ok) == "ok"

    assert sent_at[0] >= paused_at + 12.0


@pytest.mark.parametrize(
    ("retry_after", "first_wait"),
    [
        (None, BACKOFF_SECONDS),
        # `Retry-After: 0` (or a reset time already past): a floor that doubles, not a tight loop.
        (0.0, RETRY_AFTER_FLOOR * BACKOFF_SECONDS),
    ],
)
async def test_a_429_without_a_usable_retry_after_backs_off_and_doubles_per_cut_without_a_success(
    retry_after: float | None, first_wait: float
) -> None:
    time = FakeTime()
    lim = limiter(8, 8, time)
    refusals = 3

    async def busy() -> str:
        nonlocal refusals
        if refusals:
            refusals -= 1
            raise rate_limited(retry_after)
        return "ok"

    assert await lim.call("p", busy, deadline=time.now + 600) == "ok"

    assert time.slept == [first_wait, 2 * first_wait, 4 * first_wait]
    assert lim.limit("p") == 1  # 8 -> 4 -> 2 -> 1, then below the level that drew the 429


async def test_a_429_whose_wait_outlasts_the_deadline_is_raised_for_routing_to_go_elsewhere() -> None:
    time = FakeTime()
    lim = limiter(4, 4, time)
    sends = 0

    async def refused() -> str:
        nonlocal sends
        sends += 1
        raise rate_limited(retry_after=600.0)

    with pytest.raises(perr.RateLimited):
        await lim.call("p", refused, deadline=time.now + 300)

    assert sends == 1 and time.slept == []


async def test_a_call_that_cannot_outwait_a_pause_before_its_deadline_is_refused_unsent() -> None:
    time = FakeTime()
    lim = limiter(4, 4, time)

    async def refused() -> str:
        raise rate_limited(retry_after=120.0)

    async def never() -> str:
        raise AssertionError("sent during the pause")

    with pytest.raises(perr.RateLimited):
        await lim.call("p", refused, deadline=time.now + 100)  # its own 429: 120 s is past its deadline
    with pytest.raises(perr.RateLimited) as info:
        await lim.call("p", never, deadline=time.now + 100)  # a new call: not left to sit it out

    assert info.value.accepted is False and info.value.retryable_elsewhere
    assert time.slept == []

    # The poll of a job the provider already has: nothing else can finish it, so it waits its turn.
    async def poll() -> str:
        return "done"

    assert await lim.call("p", poll, deadline=time.now + 100, may_go_elsewhere=False) == "done"
    assert time.slept == [120.0]


async def test_a_429_the_provider_answered_after_taking_the_job_is_never_sent_again() -> None:
    """A 429 marked accepted came after the job was taken (a poll's, say): sending it again would make
    and bill it twice. It is raised at once."""
    time = FakeTime()
    lim = limiter(4, 4, time)
    sent: list[int] = []

    async def taken_then_429() -> str:
        sent.append(1)
        raise perr.RateLimited("429", status=429, retry_after=0.0, accepted=True)

    with pytest.raises(perr.RateLimited) as info:
        await lim.call("p", taken_then_429, deadline=time.now + 300)
    assert info.value.accepted and sent == [1] and time.slept == []


@pytest.mark.parametrize(
    ("deadline", "sent_again"),
    [
        (40.0, False),  # the pause ends 15 s in, before the deadline, but inside RETRY_MIN_WINDOW of it
        (15.0 + RETRY_MIN_WINDOW + 1, True),
    ],
)
async def test_a_429_is_sent_again_only_when_its_pause_leaves_the_retry_window_before_the_deadline(
    deadline: float, sent_again: bool
) -> None:
    time = FakeTime()
    lim = limiter(4, 4, time)
    sent: list[int] = []

    async def refused_once() -> str:
        sent.append(1)
        if len(sent) == 1:
            raise rate_limited(retry_after=15.0)
        return "ok"

    assert RETRY_MIN_WINDOW > 40 - 15
    if sent_again:
        assert await lim.call("p", refused_once, deadline=time.now + deadline) == "ok"
        assert sent == [1, 1] and time.slept == [15.0]
    else:
        with pytest.raises(perr.RateLimited):
            await lim.call("p", refused_once, deadline=time.now + deadline)
        assert sent == [1] and time.slept == []


async def test_a_call_that_cannot_get_a_slot_before_its_deadline_is_refused_unsent() -> None:
    time = FakeTime()
    lim, calls, holding = await the_only_slot_held(time)

    with pytest.raises(perr.RateLimited) as info:  # 0.05 s of its deadline left past the retry window
        await lim.call("p", calls.held, deadline=time.now + RETRY_MIN_WINDOW + 0.05)

    assert info.value.accepted is False and calls.started == 1
    assert lim.snapshot()["p"].in_flight == 1  # nothing leaked: the held call's slot only
    calls.gate.set()
    assert await asyncio.gather(*holding) == ["ok"]
    assert await lim.call("p", calls.held, deadline=time.now + 600) == "ok"


async def test_a_429_the_provider_may_have_accepted_is_never_sent_again() -> None:
    time = FakeTime()
    lim = limiter(4, 4, time)
    sends = 0

    async def accepted() -> str:
        nonlocal sends
        sends += 1
        raise perr.RateLimited("429 after accepting", retry_after=1.0, accepted=True)

    with pytest.raises(perr.RateLimited):
        await lim.call("p", accepted, deadline=time.now + 600)
    assert sends == 1


async def test_the_limit_settles_just_below_the_level_where_the_provider_refuses() -> None:
    """A provider that answers 429 above 5 calls in flight: every call succeeds, none is accepted
    twice, and the limit ends at 5."""
    time = FakeTime()
    lim = limiter(16, 64, time)
    at_provider = 0
    accepted = 0
    peak = 0

    async def provider() -> str:
        nonlocal at_provider, accepted, peak
        if at_provider >= 5:
            raise rate_limited(None)
        at_provider += 1
        accepted += 1
        peak = max(peak, at_provider)
        try:
            for _ in range(3):
                await asyncio.sleep(0)
        finally:
            at_provider -= 1
        return "ok"

    results = await asyncio.gather(*(lim.call("p", provider, deadline=time.now + 10**6) for _ in range(60)))

    assert results == ["ok"] * 60 and accepted == 60 and peak == 5
    assert lim.limit("p") == 5
    assert lim.snapshot()["p"].refused_at == 6


async def test_after_the_refusal_is_forgotten_the_limit_probes_above_it_again() -> None:
    time = FakeTime()
    lim = limiter(8, 20, time)
    gate = asyncio.Event()

    async def held() -> str:
        await gate.wait()
        return "ok"

    async def refused() -> str:
        raise rate_limited(1.0)

    others = [asyncio.ensure_future(lim.call("p", held)) for _ in range(5)]
    await settle(lambda: lim.snapshot()["p"].in_flight == 5)
    with pytest.raises(perr.RateLimited):
        await lim.call("p", refused, deadline=time.now)  # the 6th call in flight is refused
    assert lim.limit("p") == 4  # halved
    gate.set()
    await asyncio.gather(*others)
    for _ in range(10):
        await full_round(lim)
    assert lim.limit("p") == 5  # back up quickly, then held just below the level that was refused

    time.now += 301  # the refusal is forgotten: the account may have moved up a tier
    for _ in range(12):
        await full_round(lim)
    assert lim.limit("p") > 5


def test_the_watch_hands_429s_to_posts_on_a_providers_hosts_to_the_limiter() -> None:
    time = FakeTime()
    lim = ProviderLimiter({"openai": (8, 8), "segmind": (8, 8)}, clock=time, sleep=time.sleep)
    watch = RateLimitWatch(
        {
            "https://api.openai.com/v1": "openai",
            "https://api.segmind.com/v1": "segmind",
            "https://workflows-api.segmind.com/upload-asset": "segmind",
        }
    )
    edits = "https://API.openai.com:443/v1/images/edits"  # the same origin, spelled out
    watch.seen("POST", edits, 429, {"retry-after": "3"})  # before attach: ignored
    watch.attach(lim)

    watch.seen("POST", edits, 200, {})
    watch.seen("GET", "https://api.openai.com/v1/models", 429, {"retry-after": "9"})  # a check, not a call
    watch.seen("POST", "https://discord.com/api/v10/interactions", 429, {"retry-after": "9"})
    # The free safety check's own limit: nothing about edits at once.
    watch.seen("POST", "https://api.openai.com/v1/moderations", 429, {"retry-after": "20"})
    assert lim.snapshot()["openai"].paused_for == 0
    watch.seen("POST", edits, 429, {"retry-after-ms": "2500"})
    watch.seen("POST", "https://workflows-api.segmind.com/upload-asset", 429, {})

    openai, segmind = lim.snapshot()["openai"], lim.snapshot()["segmind"]
    assert openai.paused_for == pytest.approx(2.5)
    assert (openai.limit, openai.refused_at) == (8, None)  # nothing was in flight: no level to learn
    assert segmind.paused_for == pytest.approx(BACKOFF_SECONDS)


async def test_a_call_cancelled_just_after_it_was_woken_for_a_slot_is_cancelled_and_never_sent() -> None:
    """Its cancel must not be swallowed (then the paid call would leave after the member cancelled)."""
    time = FakeTime()
    lim, calls, holding = await the_only_slot_held(time)
    sent: list[str] = []

    async def second() -> str:
        sent.append("sent")
        return "ok"

    waiting = asyncio.ensure_future(lim.call("p", second, deadline=time.now + 600))
    await settle(lambda: len(lim._state("p").waiters) == 1)
    calls.gate.set()
    await settle(lambda: not lim._state("p").waiters)  # woken, not yet resumed
    waiting.cancel()

    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert sent == [] and await asyncio.gather(*holding) == ["ok"]
    assert lim.snapshot()["p"].in_flight == 0


async def test_a_call_woken_for_a_slot_that_then_gives_up_on_a_pause_passes_the_slot_on() -> None:
    time = FakeTime()
    lim = limiter(2, 2, time)
    gate_a, gate_b = asyncio.Event(), asyncio.Event()

    async def refused() -> str:
        await gate_a.wait()
        raise rate_limited(retry_after=60.0)

    async def answered() -> str:
        await gate_b.wait()
        return "b"

    async def sent() -> str:
        return "sent"

    a = asyncio.ensure_future(lim.call("p", refused, deadline=time.now + 50))  # too short to retry
    b = asyncio.ensure_future(lim.call("p", answered, deadline=time.now + 600))
    await settle(lambda: lim.snapshot()["p"].in_flight == 2)
    hurried = asyncio.ensure_future(lim.call("p", sent, deadline=time.now + 80))  # cannot outwait 60 s
    patient = asyncio.ensure_future(lim.call("p", sent, deadline=time.now + 600))
    await settle(lambda: len(lim._state("p").waiters) == 2)
    gate_a.set()
    with pytest.raises(perr.RateLimited):
        await a
    gate_b.set()
    assert await b == "b"

    with pytest.raises(perr.RateLimited):
        await hurried
    assert await patient == "sent"  # woken in its turn, not left waiting with a slot free


# -- wiring ---------------------------------------------------------------------------------------------


def test_from_settings_starts_each_provider_at_its_table_value_under_its_ceiling() -> None:
    settings = load_settings(
        {
            **BASE_ENV,
            "OPENAI_API_KEY": "sk-" + "a" * 20,
            "WAVESPEED_API_KEY": "ws-key-123456",
            "ATLASCLOUD_API_KEY": "atlas-key-1234",
            "ATLASCLOUD_MAX_CONCURRENT": "2",
            "MAX_CONCURRENT_JOBS": "20",
        }
    )
    lim = ProviderLimiter.from_settings(settings)
    state = lim.snapshot(["openai", "wavespeed", "atlascloud"])

    assert (state["openai"].limit, state["openai"].ceiling) == (min(START_CONCURRENCY["openai"], 20), 20)
    assert (state["wavespeed"].limit, state["wavespeed"].ceiling) == (3, 3)  # its entry tier, by default
    assert (state["atlascloud"].limit, state["atlascloud"].ceiling) == (2, 2)
    assert lim.capacity(["openai", "wavespeed", "atlascloud"]) == 25


# -- fairness ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        # One member's burst of 10, then another member's single job: the single job is second.
        (
            [(f"a{i}", 1, 1) for i in range(10)] + [("b0", 1, 2)],
            ["a0", "b0", *[f"a{i}" for i in range(1, 10)]],
        ),
        # Members take turns inside a server, each member's jobs in their own order.
        (
            [("a0", 1, 1), ("a1", 1, 1), ("b0", 1, 2), ("b1", 1, 2), ("c0", 1, 3)],
            ["a0", "b0", "c0", "a1", "b1"],
        ),
        # Servers take turns: a busy server does not hold up a quiet one.
        (
            [("x0", 1, 1), ("x1", 1, 2), ("x2", 1, 3), ("y0", 2, 9)],
            ["x0", "y0", "x1", "x2"],
        ),
        ([], []),
    ],
    ids=["burst-vs-single", "members", "servers", "empty"],
)
def test_fair_order_interleaves_members_and_servers(
    entries: list[tuple[str, int, int]], expected: list[str]
) -> None:
    assert fair_order(entries) == expected


def test_a_member_who_already_had_a_turn_waits_behind_one_who_has_not() -> None:
    turns = FairTurns()
    turns.order([("a0", 1, 1)])
    turns.started(1, 1)  # Alice's first job runs
    waiting = [("a1", 1, 1), ("a2", 1, 1), ("b0", 1, 2), ("y0", 2, 9), ("x0", 1, 3)]

    assert turns.order(waiting, running=[(1, 1)]) == ["y0", "b0", "x0", "a1", "a2"]
    # Her running job ended: she still had her turn, so Bob is still ahead of her next one.
    assert turns.order(waiting)[:3] == ["y0", "b0", "x0"]


def test_a_member_back_after_being_idle_starts_level_with_the_others() -> None:
    turns = FairTurns()
    for _ in range(5):
        turns.order([("a", 1, 1), ("b", 1, 2)])
        turns.started(1, 1)
        turns.started(1, 2)
    turns.order([], running=[(1, 1)])  # Bob left; Alice has a job running

    assert turns.order([("a5", 1, 1), ("a6", 1, 1), ("c0", 1, 3)]) == ["c0", "a5", "a6"]


# -- queue feedback ------------------------------------------------------------------------------------


class Tick:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_feedback_skips_unchanged_text_and_sends_only_the_newest_per_job() -> None:
    tick = Tick()
    throttle: FeedbackThrottle[str, str] = FeedbackThrottle(
        min_interval=5, per_second=100, burst=100, clock=tick
    )

    throttle.offer("job", "position 3", "v3", priority=3)
    assert throttle.due() == ["v3"]
    throttle.offer("job", "position 3", "v3 again", priority=3)
    assert throttle.pending == 0 and throttle.next_in() is None
    throttle.offer("job", "position 2", "v2", priority=2)
    throttle.offer("job", "position 1", "v1", priority=1)
    assert throttle.due() == []  # too soon after the last edit of this job
    assert throttle.next_in() == pytest.approx(5)
    tick.now = 5
    assert throttle.due() == ["v1"]  # coalesced: only the newest text


def test_feedback_for_500_waiting_jobs_stays_within_the_rate_budget() -> None:
    tick = Tick()
    throttle: FeedbackThrottle[int, int] = FeedbackThrottle(
        min_interval=5, per_second=20, burst=40, clock=tick
    )
    sent = 0
    # 500 jobs queued; every 0.1 s one starts and all the others move up one place.
    for step in range(100):
        for job in range(step, 500):
            throttle.offer(job, f"position {job - step + 1}", job, priority=job - step + 1)
        throttle.retain(set(range(step, 500)))
        sent += len(throttle.due())
        tick.now += 0.1

    # Without the throttle: 500 + 499 + ... edits (~45,000); with it: the burst plus 20 a second.
    assert sent <= 40 + 20 * 10


def test_feedback_sends_new_jobs_first_then_the_front_of_the_queue() -> None:
    tick = Tick()
    throttle: FeedbackThrottle[str, str] = FeedbackThrottle(min_interval=0, per_second=1, burst=2, clock=tick)
    throttle.offer("old", "a", "old-a", priority=1)
    throttle.offer("back", "a", "back-a", priority=9)
    assert throttle.due() == ["old-a", "back-a"]
    tick.now = 10
    throttle.offer("back", "b", "back", priority=9)
    throttle.offer("old", "b", "old-b", priority=1)
    throttle.offer("new", "b", "new", priority=50)
    assert throttle.due() == ["new", "old-b"]  # the budget is 2: the back of the queue waits
    assert throttle.next_in() == pytest.approx(1.0)


# -- rules a mutation pass found untested: each test below fails if its rule is changed -----------


# the limiter's own refusal (no fleet slot in time) is not a provider's 429.
async def test_no_fleet_slot_in_time_is_refused_unsent_without_cutting_the_limit_or_pausing() -> None:
    class NoSlots:
        async def take(self, provider, ceiling, first=None, *, within=None):
            raise TimeoutError

        async def give(self, provider, slot):
            raise AssertionError("nothing was taken")

    time = FakeTime()
    lim = limiter(4, 4, time)
    lim.fleet_slots = NoSlots()
    sent: list[int] = []

    async def send() -> str:
        sent.append(1)
        return "ok"

    with pytest.raises(perr.RateLimited) as info:
        await lim.call("p", send, deadline=time.now + 100)
    assert info.value.status is None and sent == []
    state = lim.snapshot()["p"]
    assert (state.limit, state.paused_for, state.refused_at) == (4, 0.0, None)


# a 429 whose pause ends inside the retry window is raised as the provider's
# own answer (the circuit breaker counts it), not turned into the limiter's unsent refusal.
async def test_a_429_too_close_to_the_deadline_is_raised_as_the_providers_answer() -> None:
    time = FakeTime()
    lim = limiter(4, 4, time)
    busy = rate_limited(retry_after=15.0)

    async def refused() -> str:
        raise busy

    with pytest.raises(perr.RateLimited) as info:
        await lim.call("p", refused, deadline=time.now + 15 + RETRY_MIN_WINDOW - 1)
    assert info.value is busy and info.value.status == 429


# 429s of calls sent under the same limit cut it once, not once each.
async def test_429s_of_calls_sent_under_one_limit_cut_it_only_once() -> None:
    time = FakeTime()
    lim = limiter(4, 4, time)
    gate, started = asyncio.Event(), []

    async def refused_later() -> str:
        started.append(1)
        await gate.wait()
        raise rate_limited(retry_after=1.0)

    others = HeldCalls()
    refusing = [asyncio.ensure_future(lim.call("p", refused_later, deadline=time.now + 20)) for _ in range(2)]
    held = others.send(lim, 2)
    await settle(lambda: len(started) == 2 and others.started == 2)
    gate.set()
    await asyncio.gather(*refusing, return_exceptions=True)
    # The first cut halves 4 to 2; the second 429 only caps it below the 3 then in flight (2).
    assert lim.limit("p") == 2
    others.gate.set()
    await asyncio.gather(*held)


# a later 429 with a shorter Retry-After does not shorten a pause in force.
def test_a_shorter_retry_after_does_not_shorten_the_pause_in_force() -> None:
    time = FakeTime()
    lim = limiter(4, 4, time)
    lim.observe_refusal("p", 10.0)
    lim.observe_refusal("p", 1.0)
    assert lim.snapshot()["p"].paused_for == 10.0


# the level that drew a 429 is remembered for exactly REMEMBER_REFUSAL_SECONDS.
async def test_the_refused_level_is_forgotten_after_exactly_the_remembered_time() -> None:
    time = FakeTime()
    lim = limiter(4, 4, time)

    async def refused() -> str:
        raise rate_limited(retry_after=1.0)

    with pytest.raises(perr.RateLimited):
        await lim.call("p", refused, deadline=time.now + 20)
    assert lim.snapshot()["p"].refused_at == 1
    time.now += REMEMBER_REFUSAL_SECONDS - 0.5
    assert lim.snapshot()["p"].refused_at == 1
    time.now += 0.5
    assert lim.snapshot()["p"].refused_at is None


# a 429 seen on the wire when no call went out since the last cut does not
# cut again (an adapter's own retries of the same call).
async def test_a_watched_429_with_no_call_sent_since_the_last_cut_does_not_cut_again() -> None:
    time = FakeTime()
    lim = limiter(8, 8, time)
    calls, held = await held_calls(lim, 4, 4)
    lim.observe_refusal("p", 1.0)  # 4 in flight: cut to min(8 * 0.5, 4 - 1) = 3
    assert lim.limit("p") == 3
    lim.observe_refusal("p", 1.0)  # the same calls, retried by the adapter
    assert lim.limit("p") == 3
    calls.gate.set()
    await asyncio.gather(*held)
