"""The "model gone" rule: when an error answer to a paid submit says the route's model is gone for
good, so that the route is retired (persisted, and for a reseller route never asked again) and the job
may run elsewhere (models-2026-12.md §1).

A gone answer is a 410, a bare 404, or a 4xx/5xx whose message names the route's model (or its
channel) as not found / no longer available / retired; but only when the provider provably did not
take the job, and never when the message is about something else: an input the request carried, one
of its fields' values, or a failure that passes ("maintenance", "try again later").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from bot.providers.errors import ModelGone, ProviderError

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
# The gone wording that names the upstream channel rather than the model: it says the route is gone
# without naming the model (a gateway's "no available channels").
_CHANNEL_GONE = "no available channel"
# What says a failure passes ("shut down for maintenance, try again later", "temporarily not found"):
# beside it a gone word is about now, not for good, and retiring the route would be for ever.
_PASSING_WORDS = (
    "maintenance",
    "temporar",
    "try again",
    "retry",
    "overload",
    "later",
    "busy",
    "capacity",
    "timeout",
    "timed out",
    "at the moment",
    "for now",
)
# What a message about one of the request's fields says, which may name the model too ("parameter
# 'size' is deprecated for this model", "resolution 4k does not exist for gpt-image-2"): the field's
# value is what is gone, not the model.
_ABOUT_A_FIELD = ("parameter", "param", "field", "argument", "option", "value")
# The fields the adapters send, named in a refusal of one of their values; a submit adds the names its
# body carried (`field_names`).
REQUEST_FIELDS = frozenset(
    {
        "quality",
        "size",
        "resolution",
        "aspect_ratio",
        "output_format",
        "output_compression",
        "background",
        "moderation",
        "input_fidelity",
        "n",
    }
)
# Body keys that name the route itself, not a value of the request: a refusal naming them may be the
# model's own ("model gpt-image-1 not found").
_ROUTE_KEYS = frozenset({"model", "type"})
MIN_FIELD_NAME = 3  # shorter keys ("n") are letters of ordinary words, not a field named in a message
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


def _word_starts(words: Iterable[str]) -> re.Pattern[str]:
    """Each of `words` where a word starts: "file" and "files", and the "File" of a camelCase
    "inputFile", but not the "file" of "profile". Matched on the message as written."""
    return re.compile(
        "|".join(
            rf"(?<![A-Za-z0-9])(?i:{re.escape(word)})|(?<=[a-z0-9]){re.escape(word[:1].upper() + word[1:])}"
            for word in words
        )
    )


_INPUT_WORD = _word_starts(_ABOUT_AN_INPUT)
_FIELD_WORD = _word_starts(_ABOUT_A_FIELD)


def field_names(body: Any) -> frozenset[str]:
    """The names of the fields a request body carried, nested objects' included (1min.ai's
    `promptObject`), less those that name the route itself (`model`)."""
    found: set[str] = set()
    if isinstance(body, Mapping):
        for key, value in body.items():
            if isinstance(key, str) and key.lower() not in _ROUTE_KEYS:
                found.add(key)
            found |= field_names(value)
    return frozenset(found)


def _model_names(model: str) -> tuple[str, ...]:
    """How a message may name the route's model: its id, and for a path-like id its segments that
    carry a version (`gpt-image-2` of `openai/gpt-image-2/edit`; not the vendor or the task)."""
    if not model:
        return ()
    parts = [part for part in model.split("/") if part != model and any(c.isdigit() for c in part)]
    return (model, *parts)


def _name_pattern(name: str) -> re.Pattern[str]:
    """A model id as a whole: not part of a longer one (`gpt-image-2` is not in `gpt-image-2.5-flare`
    nor in `gpt-image-2-developer`)."""
    return re.compile(rf"(?<![\w.-]){re.escape(name)}(?![\w]|[.-][\w])", re.IGNORECASE)


def _field_pattern(name: str) -> re.Pattern[str]:
    """A field's name as a word, also in a path (`promptObject.imageUrl`, `images[0]`); its `_` may be
    written as a space or `-` ("aspect ratio")."""
    body = r"[ _-]?".join(re.escape(part) for part in name.split("_"))
    return re.compile(rf"(?<![A-Za-z0-9_]){body}(?![A-Za-z0-9_])", re.IGNORECASE)


def _names_model(message: str, model: str) -> bool:
    """Whether `message` names the route's model (`_model_names`)."""
    return any(_name_pattern(name).search(message) for name in _model_names(model))


def _without_model(message: str, model: str) -> str:
    """`message` with the route's model names blanked: a route such as `openai/gpt-image-2/edit` is
    no input nor field, whatever words it holds."""
    for name in _model_names(model):
        message = _name_pattern(name).sub(" ", message)
    return message


def _about_an_input(message: str, model: str) -> bool:
    """Whether `message` names something the request carried (`_ABOUT_AN_INPUT`), outside the model id."""
    return _INPUT_WORD.search(_without_model(message, model)) is not None


def _about_a_field(message: str, model: str, fields: Iterable[str]) -> bool:
    """Whether `message` names a field of the request (a generic word such as "parameter", one of
    `REQUEST_FIELDS`, or one of `fields`, the submit's own), outside the model id."""
    text = _without_model(message, model)
    if _FIELD_WORD.search(text) is not None:
        return True
    names = {name for name in REQUEST_FIELDS.union(fields) if len(name) >= MIN_FIELD_NAME}
    return any(_field_pattern(name).search(text) for name in names)


def _passing(message: str) -> bool:
    """Whether `message` says its failure passes (`_PASSING_WORDS`)."""
    lowered = message.lower()
    return any(word in lowered for word in _PASSING_WORDS)


def says_model_gone(message: str, model: str = "", fields: Iterable[str] = ()) -> bool:
    """Whether an error message says the route's model (or its channel) is gone for good.

    It must use one of the gone words AND name the model: its id (`_model_names`; the bare word
    "model" is not enough, "model response not found" is about something else), or, for the
    gateways' "no available channels", the channel. And it must be about none of: something the
    request carried ("openai/gpt-image-2/edit: input image not found"), one of the request's fields
    (`fields`, the submit's body keys, `REQUEST_FIELDS`, or a word such as "parameter": "resolution 4k
    does not exist for gpt-image-2"), or a failure that passes ("shut down for maintenance, try
    again later")."""
    lowered = message.lower()
    said = {word for word in _GONE_WORDS if word in lowered}
    if not said:
        return False
    if not (_CHANNEL_GONE in said or _names_model(message, model)):
        return False
    return not (
        _passing(message) or _about_an_input(message, model) or _about_a_field(message, model, fields)
    )


def _bare_404(status: int, message: str, model: str) -> bool:
    """A 404 that names nothing the request carried: the route itself is not there (a path-routed
    API's bare "Not Found", "route not found", "Cannot POST /path", "unknown model X"), and does
    not say it passes."""
    return status == 404 and not _about_an_input(message, model) and not _passing(message)


def gone_on_submit(
    err: ProviderError, message: str, *, model: str = "", fields: Iterable[str] = ()
) -> ProviderError:
    """A submit's error as `ModelGone` when the provider says this route's model is gone.

    For the answer to a paid submit that created nothing (no job id came back): a 410, a 404 that is
    not about something the request carried (`_bare_404`), or any other 4xx/5xx (e.g. 503 "no
    available channels") whose `message` says the model is gone (`says_model_gone`, with `fields`
    the names the submit's body carried). Auth, billing, access and rate-limit answers
    (401/402/403/429) and 504 (a gateway that may have passed the job on) never are; nor is an
    error the vendor's rule took as possibly accepted (1min.ai's synchronous call, whose 5xx may come
    after the image was made and billed): retired and sent elsewhere, it would be billed twice.
    Call it only for submits: a 404 on a poll means the job vanished, not the model.
    """
    status = err.status
    if status is None or status < 400 or status in _NEVER_GONE or err.accepted or isinstance(err, ModelGone):
        return err
    if not (status == 410 or says_model_gone(message, model, fields) or _bare_404(status, message, model)):
        return err
    return ModelGone(
        str(err),
        provider=err.provider,
        status=status,
        code=err.code if err.code and err.code != "not_found" else "model_gone",
        request_id=err.request_id,
        accepted=False,
    )
