"""One exception hierarchy for every provider.

Adapters map wire failures into these classes (each vendor in one function); the job service and the
user-facing messages only ever see these. `accepted` says whether the provider may have started (and
billed) the work: a job whose submit may have been accepted is never sent again anywhere.
"""

from __future__ import annotations


class ProviderError(Exception):
    """Base class. The message is for logs only; users get text from `bot.errors`."""

    retryable_elsewhere = False  # may routing try another provider for this failure?
    # The provider's id of a job that an error answer to a paid submit named: the job may exist (it may
    # run and bill), so it is never sent elsewhere (`bot.providers.http.names_a_job`; it is not followed).
    job_id: str | None = None

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
        accepted: bool = False,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.status = status
        self.code = code
        self.request_id = request_id
        self.accepted = accepted


class ProviderRejected(ProviderError):
    """The provider's safety system refused the prompt or image (e.g. OpenAI `moderation_blocked`)."""


class InvalidInput(ProviderError):
    """The provider refused the input as malformed (bad image, mask mismatch, bad parameter)."""


class ServiceUnavailable(ProviderError):
    """Auth, billing or permission failure on our side: the admin must act; retrying will not help."""

    retryable_elsewhere = True


class ModelUnavailable(ProviderError):
    """The provider does not serve this model (unknown, retired, or no access)."""

    retryable_elsewhere = True


class ModelGone(ModelUnavailable):
    """The provider says this model no longer exists on this route (OpenAI 404 `model_not_found`,
    a reseller's 404/410 naming the model, "retired", "no longer available", "no available channels").

    Raised only when the provider provably did not take the job (`accepted` is False), so routing may
    retire the route and run the same job elsewhere.
    """


class RateLimited(ProviderError):
    """HTTP 429 (not quota). `retry_after` is seconds, or None when the provider gave no hint."""

    retryable_elsewhere = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kw) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


def unsent_rate_limit(provider: str, why: str, retry_after: float | None = None) -> RateLimited:
    """The limiter's own refusal of a call it did not send (bot.concurrency): nothing reached the
    provider, so another one may take the job."""
    return RateLimited(f"{provider}: {why}", provider=provider, retry_after=retry_after, accepted=False)


class ServerError(ProviderError):
    """5xx or an unusable response from the provider."""


class ProviderTimeout(ProviderError):
    """The call or the job's deadline ran out."""


class ConnectionFailed(ProviderError):
    """The connection failed. With `accepted=False` the request provably never left this machine."""

    @property
    def retryable_elsewhere(self) -> bool:  # type: ignore[override]
        return not self.accepted


class ProviderJobFailed(ProviderError):
    """An accepted asynchronous job ended in a failed state on the provider's side."""
