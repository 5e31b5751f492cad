"""Helpers the vendor adapters share for reading answers: safe messages, JSON, error summaries, and
the "model gone" rule (an answer that says the model no longer exists, on a submit only)."""

from __future__ import annotations

import json as _json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

from bot.providers.errors import (
    InvalidInput,
    ModelGone,
    ModelUnavailable,
    ProviderError,
    ProviderJobFailed,
    ProviderRejected,
    ProviderTimeout,
    RateLimited,
    ServerError,
    ServiceUnavailable,
)
from bot.providers.http.transport import Classifier, parse_retry_after, redact_url, redirected

log = logging.getLogger(__name__)

T = TypeVar("T")

_URL_IN_TEXT = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s\"'<>]+")
_SCHEME_PREFIX = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
MAX_MESSAGE = 200  # provider messages kept in exception text (for logs) are cut to this length
MIN_PARTIAL_SECRET = 4  # a secret's start this long, where a cut message ends, is masked too


def mask_secrets(text: str, secrets: Iterable[str]) -> str:
    """`text` with every one of `secrets` (an API key, a header carrying one) replaced by `***`,
    the longest first (so a `Bearer <key>` header goes whole before its key alone).

    A text cut short by `safe_message` (ending in "…") may end inside a secret: that start of it
    (from `MIN_PARTIAL_SECRET` characters) is masked too.
    """
    ordered = sorted((s for s in secrets if s), key=len, reverse=True)
    for secret in ordered:
        text = text.replace(secret, "***")
    if text.endswith("…"):
        head = text[:-1]
        for secret in ordered:
            for n in range(min(len(secret), len(head)), MIN_PARTIAL_SECRET - 1, -1):
                if head.endswith(secret[:n]):
                    return head[:-n] + "***…"
    return text


def safe_message(text: object, *, secrets: tuple[str, ...] = (), limit: int = MAX_MESSAGE) -> str:
    """A provider-supplied message made fit for exception text and logs.

    Whitespace is collapsed, URLs lose their query strings (signed URLs) through `redact_url`,
    every string in `secrets` (the API key) is masked, and the result is cut to `limit` characters.
    """
    message = " ".join(str(text).split())
    message = _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), message)
    message = mask_secrets(message, secrets)
    if len(message) > limit:
        message = message[: limit - 1] + "…"
    return message


def mark_unsubmitted(err: ProviderError) -> ProviderError:
    """Mark `err` as raised before the paid request was sent (an upload or a local check failed).

    Nothing was created or billed, so routing may try another provider: `accepted` becomes False
    and, for the server-side kinds (`ServerError`, `ProviderTimeout`) whose class default says
    otherwise, `retryable_elsewhere` becomes True. Refusals (bad input, safety) keep their class's
    rule: another provider would refuse them too.
    """
    err.accepted = False
    if isinstance(err, (ServerError, ProviderTimeout)):
        err.retryable_elsewhere = True
    return err


async def before_submit(step: Awaitable[T]) -> T:
    """Await a step that runs before the paid submit (the uploads); a `ProviderError` from it is
    raised `mark_unsubmitted`, as nothing was created or billed yet."""
    try:
        return await step
    except ProviderError as err:
        raise mark_unsubmitted(err) from None


def parse_json(body: bytes) -> Any:
    """The body decoded as JSON, or None when it is not JSON (an HTML error page, an empty body)."""
    try:
        return _json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None


def is_http_url(value: object) -> bool:
    """Whether `value` is an http(s) URL string: what an upload must hand back to be usable."""
    return isinstance(value, str) and value.lower().startswith(("https://", "http://"))


# A provider's id for a job, as the vendors make them: hex, `pred_…`, UUIDs. An id is stored on the job's
# row (where a comma separates the ids of its calls, and PostgreSQL refuses a NUL in text) and goes into
# a poll's URL path, so one with anything else (a control character, a comma, a space, a slash) cannot
# be followed: `usable_job_id`.
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:~-]{0,255}")


def usable_job_id(job_id: str) -> bool:
    """Whether a provider's id for a job can be recorded on its row and polled (see `_JOB_ID`)."""
    return _JOB_ID.fullmatch(job_id) is not None


def error_summary(status: int, message: str, *, code: int | None = None) -> str:
    """`HTTP 200 (code 402): <message>`: an error's status for exception text and logs.

    `code` is an error status a vendor put inside the body (shown when it differs from `status`);
    the message is made safe by `safe_message` and left out when empty.
    """
    summary = f"HTTP {status}" + (f" (code {code})" if code not in (None, status) else "")
    return summary + (f": {safe_message(message)}" if message else "")


def submit_server_error(summary: str, *, status: int, **kw: Any) -> ServerError:
    """A 5xx answer to a paid submit that returned no job, for vendors where nothing was created
    (an answer that names a job is made accepted by `submit_classifier`).

    Routing may then try another provider (`accepted=False`, retryable elsewhere), except after a
    504: a gateway that gave up waiting may already have passed the job on, so it stays accepted.
    """
    if status == 504:
        return ServerError(summary, status=status, accepted=True, **kw)
    err = ServerError(summary, status=status, accepted=False, **kw)
    err.retryable_elsewhere = True
    return err


def mentions(text: str, words: tuple[str, ...]) -> bool:
    """Whether lower-cased `text` contains one of `words` (how resellers' wording is told apart)."""
    return any(word in text for word in words)


# What a reseller's failed job says when what it was sent was at fault (an image it could not read, a
# mask that does not fit): the member's input, which says nothing about the provider's health, so it
# must not count against its circuit breaker (bot.routing.breaker) as an unexplained failure does.
INPUT_WORDS = (
    "invalid image",
    "unsupported image",
    "image format",
    "cannot identify image",
    "decode image",
    "decoding image",
    "corrupt",
    "invalid mask",
    "mask size",
    "mask dimension",
    "image size",
    "image dimension",
    "too large",
    "too small",
)


def classify_reseller(
    status: int,
    body: bytes,
    headers: Mapping[str, str],
    *,
    provider: str,
    message: Callable[[Any], str],
    job_state: Callable[[Any], str | None],
    safety_words: tuple[str, ...],
    billing_words: tuple[str, ...],
    error_in_answer: Callable[[Any], int | None] | None = None,
    timeout_states: frozenset[str] = frozenset(),
    billing_code: str = "insufficient_balance",
    safety_code: str | None = None,
    synchronous: bool = False,
) -> ProviderError:
    """Map one failure of a reseller whose error bodies are undocumented (Atlas Cloud, WaveSpeed,
    1min.ai) to a `ProviderError`: the status decides, the vendor's wording refines.

    The vendor says how its answers read: `message` (the error text of the decoded body), `job_state`
    (the state of a job a 2xx answer reports), `error_in_answer` (an error status some gateways put
    inside a 2xx answer), and the words that name a safety filter or a billing problem.

    A 2xx answer without such a status is a job that ran and failed (it may have been billed):
    ProviderTimeout for a state in `timeout_states`, else ProviderRejected for safety wording,
    InvalidInput for wording that blames the input (`INPUT_WORDS`), else ProviderJobFailed, all
    `accepted=True`. Otherwise, by the (inner) status: 402 or billing wording →
    ServiceUnavailable(`billing_code`); 401/403 → ServiceUnavailable; 404 → ModelUnavailable; 429 →
    RateLimited with the retry-after hint; 408 → ProviderTimeout (a poll goes on); 5xx → a
    `synchronous` call's ServerError(accepted=True) (the image may have been made, and billed, before
    the error), else `submit_server_error` (no job id came back: nothing was queued); other 4xx →
    ProviderRejected(`safety_code`) for safety wording, else InvalidInput.
    """
    payload = parse_json(body)
    raw = message(payload)
    lowered = raw.lower()
    answered = 200 <= status < 300
    effective = (error_in_answer(payload) if error_in_answer else None) if answered else status
    summary = error_summary(status, raw, code=effective)
    safety = mentions(lowered, safety_words)
    if effective is None:  # a 2xx: the job ran, and its state says it did not succeed
        state = job_state(payload)
        kw: dict[str, Any] = {"provider": provider, "status": status, "code": state, "accepted": True}
        if state in timeout_states:
            return ProviderTimeout(summary, **kw)
        if safety:
            return ProviderRejected(summary, **kw)
        if mentions(lowered, INPUT_WORDS):
            return InvalidInput(summary, **kw)
        return ProviderJobFailed(summary, **kw)
    kw = {"provider": provider, "status": effective}
    if effective == 402 or mentions(lowered, billing_words):
        return ServiceUnavailable(summary, code=billing_code, **kw)
    if effective in (401, 403):
        return ServiceUnavailable(summary, code="unauthorized" if effective == 401 else "forbidden", **kw)
    if effective == 404:
        return ModelUnavailable(summary, code="not_found", **kw)
    if effective == 429:
        return RateLimited(summary, retry_after=parse_retry_after(headers), code="rate_limited", **kw)
    if effective == 408:  # the server (or a gateway) gave up waiting: says nothing about the input
        return ProviderTimeout(summary, code="timeout", **kw)
    if effective >= 500:
        if synchronous:
            return ServerError(summary, accepted=True, **kw)
        return submit_server_error(summary, **kw)
    if 300 <= effective < 400:  # not the member's input: the base URL is not the service's own
        return redirected(effective, headers, provider=provider)
    if safety:
        return ProviderRejected(summary, code=safety_code, **kw)
    return InvalidInput(summary, **kw)


def unsupported_options(model: str, service: str, problems: list[str], *, provider: str) -> InvalidInput:
    """The error for a request that a route cannot carry, found before anything was sent.

    The limit is the route's, not the user's, so another route may do the job: it is marked
    retryable elsewhere (and, as nothing was sent, not accepted).
    """
    err = InvalidInput(
        f"{model} on {service} cannot take: {', '.join(problems)}",
        provider=provider,
        code="unsupported_option",
    )
    err.retryable_elsewhere = True
    return err


# What resellers and gateways say when a model (or the upstream channel behind it) is gone for good
# (models-2026-12.md §1): a 404/410 for the model, or any error whose message says so.
_GONE_WORDS = (
    "not found",
    "no longer available",
    "retired",
    "deprecated",
    "no available channel",
    "does not exist",
    "discontinued",
    "decommissioned",
    "shut down",
)
# What a message about one of the request's fields says, which may name the model too: beside
# "deprecated" alone ("parameter 'size' is deprecated for this model") the field is what is gone, not
# the model. Any other gone word beside a field's name still says the model is gone.
_ABOUT_A_FIELD = ("parameter", "param ", "field", "argument", "option")
# What says a server error passes ("model backend shut down for maintenance, try again later"): a 5xx
# so worded is a failure of the moment, and retiring the route for it would be for good. A refusal (a
# 4xx, a 410) is not vetoed by it: "Model not found. Check the name and try again." is the vendor's
# usual way of saying a dead model is dead, and missing it would stop every edit on the route. Nor
# are "try again" and "retry" alone, in a 5xx either: "retired; do not retry", "please retry with
# gpt-image-2" and "check the model name and try again" say the model is gone; "try again later" and
# "retry in 30 seconds" say it passes (but not "gpt-image-2 or later", "a later model").
_PASSING = re.compile(
    r"maintenance|temporar|overload|\bshortly\b|in a (?:moment|while)"
    r"|\b(?:again|retry|try|back)\W+later\b|\b(?:try again|retry)\s+(?:in|after)\b",
    re.I,
)
# Statuses that mean "not for you" rather than "gone": auth, billing, access, rate limits.
_NEVER_GONE = frozenset({401, 402, 403, 429, 504})


# What an error may be about besides the route: something the request carried (an upload whose
# temporary URL expired, a file id, an input image). Such an answer does not retire the route; its job
# fails there. Whole phrases, not "image" or "url": model ids ("gpt-image-2") and paths
# ("/generateImage") hold those.
_ABOUT_AN_INPUT = (
    "media",
    "file",
    "upload",
    "asset",
    "mask",
    "images[",
    "image[",
    "image_url",
    "input image",
    "input_image",
    "reference image",
    "nosuchkey",
    "expired",
)


# Each of `_ABOUT_AN_INPUT` where a word starts: "file" and "files", and the "File" of a camelCase
# "inputFile", but not the "file" of "profile". Matched on the message as written.
_INPUT_WORD = re.compile(
    "|".join(
        rf"(?<![A-Za-z0-9])(?i:{re.escape(word)})|(?<=[a-z0-9]){re.escape(word[:1].upper() + word[1:])}"
        for word in _ABOUT_AN_INPUT
    )
)


def _about_an_input(message: str, model: str) -> bool:
    """Whether `message` names something the request carried (`_ABOUT_AN_INPUT`), outside the model id
    (a route such as `openai/gpt-image-2/edit` is no input, whatever words it holds)."""
    if model:
        message = re.sub(re.escape(model), " ", message, flags=re.IGNORECASE)
    return _INPUT_WORD.search(message) is not None


def says_model_gone(message: str, model: str = "") -> bool:
    """Whether an error message says the model (or its channel) is gone: it must name the model
    (the word "model", "channel", or the model id itself) AND use one of the gone words, so that
    "media not found" about an uploaded file is not mistaken for a retired model; and it must not be
    about something the request carried ("openai/gpt-image-2/edit: input image not found"), nor, when
    "deprecated" is its only gone word, about one of the request's fields ("parameter 'size' is
    deprecated for this model")."""
    lowered = message.lower()
    names_it = "model" in lowered or "channel" in lowered or bool(model and model.lower() in lowered)
    said = {word for word in _GONE_WORDS if word in lowered}
    if not (names_it and said) or _about_an_input(message, model):
        return False
    # "Deprecated" alone, beside a field's name, is about that field.
    return not (said == {"deprecated"} and mentions(lowered, _ABOUT_A_FIELD))


def _bare_404(status: int, message: str, model: str) -> bool:
    """A 404 that names nothing the request carried: the route itself is not there (a path-routed
    API's bare "Not Found", "route not found", "Cannot POST /path", "unknown model X")."""
    return status == 404 and not _about_an_input(message, model)


def gone_on_submit(err: ProviderError, message: str, *, model: str = "") -> ProviderError:
    """A submit's error as `ModelGone` when the provider says this route's model is gone.

    For the answer to a paid submit that created nothing (no job id came back): a 410, a 404 that is
    not about something the request carried (`_bare_404`), or any other 4xx/5xx (e.g. 503 "no
    available channels") whose `message` says the model is gone (`says_model_gone`). Auth, billing,
    access and rate-limit answers (401/402/403/429), 504 (a gateway that may have passed the job
    on) and a 5xx that says it passes (`_PASSING`) never are. The provider did not take the
    job, so the result is `accepted=False` even where the vendor's rule for a 5xx says otherwise: an
    answer that the model does not exist is proof that nothing ran. Call it only for submits: a 404
    on a poll means the job vanished, not the model.
    """
    status = err.status
    if status is None or status < 400 or status in _NEVER_GONE or isinstance(err, ModelGone):
        return err
    if status >= 500 and _PASSING.search(message):
        return err
    if not (status == 410 or says_model_gone(message, model) or _bare_404(status, message, model)):
        return err
    return ModelGone(
        str(err),
        provider=err.provider,
        status=status,
        code=err.code if err.code and err.code != "not_found" else "model_gone",
        request_id=err.request_id,
        accepted=False,
    )


def names_a_job(err: ProviderError, job_id: str) -> ProviderError:
    """`err`, an error answer to a paid submit that names the job `job_id`, as accepted: the job
    exists at the provider (it may run and bill), so it must not go to another provider too. It is
    not followed: an error answer's id may be stale or another request's, and following it could
    deliver (and charge the member for) some other job's image. The member pays nothing; the
    budgets count it as possibly billed."""
    err.job_id = job_id
    err.accepted = True
    err.retryable_elsewhere = False
    return err


def submit_classifier(
    classify: Classifier,
    message_of: Callable[[bytes], str],
    *,
    model: str = "",
    job_id_of: Callable[[bytes], str | None] | None = None,
) -> Classifier:
    """`classify` for one paid submit of `model`: the same mapping, plus `gone_on_submit`, except
    for an answer that names a created job (`names_a_job`).

    `message_of` reads the vendor's error text from a body, `job_id_of` the id of a job it names
    (each vendor's envelope differs; None for a vendor whose answers name no job).

    Only an answer that may come after the job was made names one: a 2xx carrying an error, a 5xx
    or a 408 (the service failed or gave up once it had the request). A 4xx refuses the request
    itself, and its wording (a model gone, a bad input) keeps its meaning whatever id it echoes.
    """

    def classify_submit(
        status: int, body: bytes, headers: Mapping[str, str], *, provider: str
    ) -> ProviderError:
        err = classify(status, body, headers, provider=provider)
        if err.status is None:
            err.status = status
        after_taking = 200 <= status < 300 or status >= 500 or status == 408
        if after_taking and job_id_of is not None and (job_id := job_id_of(body)) is not None:
            return names_a_job(err, job_id)
        return gone_on_submit(err, message_of(body), model=model)

    return classify_submit
