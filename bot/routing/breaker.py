"""The circuit breaker: a provider that keeps failing is skipped for a cool-down, then tried once.

With PostgreSQL several processes share the database, and an opened circuit holds for all of them: once
a lease round (bot/jobs/leases.py) each breaker hands over the circuits it opened or closed since the
last round and reads every other process's (`share`, over `Storage.circuits`). A circuit opened
elsewhere is open here until the same moment; then each process lets its own one trial call through,
and the first success closes the circuit everywhere (its row is deleted). Calls never wait for the
database: `allow` and `record` only read and write memory; a circuit that opens or closes here tells
`on_change`, and the job engine then shares it at once instead of at its next round, so the other
processes honour it from their next round on. With SQLite (one process) nothing is shared.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Protocol

from bot.providers import errors as perr

log = logging.getLogger(__name__)

BREAKER_THRESHOLD = 3  # consecutive failures that open a provider's circuit
BREAKER_COOLDOWN = 60.0  # seconds an open circuit skips its provider before one trial call

CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"


# --------------------------------------------------------------------------- circuit breaker


class SharedCircuits(Protocol):
    """Where processes on one database meet (bot.storage.circuits.Circuits)."""

    async def exchange(self, opened: Mapping[str, float], closed: Collection[str]) -> dict[str, float]:
        """Record circuits opened ({provider: seconds still open}) and closed here; every open one."""
        ...


@dataclass
class _Circuit:
    failures: int = 0
    opened_at: float | None = None
    trial: bool = False


class CircuitBreaker:
    """Skips a provider after `threshold` consecutive failures, for `cooldown` seconds.

    After the cool-down one trial call is let through (half-open); its success closes the circuit,
    its failure opens it for another cool-down. Opening and closing are logged. `clock` is
    injectable so tests need no sleeps.
    """

    def __init__(
        self,
        *,
        threshold: int = BREAKER_THRESHOLD,
        cooldown: float = BREAKER_COOLDOWN,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if threshold < 1 or cooldown < 0:
            raise ValueError("threshold must be at least 1 and cooldown not negative")
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self._circuits: dict[str, _Circuit] = {}
        self._changed: set[str] = set()  # opened or closed here since the last `share`
        # Called (synchronously) when a circuit opens or closes here: the engine shares it soon.
        self.on_change: Callable[[], None] | None = None

    def _mark_changed(self, provider: str) -> None:
        self._changed.add(provider)
        if self.on_change is not None:
            self.on_change()

    def _circuit(self, provider: str) -> _Circuit:
        return self._circuits.setdefault(provider, _Circuit())

    def state(self, provider: str) -> str:
        """closed, half_open (cooled down, or its trial call is running) or open."""
        c = self._circuit(provider)
        if c.opened_at is None:
            return CLOSED
        if c.trial or self._clock() - c.opened_at >= self.cooldown:
            return HALF_OPEN
        return OPEN

    def states(self) -> dict[str, str]:
        """Every provider seen so far and its state (for metrics)."""
        return {name: self.state(name) for name in self._circuits}

    def allow(self, provider: str) -> bool:
        """May a call go to `provider` now? Taking the half-open trial slot counts as a call."""
        c = self._circuit(provider)
        if c.opened_at is None:
            return True
        if c.trial or self._clock() - c.opened_at < self.cooldown:
            return False
        c.trial = True
        log.info("circuit for %s is half-open: letting one trial call through", provider)
        return True

    def record(self, provider: str, healthy: bool | None) -> None:
        """The outcome of a call that `allow` let through: True worked, False failed, None no verdict."""
        c = self._circuit(provider)
        was_trial, c.trial = c.trial, False
        if healthy is None:
            return  # e.g. cancelled, or an answer that says nothing about health: free the slot only
        if healthy:
            if c.opened_at is not None:
                log.warning("circuit for %s closed: it answered again", provider)
                self._mark_changed(provider)
            c.failures, c.opened_at = 0, None
            return
        c.failures += 1
        if was_trial:
            c.opened_at = self._clock()
            self._mark_changed(provider)
            log.warning(
                "circuit for %s re-opened: the trial call failed; skipping it for %.0f s",
                provider,
                self.cooldown,
            )
        elif c.opened_at is None and c.failures >= self.threshold:
            c.opened_at = self._clock()
            self._mark_changed(provider)
            log.warning(
                "circuit for %s opened after %d consecutive failures; skipping it for %.0f s",
                provider,
                c.failures,
                self.cooldown,
            )

    async def share(self, shared: SharedCircuits) -> None:
        """Hand the circuits opened or closed here since the last call to the other processes, then
        take theirs: one opened elsewhere is open here until the same moment, one closed elsewhere
        (its row gone) closes here. A circuit that changed here meanwhile keeps this process's view.
        When the exchange fails, the opens are handed over next time, the closes never."""
        changed, self._changed = self._changed, set()
        opened: dict[str, float] = {}
        for provider in changed:
            opened_at = self._circuits[provider].opened_at
            if opened_at is not None:  # seconds until it lets a trial call through
                opened[provider] = opened_at + self.cooldown - self._clock()
        try:
            rows = await shared.exchange(opened, changed - opened.keys())
        except BaseException:
            # An open is handed over next time (the stored row keeps the later end of two). A close is
            # dropped: replayed later it would delete whatever open another process stored meanwhile, and
            # every process would close a circuit whose provider is failing again. Dropped, it only leaves
            # the others their open until it ends and their own trial call: the safe side.
            self._changed |= opened.keys()
            raise
        for provider in (rows.keys() | self._circuits.keys()) - self._changed:
            self._adopt(provider, rows.get(provider))

    def _adopt(self, provider: str, remaining: float | None) -> None:
        """Another process's view of `provider`: None no open circuit, else seconds it stays open."""
        c = self._circuit(provider)
        if remaining is None:
            if c.opened_at is not None:
                log.warning("circuit for %s closed: it answered another process", provider)
                c.failures, c.opened_at, c.trial = 0, None, False
            return
        if remaining <= 0 or c.trial:
            return  # its open period is over: the trial call is each process's own
        opened_at = self._clock() + remaining - self.cooldown
        if c.opened_at is None or opened_at > c.opened_at:
            if self.state(provider) == CLOSED:
                log.warning(
                    "circuit for %s opened by another process; skipping it for %.0f s", provider, remaining
                )
            c.opened_at = opened_at


def _verdict(exc: perr.ProviderError) -> bool | None:
    """What a failure says about the provider's health."""
    if isinstance(exc, perr.ProviderRejected | perr.InvalidInput):
        # An answer refusing the input shows the provider works; a refusal made locally by the
        # adapter (no status: nothing was sent) shows nothing either way.
        return True if exc.status is not None else None
    if isinstance(exc, perr.ModelUnavailable):
        return None  # one model is missing; the provider may be fine
    if isinstance(exc, perr.RateLimited) and exc.status is None:
        return None  # the limiter's own refusal (bot.concurrency): nothing reached the provider
    # A provider's 429 to a call it did not take gets here only when the limiter gave up on it (the
    # wait it asked for outlasts the job), so it counts: jobs after it go elsewhere without each
    # spending a call to learn that. One to a job it had taken (a poll) is a failure like any other.
    return False
