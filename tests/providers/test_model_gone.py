"""The shared "model gone" rule (`bot.providers.http.gone_on_submit`) for the resellers' submits."""

from __future__ import annotations

import json

import pytest

from bot.providers.atlascloud import AtlasCloudProvider, classify_atlas_error
from bot.providers.errors import (
    InvalidInput,
    ModelGone,
    ModelUnavailable,
    ProviderError,
    RateLimited,
    ServerError,
    ServiceUnavailable,
)
from bot.providers.http import classify_http_status, says_model_gone, submit_classifier
from bot.providers.oneminai import OneMinAIProvider, classify_oneminai_error
from bot.providers.openai import classify_openai_error
from bot.providers.segmind import classify_segmind_error
from bot.providers.wavespeed import WaveSpeedProvider, classify_wavespeed_error


def atlas_body(code: int, msg: str) -> bytes:
    return json.dumps({"code": code, "msg": msg, "data": None}).encode()


def atlas_message(body: bytes) -> str:
    return json.loads(body)["msg"]


@pytest.mark.parametrize(
    ("status", "message", "expected", "accepted"),
    [
        (404, "model openai/gpt-image-2/edit not found", ModelGone, False),
        (404, "route not found", ModelGone, False),  # the model's route itself is gone
        (404, "Not Found", ModelGone, False),  # a path-routed API's answer for a path it lacks
        # About something the request carried, not the route: the job fails there, the route stays.
        (404, "images[0]: media not found (the upload URL has expired)", ModelUnavailable, False),
        (404, "no such file", ModelUnavailable, False),
        # Bare route answers that hold "image" or "url" in a path or the model id are still gone.
        (404, "Cannot POST /api/v1/model/generateImage", ModelGone, False),
        (404, "unknown model openai/gpt-image-2/edit", ModelGone, False),
        (404, "The requested URL was not found on the server.", ModelGone, False),
        (410, "gone", ModelGone, False),
        (503, "no available channels for model gpt-image-1", ModelGone, False),
        # A server error that says it passes is no model gone for good (retired, a route never comes
        # back); a refusal so worded still is: it is how vendors say a dead model is dead.
        (503, "model backend shut down for maintenance, try again later", ServerError, False),
        (503, "gpt-image-2 is temporarily not found upstream", ServerError, False),
        (503, "no available channels for model gpt-image-2, please try again later", ServerError, False),
        # "Try again" and "retry" alone say nothing passes: negated, or pointing at another model.
        (500, "model gpt-image-2 has been retired; do not retry", ModelGone, False),
        (503, "The model gpt-image-2 is no longer available. Retry with gpt-image-2.6", ModelGone, False),
        (503, "Model not found. Please check the model name and try again.", ModelGone, False),
        # "Later" says it passes after "try again", not as a later model.
        (503, "model gpt-image-2 has been retired; use gpt-image-2.5 or later", ModelGone, False),
        (500, "gpt-image-2 was shut down. Please switch to a later model.", ModelGone, False),
        (503, "no available channels for model gpt-image-2, retry in 30 seconds", ServerError, False),
        (404, "Model not found. Please check the model name and try again.", ModelGone, False),
        (400, "This model is no longer available, try again with gpt-image-2.6-sunburst", ModelGone, False),
        (500, "model gpt-image-1 has been retired", ModelGone, False),
        (400, "The model `gpt-image-1` has been deprecated", ModelGone, False),
        (400, "this model is no longer available", ModelGone, False),
        (400, "images: media not found", InvalidInput, False),  # a file, not the model
        # The route named beside something the request carried: the job fails there, the route stays.
        (400, "openai/gpt-image-2/edit: input image not found", InvalidInput, False),
        (404, "openai/gpt-image-2/edit: input image not found", ModelUnavailable, False),
        (400, "model openai/gpt-image-2/edit: image[0] not found", InvalidInput, False),
        (500, "openai/gpt-image-2/edit: reference image not found", ServerError, False),
        (400, "quality must be one of low, medium, high", InvalidInput, False),
        (403, "model not found for your team", ServiceUnavailable, False),  # access, not gone
        (402, "model retired? insufficient balance", ServiceUnavailable, False),
        (429, "no available channels for model x", RateLimited, False),
        (500, "internal server error", ServerError, False),
        (504, "model not found upstream", ServerError, True),  # a gateway may have passed it on
    ],
)
def test_a_submit_answer_is_model_gone_only_for_a_bare_404_a_410_or_gone_wording(
    status: int, message: str, expected: type[ProviderError], accepted: bool
) -> None:
    classify = submit_classifier(classify_atlas_error, atlas_message, model="openai/gpt-image-2/edit")

    err = classify(status, atlas_body(status, message), {}, provider="atlascloud")

    assert type(err) is expected
    assert err.accepted is accepted
    assert err.status == status
    if expected is ModelGone:
        assert err.retryable_elsewhere


def test_an_error_inside_a_200_envelope_is_judged_by_its_code() -> None:
    classify = submit_classifier(classify_atlas_error, atlas_message, model="m")

    err = classify(200, atlas_body(404, "model m not found"), {}, provider="atlascloud")

    assert type(err) is ModelGone and err.status == 404 and not err.accepted


JOB = {"id": "job_1", "status": "processing"}
NAMING_A_JOB = {  # an error answer naming the job it created, in each vendor's shape, with gone wording
    "atlascloud": (
        AtlasCloudProvider.vendor,
        {"code": 500, "msg": "model m is no longer available", "data": JOB},
    ),
    "wavespeed": (
        WaveSpeedProvider.vendor,
        {"code": 502, "message": "no available channels for model m", "data": JOB},
    ),
    "oneminai": (OneMinAIProvider.vendor, {"message": "model m not found", "aiRecord": {"uuid": "job_1"}}),
}


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 200])
@pytest.mark.parametrize("vendor", sorted(NAMING_A_JOB))
def test_a_submit_error_answer_that_names_a_created_job_is_accepted_and_never_model_gone(
    vendor: str, status: int
) -> None:
    """After a 5xx, a 408 or a 2xx carrying an error the job may exist (it may run and bill): whatever
    the wording, the error must not let routing send the job to another provider too, nor retire the
    route."""
    spec, body = NAMING_A_JOB[vendor]
    classify = submit_classifier(spec.classify, spec.message_of, model="m", job_id_of=spec.job_id_of)

    err = classify(status, json.dumps(body).encode(), {}, provider=spec.name)

    assert not isinstance(err, ModelGone)
    assert err.accepted is True and err.retryable_elsewhere is False
    assert err.job_id == "job_1"


@pytest.mark.parametrize(
    ("classify", "body"),
    [
        (classify_wavespeed_error, {"code": 503, "message": "no available channels for model x"}),
        (classify_segmind_error, {"error": "no available channels for model x"}),
        (classify_oneminai_error, {"message": "no available channels for model x"}),
    ],
    ids=["wavespeed", "segmind", "oneminai"],
)
def test_the_plain_classifiers_used_for_polls_never_say_model_gone(classify, body: dict) -> None:
    raw = json.dumps(body).encode()

    for status in (404, 410, 503):
        err = classify(status, raw, {}, provider="p")
        assert not isinstance(err, ModelGone)
    assert isinstance(classify(404, raw, {}, provider="p"), ModelUnavailable)


@pytest.mark.parametrize(
    ("message", "model", "gone"),
    [
        ("No available channel for gpt-image-1-mini", "gpt-image-1-mini", True),
        ("gpt-image-1 is retired", "gpt-image-1", True),
        ("gpt-image-1 is retired", "", False),  # names neither the model nor a channel
        ("prediction not found", "m", False),
        ("model is busy", "m", False),
        # A field of the request is what is deprecated, not the model.
        ("parameter 'size' is deprecated for this model, use aspect_ratio", "m", False),
        ("the field `input_fidelity` is deprecated for model m", "m", False),
        # Something the request carried is what is missing, though the model is named.
        ("openai/gpt-image-2/edit: input image not found", "openai/gpt-image-2/edit", False),
        ("model m: upload expired or not found", "m", False),
        # A field named beside another gone word does not veto it.
        ("no available channels for model m; options: retry later", "m", True),
        # The words about an input count where a word starts: "profile" holds no "file".
        ("no available channel for model m (profile default)", "m", True),
        ("model m: files not found", "m", False),
        ("model m: inputFile not found", "m", False),  # a camelCase field name counts as a word
        ("Model m: Upload expired", "m", False),
    ],
)
def test_says_model_gone_needs_the_model_named_and_a_gone_word(message: str, model: str, gone: bool) -> None:
    assert says_model_gone(message, model) is gone


@pytest.mark.parametrize("status", [301, 302, 307, 308])
@pytest.mark.parametrize(
    "classify",
    [
        classify_atlas_error,
        classify_wavespeed_error,
        classify_segmind_error,
        classify_oneminai_error,
        classify_openai_error,
        classify_http_status,
    ],
    ids=["atlascloud", "wavespeed", "segmind", "oneminai", "openai", "generic"],
)
def test_a_redirect_answering_a_paid_submit_is_the_operators_to_fix_not_the_members_input(
    classify, status: int
) -> None:
    """A paid submit follows no redirect. A base URL written http:// for an https:// service answers
    301: the resellers' classifiers called it InvalidInput, telling the member their picture was at
    fault. It is the operator's setting (an alert, the route skipped), and nothing was made."""
    body = json.dumps({"message": "Moved Permanently"}).encode()
    headers = {"location": "https://api.example.com/v1/edit?key=K-SECRET"}

    err = classify(status, body, headers, provider="p")

    assert type(err) is ServiceUnavailable and err.code == "redirected"
    assert err.accepted is False
    assert "base URL" in str(err) and "K-SECRET" not in str(err)


@pytest.mark.parametrize(("status", "expected"), [(404, ModelGone), (410, ModelGone), (400, ModelGone)])
@pytest.mark.parametrize("vendor", sorted(NAMING_A_JOB))
def test_a_4xx_answer_keeps_its_meaning_whatever_job_id_it_echoes(
    vendor: str, status: int, expected: type[ProviderError]
) -> None:
    """A 4xx refuses the request itself: "model gone" wording with an echoed id still retires the
    route (the job goes elsewhere, nothing was made), instead of failing every job routed there."""
    spec, body = NAMING_A_JOB[vendor]
    classify = submit_classifier(spec.classify, spec.message_of, model="m", job_id_of=spec.job_id_of)

    err = classify(status, json.dumps(body).encode(), {}, provider=spec.name)

    assert type(err) is expected and err.accepted is False and err.job_id is None


@pytest.mark.parametrize("vendor", ["atlascloud", "wavespeed"])
def test_a_bare_id_beside_a_5xx_error_is_a_gateways_request_id_not_a_job(vendor: str) -> None:
    """`{"id": "req_…", "message": "Bad Gateway"}`: a gateway's request id, not a prediction. Read as
    a job, the edit was held at a provider that never had it, and no other provider was tried."""
    spec = NAMING_A_JOB[vendor][0]
    classify = submit_classifier(spec.classify, spec.message_of, model="m", job_id_of=spec.job_id_of)
    body = json.dumps({"id": "req_7f3a", "message": "Bad Gateway"}).encode()

    err = classify(502, body, {}, provider=spec.name)

    assert err.job_id is None and err.accepted is False and err.retryable_elsewhere
