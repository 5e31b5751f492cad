"""Concurrency: how many calls each provider gets at once, whose queued job starts next, and how often a
waiting job's place in line is shown again.

* `ProviderLimiter` keeps one adaptive limit per provider (AIMD, like TCP's congestion window): it starts from
  `START_CONCURRENCY`, grows by about one call per full round of calls that succeed while the limit is in use,
  and is cut (×`DECREASE_FACTOR`, once per round) when the provider answers 429. The number of calls in flight
  when the 429 came is remembered for `REMEMBER_REFUSAL_SECONDS` and caps growth just below it, so the limit
  settles where the provider stops refusing instead of see-sawing; after that it probes again (an account may
  have moved up a tier). New calls to a provider that answered 429 wait until its `Retry-After` (or a doubling
  back-off when it gave none), and a refused call is sent again to the same provider when that wait leaves
  time before the job's deadline: a 429 means the provider did not take the job, so nothing paid is sent
  twice. Otherwise the 429 is raised and routing may try another provider. `<PROVIDER>_MAX_CONCURRENT` (else
  `MAX_CONCURRENT_JOBS`) is a hard ceiling the limit never passes. It is the account's, so the live processes
  on one PostgreSQL split it (`share_with`, counted by bot.sharding): each takes floor(ceiling / processes),
  and the first ceiling mod processes of them one call more, by their `rank` in an order every process sees
  alike (their names sorted, bot.sharding), so the parts add up to the ceiling: 4 over 3 processes is 2, 1, 1.
  Never fewer than one call, so every process's queue moves. On top of the parts, each call on PostgreSQL (a
  process alone included, so one that joins it finds its calls counted) takes one of the ceiling's numbered
  slots, shared through the database (`fleet_slots`, bot.storage.fleet_slots; each process tries its own part
  of them first, `first_slot`), and waits for one to come free, up to its deadline like any wait here: so the
  fleet never passes the ceiling, not while it changes and not with more processes than the ceiling. A process
  told no rank takes no extra call, so none is taken twice. Each process hears a change of the fleet on its
  own (bot.sharding: at once through PostgreSQL's NOTIFY when a process joins or leaves, else at its next
  round), so the parts add up right only once all have: when a process joins, the ranks after its name shift
  and every part shrinks or stays, and until the others have heard (milliseconds; a round if the notification
  is lost) the newcomer's calls wait for slots the others' calls in flight still hold. When a process dies or
  leaves, every part grows or stays (its slots come free with its connection). Without the database (SQLite:
  one process) there are no slots and none are needed. (Ranked by age instead, a process starting its drain
  moves to the end of the order, which would shift every part.)
* `FairTurns` is the engine's queue order: servers take turns, and inside a server its members do,
  so one member's burst cannot starve anyone.
* `FeedbackThrottle` decides which "Queued — position N" edits go out: only changed text, each job at
  most every `QUEUE_FEEDBACK_MIN_SECONDS`, all jobs together at most `QUEUE_FEEDBACK_PER_SECOND`, new
  jobs and the front of the queue first. Without it every job that starts would re-edit every waiting
  job's message (500 waiting jobs: 500 edits per start).

Nothing here knows about Discord. Clocks (and the limiter's sleep) are injectable for tests. The
module is over 400 lines on purpose: its parts answer one question together — how many edits run at
once, which ones, and what the waiting ones are shown — and each part is a small class of its own.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Collection, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar
from urllib.parse import urlsplit

import aiohttp

from bot.providers import errors as perr
from bot.providers.http import parse_retry_after

if TYPE_CHECKING:
    from bot.config import Settings

log = logging.getLogger(__name__)

# Calls in flight a provider starts with (before any 429 taught us better); capped by its ceiling.
START_CONCURRENCY = {
    # OpenAI limits images per minute by usage tier (about 5 on tier 1 to 250 on tier 5, third-party
    # reports), not calls at once: start generous and let its 429s say where the account's level is.
    "openai": 32,
    # WaveSpeed's entry tier (Bronze, every new account) runs 3 tasks at once; Silver runs 100.
    "wavespeed": 3,
    # Atlas Cloud, Segmind and 1min.ai publish no limits (providers.md: OPEN): a cautious middle.
    "atlascloud": 8,
    "segmind": 8,
    "oneminai": 4,
}
DEFAULT_START = 8  # a provider the table does not name
UNLIMITED = 1_000_000  # a provider nobody configured a limit for (a Router built without settings)
DECREASE_FACTOR = 0.5  # the cut on a 429, once per round of calls
REMEMBER_REFUSAL_SECONDS = 300.0  # how long the level that drew a 429 caps growth before probing again
BACKOFF_SECONDS = 1.0  # pause after a 429 without Retry-After; doubles per cut without a success between
BACKOFF_CAP_SECONDS = 30.0
# The least wait after a 429 that came with a Retry-After, as a fraction of the backoff without one.
RETRY_AFTER_FLOOR = 0.25
RETRY_MIN_WINDOW = 30.0  # a call sent again after a 429 needs this long before its deadline

QUEUE_FEEDBACK_MIN_SECONDS = 5.0  # one waiting job's line is edited at most this often
QUEUE_FEEDBACK_PER_SECOND = 20.0  # queue edits per second, all waiting jobs together
QUEUE_FEEDBACK_BURST = 40  # ... and at most this many at once (a burst of new jobs)

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


# --------------------------------------------------------------------------- adaptive limits


@dataclass(frozen=True)
class LimitState:
    """One provider's limit as `/diagnose` and `/metrics` show it."""

    provider: str
    limit: int  # calls allowed in flight now
    ceiling: int | None  # the hard ceiling (None: none configured)
    in_flight: int
    paused_for: float = 0.0  # seconds until new calls may go (a 429's Retry-After), 0 when not paused
    refused_at: int | None = None  # calls in flight when the provider last answered 429 (remembered)


class _Provider:
    """The mutable state behind one provider's limit."""

    def __init__(self, start: int, ceiling: int | None) -> None:
        self.ceiling = ceiling
        self.limit = float(max(1, min(start, ceiling or start)))
        self.in_flight = 0
        self.epoch = 0  # bumped by every cut: a 429 from a call sent before it does not cut again
        self.sent_since_cut = 0  # ... nor does a 429 seen on the wire when no call was sent since
        self.backoff_level = 0  # cuts since the last success (doubles the pause without Retry-After)
        self.paused_until = 0.0
        self.refused_at: int | None = None
        self.refused_time = 0.0
        self.waiters: list[asyncio.Future[None]] = []
        self.share = 1  # live processes calling this provider with the same account (`share_with`)
        self.rank: int | None = None  # this process's place among them (None: not told, no extra call)
        self.slot_waits = 0  # calls holding a place here but still waiting for a fleet slot (not sent)

    @property
    def allowed(self) -> int:
        learned = max(1, math.floor(self.limit + 1e-9))
        if self.ceiling is None or self.share <= 1:
            return learned
        # The ceiling is the account's, so the live processes split it; what this process learned from
        # its own 429s (already below its part) stays its own.
        return min(learned, ceiling_part(self.ceiling, self.share, self.rank))


def ceiling_part(ceiling: int, processes: int, rank: int | None) -> int:
    """The calls at once process number `rank` (0-based) of `processes` may make of an account's
    `ceiling`: an even part, and one more for the first `ceiling mod processes` ranks, so the parts add
    up to the ceiling; never fewer than one. Without a rank (or with one outside the fleet) no extra
    call: a process that does not know its place must not take one another process may be taking."""
    base, extra = divmod(ceiling, max(1, processes))
    bonus = 1 if rank is not None and 0 <= rank < extra else 0
    return max(1, base + bonus)


def first_slot(ceiling: int, processes: int, rank: int | None) -> int | None:
    """Where process `rank`'s share of a ceiling's slots starts: the parts (`ceiling_part`) laid end
    to end in rank order, so a process's first try is a slot no other process tries first, and in a
    steady fleet every take succeeds at once. None without a rank (anywhere will do)."""
    if rank is None:
        return None
    # With more processes than the ceiling every part is one call and the slots go round the ranks.
    return sum(ceiling_part(ceiling, processes, before) for before in range(rank)) % ceiling


class SlotSource(Protocol):
    """A ceiling's numbered slots shared by every process (bot.storage.fleet_slots.FleetSlots)."""

    async def take(
        self, provider: str, ceiling: int, first: int | None = None, *, within: float | None = None
    ) -> int | None: ...
    def give(self, provider: str, slot: int) -> Awaitable[None]: ...


class ProviderLimiter:
    """Adaptive per-provider limits on calls in flight (see the module docstring).

    `limits` maps provider → (start, ceiling); a provider it does not name is unlimited until it
    answers 429. `clock`/`sleep` are injectable; a `deadline` passed to `call` is on `clock`'s scale
    (`time.monotonic`, like `EditRequest.deadline`). `fleet_slots` (set by the app with PostgreSQL)
    holds a ceiling across more processes than it has calls.
    """

    def __init__(
        self,
        limits: Mapping[str, tuple[int, int | None]] | None = None,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._providers = {
            name: _Provider(start, ceiling) for name, (start, ceiling) in (limits or {}).items()
        }
        self.fleet_slots: SlotSource | None = None
        self._returning: set[asyncio.Future[None]] = set()  # fleet slots on their way back (`_give_back`)

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: object) -> ProviderLimiter:
        """Every configured provider: its `START_CONCURRENCY`, under `<PREFIX>_MAX_CONCURRENT` (or,
        when that is 0, `MAX_CONCURRENT_JOBS`) as its ceiling."""
        limits = {}
        for p in settings.providers:
            ceiling = p.max_concurrent or settings.max_concurrent_jobs
            limits[p.name] = (min(START_CONCURRENCY.get(p.name, DEFAULT_START), ceiling), ceiling)
        return cls(limits, **kwargs)  # type: ignore[arg-type]

    @classmethod
    def fixed(cls, limits: Mapping[str, int], **kwargs: object) -> ProviderLimiter:
        """Limits that start at their ceiling (the old fixed caps); 429s can still lower them."""
        return cls({name: (n, n) for name, n in limits.items() if n > 0}, **kwargs)  # type: ignore[arg-type]

    def share_with(self, processes: int, rank: int | None = None) -> None:
        """`processes` live processes (this one included) call the providers with the same accounts:
        each gets its part of every provider's ceiling (`ceiling_part`), this one as number `rank` in
        an order every process sees alike (bot.sharding reports both each round). Without `rank` this
        process takes no share of the remainder."""
        share = max(1, processes)
        for name, state in self._providers.items():
            before = state.allowed
            state.rank = rank
            if state.share != share:
                if state.ceiling is not None and share > state.ceiling:
                    self._warn_over(name, share, state.ceiling)
                state.share = share
            if state.allowed > before:
                self._wake(state)  # a process fewer, or a lower rank: this one's part grew

    def _warn_over(self, name: str, processes: int, ceiling: int) -> None:
        """More processes than `name`'s ceiling: each keeps one call so its own queue moves, and the
        fleet's slots (when there are any) hold the total."""
        held = (
            f"each call waits for one of its {ceiling} slots shared through the database"
            if self.fleet_slots is not None
            else f"each still makes one, so up to {processes} reach it together"
        )
        log.warning(
            "%d processes share %s's ceiling of %d calls at once: %s (raise %s's ceiling or run fewer "
            "processes)",
            processes,
            name,
            ceiling,
            held,
            name,
        )

    # -- reading -------------------------------------------------------------------------------------

    def limit(self, provider: str) -> int:
        """Calls `provider` may have in flight now."""
        return self._state(provider).allowed

    def snapshot(self, providers: Iterable[str] | None = None) -> dict[str, LimitState]:
        """{provider: LimitState} for `providers` (default: every provider with state)."""
        now = self._clock()
        names = list(self._providers) if providers is None else list(providers)
        out = {}
        for name in names:
            s = self._state(name)
            self._forget_old_refusal(s, now)
            out[name] = LimitState(
                provider=name,
                limit=s.allowed,
                ceiling=s.ceiling,
                in_flight=s.in_flight - s.slot_waits,  # at the provider: not those waiting for a slot
                paused_for=max(0.0, s.paused_until - now),
                refused_at=s.refused_at,
            )
        return out

    def capacity(self, providers: Iterable[str]) -> int:
        """Calls all of `providers` together may have in flight now (what the engine admits)."""
        return sum(self._state(name).allowed for name in providers)

    # -- calling -------------------------------------------------------------------------------------

    async def call(
        self,
        provider: str,
        send: Callable[[], Awaitable[T]],
        *,
        deadline: float | None = None,
        may_go_elsewhere: bool = True,
    ) -> T:
        """Run `send()` within `provider`'s limit; after a 429 the provider did not accept, wait and send
        again while the wait leaves `RETRY_MIN_WINDOW` before `deadline`, else raise the 429.

        `may_go_elsewhere`: the job can still go to another provider, so a call that cannot get past a
        pause or get a slot in time is refused unsent. False for a job a provider already has (its
        polls after a restart): those wait their turn, since nothing else can finish that job."""
        state = self._state(provider)
        refuse_after = deadline if may_go_elsewhere else None
        while True:
            epoch, full = await self._acquire(provider, state, refuse_after)
            slot: int | None = None
            try:
                slot = await self._fleet_slot(provider, state, refuse_after)
                result = await send()
            except perr.RateLimited as exc:
                if exc.accepted or exc.status is None:  # taken, or this limiter's own refusal
                    raise
                self._refused(provider, state, epoch == state.epoch, exc.retry_after)
                resume_at = state.paused_until
                if deadline is not None and resume_at + RETRY_MIN_WINDOW > deadline:
                    raise
                log.info(
                    "%s answered 429 (%d in flight); sending again in %.1f s",
                    provider,
                    state.in_flight,
                    resume_at - self._clock(),
                )
                continue
            else:
                self._succeeded(state, full)
                return result
            finally:
                # The fleet slot's give starts before a woken call's take can: that take finds it free.
                if slot is not None:
                    self._give_back(provider, slot)
                state.in_flight -= 1
                self._wake(state)

    def _give_back(self, provider: str, slot: int) -> None:
        """Hand a fleet slot back without holding up the call that used it. Awaited, the database round
        trip came after the result was in hand, inside the job's deadline-checked call: a check landing
        during it past the deadline ended the job as a timeout, the paid image with it. The slot stays
        taken in the database until the give is done, so the fleet still never passes the ceiling."""
        if self.fleet_slots is None:
            return
        giving = asyncio.ensure_future(self.fleet_slots.give(provider, slot))
        self._returning.add(giving)  # kept until done: the loop holds tasks only weakly
        giving.add_done_callback(self._given_back)

    def _given_back(self, giving: asyncio.Future[None]) -> None:
        self._returning.discard(giving)
        if not giving.cancelled() and (exc := giving.exception()) is not None:
            log.warning("giving a fleet-wide slot back failed: %s", type(exc).__name__)

    async def returned(self) -> None:
        """Wait until every fleet slot a finished call handed back is back in the database."""
        while self._returning:
            await asyncio.gather(*self._returning, return_exceptions=True)

    async def _fleet_slot(self, provider: str, state: _Provider, refuse_after: float | None) -> int | None:
        """On a shared database, one of `provider`'s slots across the fleet (waited for, until
        `refuse_after`: then refused unsent, so routing may try another provider). In a steady fleet
        the parts alone keep the total within the ceiling and the slot is free at once; the slots are
        what hold it while the fleet changes (a process joining takes its part at once, before the
        others have shrunk theirs) and when a part would be under one call (more processes than the
        ceiling). A process alone takes them too: one that joins it must find its calls counted."""
        if self.fleet_slots is None or state.ceiling is None:
            return None
        state.slot_waits += 1
        try:
            first = first_slot(state.ceiling, state.share, state.rank)
            # As for this process's own slots (a free one is still taken at once).
            within = self._may_wait(refuse_after)
            try:
                return await self.fleet_slots.take(provider, state.ceiling, first, within=within)
            except TimeoutError:
                raise perr.unsent_rate_limit(provider, "no fleet-wide slot free in time") from None
        finally:
            state.slot_waits -= 1

    async def _acquire(self, provider: str, state: _Provider, deadline: float | None) -> tuple[int, bool]:
        """Wait for the pause to end and a free slot; take it. Returns the epoch it was taken in and
        whether it took the last free slot (the limit was in use).

        A wait that would leave less than RETRY_MIN_WINDOW before `deadline` is not waited: nothing was
        sent, so a `RateLimited` (not accepted) lets routing try the next provider at once, where the
        job would otherwise sit out this provider's pause or queue and time out unsent."""
        while True:
            now = self._clock()
            if state.paused_until > now:
                if deadline is not None and state.paused_until + RETRY_MIN_WINDOW > deadline:
                    self._wake(state)  # a slot this call was woken for goes to the next waiter
                    raise perr.unsent_rate_limit(provider, "paused after a 429", state.paused_until - now)
                try:
                    await self._sleep(state.paused_until - now)
                except asyncio.CancelledError:
                    self._wake(state)
                    raise
                continue
            if state.in_flight < state.allowed:
                state.in_flight += 1
                state.sent_since_cut += 1
                return state.epoch, state.in_flight >= state.allowed
            await self._wait_for_slot(provider, state, deadline)

    def _may_wait(self, deadline: float | None) -> float | None:
        """Seconds a call may wait for a slot and still leave RETRY_MIN_WINDOW before `deadline` to
        run (zero or less: none); None without a deadline."""
        return None if deadline is None else deadline - RETRY_MIN_WINDOW - self._clock()

    async def _wait_for_slot(self, provider: str, state: _Provider, deadline: float | None) -> None:
        """Wait to be woken for a free slot, for as long as `deadline` leaves (then refused unsent).

        The waiter itself is what times out (its timer sets TimeoutError on it): a task cancelled just
        after being woken must see its cancel, never have it swallowed and go on to send."""
        loop = asyncio.get_running_loop()
        left = self._may_wait(deadline)
        if left is not None and left <= 0:
            raise perr.unsent_rate_limit(provider, "no free slot", None)
        waiter = loop.create_future()
        state.waiters.append(waiter)

        def expire() -> None:
            if not waiter.done():
                state.waiters.remove(waiter)
                waiter.set_exception(TimeoutError())

        timer = loop.call_later(left, expire) if left is not None else None
        try:
            await waiter
        except TimeoutError:
            raise perr.unsent_rate_limit(provider, "no free slot", None) from None
        except asyncio.CancelledError:
            if waiter in state.waiters:
                state.waiters.remove(waiter)
            else:  # woken, then cancelled: pass the free slot on
                self._wake(state)
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _wake(self, state: _Provider) -> None:
        """Let waiters re-check (oldest first) for as many slots as are free."""
        free = state.allowed - state.in_flight
        for waiter in list(state.waiters[: max(0, free)]):
            state.waiters.remove(waiter)
            if not waiter.done():
                waiter.set_result(None)

    # -- adapting ------------------------------------------------------------------------------------

    def _succeeded(self, state: _Provider, took_last_slot: bool) -> None:
        state.backoff_level = 0
        if not (took_last_slot or state.waiters or state.in_flight >= state.allowed):
            return  # the limit was not in use: a success says nothing about a higher one
        self._forget_old_refusal(state, self._clock())
        top = state.ceiling or UNLIMITED
        if state.refused_at is not None:
            # Back up to just below the level that drew the 429, quickly; no further until it is forgotten.
            top = min(top, max(1, state.refused_at - 1))
            if state.limit < top:
                state.limit = min(float(top), state.limit + 1)
            return
        state.limit = min(float(top), state.limit + 1 / state.limit)

    def observe_refusal(self, provider: str, retry_after: float | None) -> None:
        """A 429 from `provider` seen on the wire (`RateLimitWatch`), e.g. one its adapter retries by
        itself: learn from it as from a refused call."""
        state = self._state(provider)
        self._refused(provider, state, state.sent_since_cut > 0, retry_after)

    def _refused(self, provider: str, state: _Provider, cut: bool, retry_after: float | None) -> None:
        now = self._clock()
        self._forget_old_refusal(state, now)
        level = state.in_flight  # calls out at the provider when it refused, this one included
        before = state.allowed
        if level > 0:  # (none: a request outside any call, e.g. a cancel, says nothing about calls at once)
            state.refused_at = level if state.refused_at is None else min(state.refused_at, level)
            state.refused_time = now
            below = float(max(1, state.refused_at - 1))
            if cut:  # the first 429 of calls sent under the current limit: one cut
                state.epoch += 1
                state.sent_since_cut = 0
                state.backoff_level += 1
                state.limit = max(1.0, min(state.limit * DECREASE_FACTOR, below))
            else:
                state.limit = max(1.0, min(state.limit, below))
        backoff = min(BACKOFF_CAP_SECONDS, BACKOFF_SECONDS * 2 ** max(0, state.backoff_level - 1))
        if retry_after is not None and retry_after >= 0:
            # The provider's hint, but never less than a floor that doubles like the backoff: a hint of
            # 0 (or a reset time already past) would otherwise have the call sent again in a tight loop.
            wait = max(retry_after, backoff * RETRY_AFTER_FLOOR)
        else:
            wait = backoff
        state.paused_until = max(state.paused_until, now + wait)
        if state.allowed != before:
            log.warning(
                "%s answered 429 with %d calls in flight: limit %d -> %d, new calls paused %.1f s",
                provider,
                level,
                before,
                state.allowed,
                wait,
            )

    def _forget_old_refusal(self, state: _Provider, now: float) -> None:
        if state.refused_at is not None and now - state.refused_time >= REMEMBER_REFUSAL_SECONDS:
            state.refused_at = None

    def _state(self, provider: str) -> _Provider:
        state = self._providers.get(provider)
        if state is None:
            state = self._providers[provider] = _Provider(UNLIMITED, None)
        return state


# POSTs to a provider's host that are not edit calls (OpenAI's moderation, the free safety check).
NOT_EDIT_PATHS = ("/moderations",)


class RateLimitWatch:
    """Every 429 a provider answers on the shared HTTP session, seen as it arrives (an aiohttp trace).

    An adapter retries a paid call's 429 by itself when the wait is short (`http.send_paid`), so the
    limiter would otherwise learn of a refusal only when every retry failed, and keep a limit one
    above the provider's level. The watch is built with the session (before the limiter exists) and
    `attach`ed to the limiter once the services are built. Requests are matched to a provider by the
    origin of its configured URLs.
    """

    def __init__(self, origins: Mapping[str, str]) -> None:
        self._origins = {_origin(url): provider for url, provider in origins.items()}
        self._limiter: ProviderLimiter | None = None

    @classmethod
    def for_settings(cls, settings: Settings) -> RateLimitWatch:
        """Every configured provider's base URL (and Segmind's upload host)."""
        origins = {}
        for p in settings.providers:
            for url in (p.base_url, p.upload_url):
                if url:
                    origins[url] = p.name
        return cls(origins)

    def attach(self, limiter: ProviderLimiter) -> None:
        self._limiter = limiter

    def trace_config(self) -> aiohttp.TraceConfig:
        """The trace to pass to the providers' `aiohttp.ClientSession` (`trace_configs=[...]`)."""
        config = aiohttp.TraceConfig()
        config.on_request_end.append(self._on_request_end)
        return config

    def seen(self, method: str, url: str, status: int, headers: Mapping[str, str]) -> None:
        """One answer from `url`: a 429 to a POST (a submit or an upload) from a provider's host goes to
        the limiter. A GET's 429 (a poll, a download, a `/diagnose` check) is about request rates, which
        the HTTP helper's own retries handle, not about calls at once."""
        if status != 429 or method.upper() != "POST" or self._limiter is None:
            return
        if urlsplit(url).path.rstrip("/").endswith(NOT_EDIT_PATHS):
            return  # the free safety check: its own rate limit says nothing about edits at once
        provider = self._origins.get(_origin(url))
        if provider is not None:
            self._limiter.observe_refusal(provider, parse_retry_after(headers))

    async def _on_request_end(
        self, session: aiohttp.ClientSession, context: object, params: aiohttp.TraceRequestEndParams
    ) -> None:
        self.seen(params.method, str(params.url), params.response.status, params.response.headers)


def _origin(url: str) -> str:
    """`scheme://host:port` of `url` (default ports spelled out, so both spellings match)."""
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"


# --------------------------------------------------------------------------- fair turns


Member = tuple[int, int]  # (guild_id, user_id)


class FairTurns:
    """The engine's queue order: servers take turns, and inside a server its members do.

    Each member and server counts the jobs it started while it had work in the queue or running; a
    waiting job's turn is its member's count plus its place among that member's waiting jobs, and
    jobs go by turn, then by who started a job longest ago (never first), then by admission. A
    member or server that arrives starts level with the least-served one present, so having been
    idle earns no credit to jump the line later. With one member's 10 jobs waiting and another's
    single job, the single one goes next (or second, when the busy member has not had a turn yet).
    """

    def __init__(self) -> None:
        self._members: dict[Member, int] = {}
        self._guilds: dict[int, int] = {}
        self._last: dict[Member | int, int] = {}  # member or guild -> sequence number of its last start
        self._sequence = 0

    def started(self, guild_id: int, user_id: int) -> None:
        """A job of this member left the queue."""
        member = (guild_id, user_id)
        self._members[member] = self._members.get(member, 0) + 1
        self._guilds[guild_id] = self._guilds.get(guild_id, 0) + 1
        self._sequence += 1
        self._last[member] = self._last[guild_id] = self._sequence

    def order(self, entries: Iterable[tuple[K, int, int]], running: Iterable[Member] = ()) -> list[K]:
        """Keys of `(key, guild_id, user_id)` entries (in admission order) in the order they start;
        `running` names the member of each running job (they keep their counts)."""
        entries = list(entries)
        members = {(guild_id, user_id) for _, guild_id, user_id in entries} | set(running)
        self._forget_all_but(members)
        per_guild: dict[int, list[tuple[int, int, int, K]]] = {}
        seen: dict[Member, int] = {}
        for index, (key, guild_id, user_id) in enumerate(entries):
            member = (guild_id, user_id)
            turn = self._members[member] + seen.get(member, 0)
            seen[member] = seen.get(member, 0) + 1
            per_guild.setdefault(guild_id, []).append((turn, self._last.get(member, 0), index, key))
        ranked: list[tuple[int, int, int, K]] = []
        for guild_id, jobs in per_guild.items():
            jobs.sort(key=lambda job: job[:3])
            base, last = self._guilds[guild_id], self._last.get(guild_id, 0)
            ranked.extend((base + turn, last, index, key) for turn, (_, _, index, key) in enumerate(jobs))
        ranked.sort(key=lambda job: job[:3])
        return [key for *_, key in ranked]

    def _forget_all_but(self, members: set[Member]) -> None:
        """Drop members and servers with nothing waiting or running; newcomers start level with the
        least-served one present."""
        guilds = {guild_id for guild_id, _ in members}
        for member in [m for m in self._members if m not in members]:
            del self._members[member]
            self._last.pop(member, None)
        for guild_id in [g for g in self._guilds if g not in guilds]:
            del self._guilds[guild_id]
            self._last.pop(guild_id, None)
        member_floor = min(self._members.values(), default=0)
        guild_floor = min(self._guilds.values(), default=0)
        for member in members:
            self._members.setdefault(member, member_floor)
        for guild_id in guilds:
            self._guilds.setdefault(guild_id, guild_floor)


def fair_order(entries: Iterable[tuple[K, int, int]]) -> list[K]:
    """`FairTurns.order` with no history: the order a fresh queue would start `entries` in."""
    return FairTurns().order(entries)


# --------------------------------------------------------------------------- cheap queue feedback


class FeedbackThrottle(Generic[K, V]):
    """Which queued-job updates to send now (see the module docstring).

    `offer` the newest text per key; `due()` returns the values to send now (and counts them as
    sent); `next_in()` says how long until something more is due (None: nothing pending).
    """

    def __init__(
        self,
        *,
        min_interval: float = QUEUE_FEEDBACK_MIN_SECONDS,
        per_second: float = QUEUE_FEEDBACK_PER_SECOND,
        burst: int = QUEUE_FEEDBACK_BURST,
        clock: Clock = time.monotonic,
    ) -> None:
        if per_second <= 0 or burst < 1 or min_interval < 0:
            raise ValueError("per_second and burst must be positive, min_interval not negative")
        self.min_interval = min_interval
        self.per_second = per_second
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._refilled = clock()
        self._sent: dict[K, tuple[str, float]] = {}  # key -> (text, when)
        self._pending: dict[K, tuple[float, str, V]] = {}  # key -> (priority, text, value)

    def offer(self, key: K, text: str, value: V, *, priority: float = 0.0) -> None:
        """The newest update for `key` (replaces an unsent one); dropped when `text` is what was sent."""
        sent = self._sent.get(key)
        if sent is not None and sent[0] == text:
            self._pending.pop(key, None)
            return
        self._pending[key] = (priority, text, value)

    def retain(self, keys: Collection[K]) -> None:
        """Forget every key not in `keys` (jobs that left the queue)."""
        for store in (self._sent, self._pending):
            for key in [k for k in store if k not in keys]:
                del store[key]

    @property
    def pending(self) -> int:
        return len(self._pending)

    def due(self) -> list[V]:
        """The updates to send now: never-shown keys first, then by priority (lower first)."""
        now = self._refill()
        ready = [
            (key in self._sent, priority, seq, key)
            for seq, (key, (priority, _, _)) in enumerate(self._pending.items())
            if self._ready_at(key) <= now
        ]
        ready.sort(key=lambda item: item[:3])
        out = []
        for _, _, _, key in ready[: int(self._tokens)]:
            _, text, value = self._pending.pop(key)
            self._sent[key] = (text, now)
            self._tokens -= 1
            out.append(value)
        return out

    def next_in(self) -> float | None:
        """Seconds until `due()` would return something (0: now), None when nothing is pending."""
        if not self._pending:
            return None
        now = self._refill()
        earliest = min(self._ready_at(key) for key in self._pending)
        token_wait = 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.per_second
        return max(0.0, earliest - now, token_wait)

    def _ready_at(self, key: K) -> float:
        sent = self._sent.get(key)
        return float("-inf") if sent is None else sent[1] + self.min_interval

    def _refill(self) -> float:
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._refilled) * self.per_second)
        self._refilled = now
        return now
