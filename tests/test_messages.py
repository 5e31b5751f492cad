"""What a member reads for a provider failure or an option no route can honour (texts in bot.messages)."""

from __future__ import annotations

import ast
from decimal import Decimal
from pathlib import Path

import pytest

from bot import messages
from bot.catalog import Route
from bot.errors import message_for_provider_error
from bot.providers import errors as perr
from tests.catalogs import catalog, model


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


@pytest.mark.parametrize(
    ("category", "shown"),
    [
        ("harassment/threatening", "threats"),  # a known one, in members' words
        ("illicit/weapons", "illicit / weapons"),  # an unknown one that reads like a category
        ("**Visit evil.example** @everyone " + "x" * 3000, "unsafe content"),  # free text, never shown
        ("", "unsafe content"),
    ],
)
def test_a_flagged_category_is_named_only_when_it_reads_like_one(category: str, shown: str) -> None:
    text = messages.flagged(category, "your prompt")
    assert f"**{shown}**" in text and len(text) < 300


def test_an_option_without_its_own_hint_is_named_as_a_member_would_write_it():
    route = Route(provider="openai", model="m")
    text = messages.unservable("Model", route, ("input_fidelity", "mask"))
    assert text == (
        "The image services configured for Model cannot do this as asked: drop `input fidelity`; "
        "remove the `mask`, or pick another model."
    )


def test_a_route_that_makes_transparency_only_as_png_says_which_format_to_pick():
    route = Route(provider="oneminai", model="m", transparent_formats=("png",))
    text = messages.unservable("Model", route, ("transparent_format",))
    assert "set `format` to one of png for a transparent background" in text


def test_a_route_whose_masked_edits_take_no_background_says_where_to_change_it():
    """/mask has no background option: the member's saved one is what to change."""
    route = Route(provider="oneminai", model="m", mask_backgrounds=("auto",))
    text = messages.unservable("Model", route, ("mask_background",))
    assert "set your background in /settings to auto for a masked edit" in text


def test_every_refusal_that_quotes_what_a_member_typed_cuts_the_quote_short():
    listed, free = catalog(model("m", name="M"), model("f", name="F", free_sizes=True)).models.values()
    typed = "x" * 2100
    quoted = [
        messages.unknown_model(typed),
        messages.quality_not_offered(listed, typed),
        messages.size_not_offered(listed, typed),
        messages.size_not_offered(free, typed),
        messages.unknown_models([typed], ["m"]),
        messages.unknown_providers(["y"] * 1000, ["openai"]),  # many short ones: the list is cut
    ]
    for text in quoted:
        assert len(text) < 500 and "…" in text, text


ROOT = Path(__file__).parent.parent
# bot/providers raises ProviderErrors, whose text is logged and never shown (bot.errors maps them).
NOT_CHECKED = ("bot/providers/",)


def _refusal_classes(classes: list[ast.ClassDef]) -> set[str]:
    """RetouchError and every class that derives from it, by name."""
    names = {"RetouchError"}
    grown = True
    while grown:
        found = {c.name for c in classes if any(isinstance(b, ast.Name) and b.id in names for b in c.bases)}
        grown = not found <= names
        names |= found
    return names


def _written_in_place(node: ast.expr) -> bool:
    return isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Constant) and isinstance(node.value, str))


def _texts_written_in_place(node: ast.AST, refusals: set[str], *, inside_refusal: bool) -> list[int]:
    """Lines where a refusal is built, or (inside a refusal class) its text passed up, from a literal."""
    lines = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.ClassDef):
            lines += _texts_written_in_place(child, refusals, inside_refusal=child.name in refusals)
            continue
        if isinstance(child, ast.Call):
            func = child.func
            name = (
                func.id
                if isinstance(func, ast.Name)
                else func.attr
                if isinstance(func, ast.Attribute)
                else ""
            )
            passed_up = (
                inside_refusal and name == "__init__" and isinstance(getattr(func, "value", None), ast.Call)
            )
            if name in refusals or passed_up:
                texts = child.args[:1] + [k.value for k in child.keywords if k.arg == "user_message"]
                lines += [child.lineno for t in texts if _written_in_place(t)]
        lines += _texts_written_in_place(child, refusals, inside_refusal=inside_refusal)
    return lines


def test_refusals_take_their_sentence_from_bot_messages():
    """A refusal raised in bot/ or cogs/ (a RetouchError, or a subclass passing its text up) names a
    text of bot.messages instead of writing the sentence where it is raised."""
    files = [p for d in ("bot", "cogs") for p in sorted((ROOT / d).rglob("*.py"))]
    trees = {p.relative_to(ROOT).as_posix(): ast.parse(p.read_text()) for p in files}
    refusals = _refusal_classes(
        [n for t in trees.values() for n in ast.walk(t) if isinstance(n, ast.ClassDef)]
    )
    inline = [
        f"{path}:{line}"
        for path, tree in trees.items()
        if not path.startswith(NOT_CHECKED)
        for line in _texts_written_in_place(tree, refusals, inside_refusal=False)
    ]
    assert inline == []


@pytest.mark.parametrize(
    ("amount", "shown"),
    [
        ("20", "$20.00"),
        ("12.345", "$12.35"),
        ("0.004", "$0.004"),  # not $0.00: a cap of 4 credits
        ("0.0033333333333333333333333333", "$0.00333"),  # a third of a cent: not 28 digits
        ("3.3333333333333333333333333333", "$3.33"),
        ("0", "$0.00"),
    ],
)
def test_dollars_are_shown_to_the_cent_or_to_three_digits_below_one(amount: str, shown: str):
    assert messages.dollars(Decimal(amount)) == shown


@pytest.mark.parametrize(("credits_per_usd", "least"), [(1000, "$0.001"), (3, "$0.34"), (300, "$0.00334")])
def test_the_least_budget_named_is_one_that_is_accepted(credits_per_usd: int, least: str):
    """Rounded up: "Set at least $0.3333333333333333333333333333" was itself refused (x 3 < 1)."""
    said = messages.under_one_credit("budget", credits_per_usd)
    assert f"Set at least {least}," in said
    assert Decimal(least.lstrip("$")) * credits_per_usd >= 1
