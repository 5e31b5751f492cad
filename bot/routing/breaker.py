"""The circuit breaker: a provider that keeps failing is skipped for a cool-down, then tried once."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from bot.providers import errors as perr

log = logging.getLogger(__name__)

BREAKER_THRESHOLD = 3  # consecutive failures that open a provider's circuit
BREAKER_COOLDOWN = 60.0  # seconds an open circuit skips its provider before one trial call

CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"


# --------------------------------------------------------------------------- circuit breaker


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
            c.failures, c.opened_at = 0, None
            return
        c.failures += 1
        if was_trial:
            c.opened_at = self._clock()
            log.warning(
                "circuit for %s re-opened: the trial call failed; skipping it for %.0f s",
                provider,
                self.cooldown,
            )
        elif c.opened_at is None and c.failures >= self.threshold:
            c.opened_at = self._clock()
            log.warning(
                "circuit for %s opened after %d consecutive failures; skipping it for %.0f s",
                provider,
                c.failures,
                self.cooldown,
            )


def _verdict(exc: perr.ProviderError) -> bool | None:
    """What a failure says about the provider's health."""
    if isinstance(exc, perr.ProviderRejected | perr.InvalidInput):
        # An answer refusing the input shows the provider works; a refusal made locally by the
        # adapter (no status: nothing was sent) shows nothing either way.
        return True if exc.status is not None else None
    if isinstance(exc, perr.ModelUnavailable):
        return None  # one model is missing; the provider may be fine
    return False
