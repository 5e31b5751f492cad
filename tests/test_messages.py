"""What a member reads for a provider failure or an option no route can honour (texts in bot.messages)."""

from __future__ import annotations

import pytest

from bot import messages
from bot.catalog import Route
from bot.errors import message_for_provider_error
from bot.providers import errors as perr


@pytest.mark.parametrize(
    ("kind", "says"),
    [
        (perr.ProviderRejected, "The image service's safety system refused this request."),
        (perr.InvalidInput, "The image service could not use this image or option."),
        (perr.ModelUnavailable, "That model is not available from the image service right now."),
        (perr.ModelGone, "That model is not available from the image service right now."),  # a subclass
        (perr.RateLimited, "The image service is busy right now."),
        (perr.ServiceUnavailable, "(the admin has been told)"),
        (perr.ProviderTimeout, "The image service took too long to answer."),
        (perr.ProviderJobFailed, "The image service could not finish this edit."),
        (perr.ServerError, "The image service failed to answer."),
        (perr.ConnectionFailed, "The image service failed to answer."),
    ],
)
def test_each_provider_failure_gets_its_own_text_and_never_the_exception_text(
    kind: type[perr.ProviderError], says: str
):
    text = message_for_provider_error(kind("https://secret.example/v1 said: boom", provider="x"))
    assert says in text and text.endswith("You were not charged.")
    assert "boom" not in text and "secret" not in text


def test_an_option_without_its_own_hint_is_named_as_a_member_would_write_it():
    route = Route(provider="openai", model="m")
    text = messages.unservable("Model", route, ("input_fidelity", "mask"))
    assert text == (
        "The image services configured for Model cannot do this as asked: drop `input fidelity`; "
        "remove the `mask`, or pick another model."
    )
