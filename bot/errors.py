"""Domain errors and the one place that turns any failure into the short text a user sees.

Every message says what happened and what to do next. None of them ever includes exception text,
provider bodies, URLs or headers: those go to the log under a reference id.
"""

from __future__ import annotations

import secrets

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
        super().__init__(
            f"This edit needs up to **{needed}** credits but you have **{available}** available. "
            "Try a lower quality, fewer images, or ask an admin for credits.",
            code="insufficient_credits",
        )
        self.needed = needed
        self.available = available


class ShuttingDown(RetouchError):
    """The bot is draining for a restart and takes no new edits."""

    def __init__(self) -> None:
        super().__init__(
            "Retouch is restarting and not taking new edits right now. Please try again in a minute.",
            code="shutting_down",
        )


def new_reference() -> str:
    """A short id that ties a user-visible error to its log line."""
    return secrets.token_hex(3)


# What a member reads for each kind of provider failure, most specific first (the first match wins).
_PROVIDER_ERROR_TEXTS: tuple[tuple[type[perr.ProviderError], str], ...] = (
    (
        perr.ProviderRejected,
        "The image service's safety system refused this request. Try rephrasing the prompt "
        "or using a different image. You were not charged.",
    ),
    (
        perr.InvalidInput,
        "The image service could not use this image or option. Try a different image (PNG or JPEG) "
        "or other options. You were not charged.",
    ),
    (
        perr.ModelUnavailable,
        "That model is not available from the image service right now. Pick another model. "
        "You were not charged.",
    ),
    (
        perr.RateLimited,
        "The image service is busy right now. Please try again in a minute. You were not charged.",
    ),
    (
        perr.ServiceUnavailable,
        "The image service is not available for this bot right now (the admin has been told). "
        "Please try again later. You were not charged.",
    ),
    (
        perr.ProviderTimeout,
        "The image service took too long to answer. Please try again later. You were not charged.",
    ),
    (
        perr.ProviderJobFailed,
        "The image service could not finish this edit. Please try again. You were not charged.",
    ),
)
# ServerError, ConnectionFailed and anything else from the provider layer.
_PROVIDER_FAILED = (
    "The image service failed to answer. Please try again in a few minutes. You were not charged."
)


def message_for_provider_error(exc: perr.ProviderError) -> str:
    """User text for a provider failure. Credits are always released before this is shown."""
    return next((text for kind, text in _PROVIDER_ERROR_TEXTS if isinstance(exc, kind)), _PROVIDER_FAILED)
