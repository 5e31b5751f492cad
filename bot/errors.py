"""Domain errors and the one place that turns any failure into the short text a user sees (the
sentences themselves are in `bot.messages`).

Every message says what happened and what to do next. None of them ever includes exception text,
provider bodies, URLs or headers: those go to the log under a reference id.
"""

from __future__ import annotations

import secrets

from bot import messages
from bot.providers import errors as perr


class RetouchError(Exception):
    """A failure the user caused or can act on. `user_message` is safe to show as is."""

    def __init__(self, user_message: str, *, code: str = "error") -> None:
        super().__init__(user_message)
        self.user_message = user_message
        self.code = code


class InvalidImage(RetouchError):
    """An uploaded file is not an image we accept (type, size, pixels, animation, corruption)."""


class InvalidMask(RetouchError):
    """A mask cannot be used (nothing marked, everything marked, unreadable)."""


class InvalidOptions(RetouchError):
    """A combination of command options cannot be served (prompt too long, unknown model, …)."""


class InsufficientCredits(RetouchError):
    """The member's balance cannot hold the edit's worst case; nothing was held."""

    def __init__(self, needed: int, available: int) -> None:
        super().__init__(messages.insufficient_credits(needed, available), code="insufficient_credits")
        self.needed = needed
        self.available = available


class ShuttingDown(RetouchError):
    """The bot is draining for a restart and takes no new edits."""

    def __init__(self) -> None:
        super().__init__(messages.SHUTTING_DOWN, code="shutting_down")


def new_reference() -> str:
    """A short id that ties a user-visible error to its log line."""
    return secrets.token_hex(3)


# The first kind `exc` is an instance of decides (a subclass must come before its base).
_PROVIDER_TEXTS: tuple[tuple[type[perr.ProviderError], str], ...] = (
    (perr.ProviderRejected, messages.PROVIDER_REFUSED),
    (perr.InvalidInput, messages.PROVIDER_INVALID_INPUT),
    (perr.ModelUnavailable, messages.PROVIDER_MODEL_UNAVAILABLE),
    (perr.RateLimited, messages.PROVIDER_BUSY),
    (perr.ServiceUnavailable, messages.PROVIDER_UNAVAILABLE),
    (perr.ProviderTimeout, messages.PROVIDER_TIMEOUT),
    (perr.ProviderJobFailed, messages.PROVIDER_JOB_FAILED),
)


def message_for_provider_error(exc: perr.ProviderError) -> str:
    """User text for a provider failure. Credits are always released before this is shown."""
    for kind, text in _PROVIDER_TEXTS:
        if isinstance(exc, kind):
            return text
    # ServerError, ConnectionFailed and anything else from the provider layer.
    return messages.PROVIDER_FAILED
