"""The model catalog: pricing arithmetic, retirements and file validation."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from pathlib import Path

import pytest

from bot.catalog import (
    MODEL_KEYS,
    ROUTE_KEYS,
    Catalog,
    CatalogError,
    SizeRules,
    actual_usd,
    load_catalog,
    parse_catalog,
    reserve_usd,
    usd_to_credits,
)
from bot.config import PROVIDER_ENV
from bot.domain.options import Usage
from bot.errors import InvalidOptions
from bot.lifecycle import ModelLifecycle
from tests.catalogs import NOVEMBER_CATALOG, flat, model
from tests.catalogs import catalog as build_catalog

TODAY = dt.date(2026, 11, 21)


@pytest.fixture(scope="module")
def catalog():
    # The catalog as shipped in November 2026 (the 1.x line): the behaviours pinned here are the
    # catalog's arithmetic and rules, which must not change when the current models do.
    return load_catalog(NOVEMBER_CATALOG)


def test_packaged_catalog_ships_the_three_models_with_list_prices(catalog):
    assert set(catalog.models) >= {"gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5"}
    mini = catalog.get("gpt-image-1-mini")
    assert mini.image_price("low", "1024x1024") == Decimal("0.005")
    assert mini.image_price("high", "1536x1024") == Decimal("0.052")
    assert catalog.get("gpt-image-1").image_price("medium", "1024x1536") == Decimal("0.063")
    assert not mini.input_fidelity and catalog.get("gpt-image-1").input_fidelity


@pytest.mark.parametrize(
    ("usd", "per_usd", "credits"),
    [("0.011", 1000, 11), ("0.0111", 1000, 12), ("0.25", 1000, 250), ("0.005", 100, 1), ("0", 1000, 0)],
)
def test_credits_are_the_ceiling_of_exact_decimal_cost(usd, per_usd, credits):
    assert usd_to_credits(Decimal(usd), per_usd) == credits


def test_auto_quality_and_size_reserve_the_worst_case(catalog):
    m = catalog.get("gpt-image-1.5")
    assert reserve_usd(m, quality="auto", size="auto", count=3, n_inputs=1, prompt="x") == Decimal("0.60")
    assert reserve_usd(m, quality="low", size="1024x1024", count=1, n_inputs=2, prompt="x") == Decimal(
        "0.009"
    )


def test_reserve_covers_input_tokens_for_token_priced_models(catalog):
    m = catalog.get("gpt-image-1-mini")
    reserved = reserve_usd(m, quality="low", size="1024x1024", count=1, n_inputs=2, prompt="x" * 100)
    # 2 × 6500 image tokens at $2.50/M plus 100 text tokens at $2/M on top of the $0.005 image.
    assert reserved == Decimal("0.005") + Decimal("0.0325") + Decimal("0.0002")


def test_a_prompts_text_tokens_are_held_at_one_per_utf8_byte(catalog):
    """A tokenizer working on bytes never makes more tokens than the prompt's UTF-8 bytes: emoji and
    some scripts take several tokens per character, more than any per-character guess holds."""
    m = catalog.get("gpt-image-1-mini")
    base = reserve_usd(m, quality="low", size="1024x1024", count=1, n_inputs=1, prompt="")
    emoji = reserve_usd(m, quality="low", size="1024x1024", count=1, n_inputs=1, prompt="🎨" * 100)
    assert emoji - base == Decimal(400) * m.tokens.text_input / 1_000_000  # 4 bytes each


def test_actual_cost_prefers_provider_charge_then_usage_then_list_price(catalog):
    m = catalog.get("gpt-image-1-mini")
    common = dict(
        images=1, quality="medium", size="1024x1024", requested_quality="auto", requested_size="auto"
    )
    assert actual_usd(m, usage=None, provider_cost="0.004", **common) == Decimal("0.004")
    usage = Usage(input_text_tokens=50, input_image_tokens=1000, output_image_tokens=1000)
    assert actual_usd(m, usage=usage, **common) == Decimal("0.0106")
    assert actual_usd(m, usage=None, **common) == Decimal("0.011")


def lifecycle(catalog: Catalog, today: dt.date) -> ModelLifecycle:
    """How the catalog's dates read on `today` to a bot with a key for every provider."""
    return ModelLifecycle(catalog, frozenset(PROVIDER_ENV), lambda: today)


def test_retired_model_resolves_to_its_replacement_with_a_notice(catalog):
    resolution = lifecycle(catalog, TODAY).resolve("gpt-image-1", picked=True)
    assert resolution.model.id == "gpt-image-1.5"
    assert "retired" in (resolution.notice or "")


def test_model_near_shutdown_warns_and_past_shutdown_without_replacement_is_refused(catalog):
    notice = lifecycle(catalog, TODAY).resolve("gpt-image-1-mini", picked=True).notice
    assert "will be retired on 2026-12-01" in (notice or "")
    with pytest.raises(InvalidOptions, match="no longer available") as refused:
        lifecycle(catalog, dt.date(2026, 12, 1)).resolve("gpt-image-1-mini", picked=True)
    assert refused.value.code == "model_retired"
    assert "replacement" not in refused.value.user_message  # none is offered: the catalog sets none
    assert "gpt-image-1-mini" not in [m.id for m in lifecycle(catalog, dt.date(2026, 12, 2)).available()]
    assert any("retired" in w for w in lifecycle(catalog, TODAY).warnings())


@pytest.mark.parametrize(
    ("offered", "default", "used"),
    [
        (["low", "medium", "high", "auto"], "high", "high"),  # offered: unchanged
        (["low", "medium", "high", "auto"], "max", "high"),  # the dearest level at or below
        (["low", "medium", "high", "auto"], "xhigh", "high"),
        (["low", "medium", "high", "xhigh", "max"], "auto", "high"),  # auto ranks as high
        (["medium", "high"], "low", "medium"),  # none at or below: the cheapest offered
        (["auto"], "max", "auto"),
    ],
)
def test_a_default_quality_the_model_lacks_means_its_nearest_level_at_or_below(offered, default, used):
    every_level = flat(0.01, qualities=["low", "medium", "high", "xhigh", "max"])
    entry = build_catalog(model("m", qualities=offered, price=every_level)).get("m")
    assert entry.quality_for_default(default) == used


def test_unknown_model_is_a_user_error(catalog):
    with pytest.raises(InvalidOptions, match="Unknown model"):
        catalog.get("dall-e-9")


def test_admin_catalog_file_replaces_the_packaged_one(tmp_path: Path):
    path = tmp_path / "catalog.toml"
    path.write_text(
        '[models."gpt-image-2"]\nname = "GPT Image 2"\nmax_input_images = 4\n'
        "price.low = { square = 0.01, other = 0.02 }\nprice.medium = { square = 0.03, other = 0.04 }\n"
        'price.high = { square = 0.05, other = 0.06 }\nroutes = [{ provider = "openai" }]\n'
    )
    catalog = load_catalog(path)
    assert list(catalog.models) == ["gpt-image-2"]
    assert catalog.get("gpt-image-2").routes[0].model == "gpt-image-2"


LOW = 'qualities = ["low"]\n'
LOW_PRICE = "price.low = { square = 1, other = 1 }\n"
OPENAI = 'routes = [{ provider = "openai" }]\n'


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            '[models.a]\nprice.low = { square = 1, other = 1 }\nroutes = [{ provider = "openai" }]\n',
            "no price",
        ),
        (
            '[models.a]\nqualities = ["low"]\nprice.low = { square = 1, other = 1 }\nroutes = []\n',
            "no routes",
        ),
        (
            '[models.a]\nqualities = ["low"]\nreplacement = "zz"\nprice.low = { square = 1, other = 1 }\n'
            'routes = [{ provider = "openai" }]\n',
            "unknown model",
        ),
        ("models = 3", "table of model"),
        ("not toml [", "cannot read"),
        # A value of another kind where a table belongs: one line saying so, never a traceback.
        (f"[models.a]\n{LOW}price.low = 5\n{OPENAI}", r"models\.a\.price\.low: must be a table"),
        (f"[models.a]\n{LOW}price = 5\n{OPENAI}", r"models\.a\.price: must be a table"),
        (f"[models.a]\n{LOW}{LOW_PRICE}tokens = 5\n{OPENAI}", r"models\.a\.tokens: must be a table"),
        (f'[models.a]\n{LOW}{LOW_PRICE}routes = ["openai"]\n', r"models\.a\.routes\[0\]: must be a table"),
        ("[models]\na = 5\n", r"models\.a: must be a table"),
        # A negative price or token rate would shrink holds and charges (or make a hold negative).
        (
            f"[models.a]\n{LOW}price.low = {{ square = -0.05, other = 1 }}\n{OPENAI}",
            r"models\.a\.price\.low\.square: must be a number of USD, 0 or more",
        ),
        (
            f"[models.a]\n{LOW}{LOW_PRICE}tokens = {{ text_input = -5, image_input = 1, image_output = 1 }}\n"
            f"{OPENAI}",
            r"models\.a\.tokens\.text_input: must be a number of USD, 0 or more",
        ),
    ],
)
def test_broken_catalog_files_are_refused_with_the_reason(tmp_path: Path, text: str, problem: str):
    path = tmp_path / "catalog.toml"
    path.write_text(text)
    with pytest.raises(CatalogError, match=problem):
        load_catalog(path)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        # A datetime: every comparison with today's date would raise TypeError in the running bot.
        (
            "shutdown = 2027-02-10T00:00:00Z",
            "shutdown: must be a date (YYYY-MM-DD, no time of day), not 2027-02-10T00:00:00+00:00",
        ),
        ("shutdown = 2027-02-10T00:00:00", "shutdown: must be a date (YYYY-MM-DD, no time of day)"),
        ('shutdown = "next year"', "shutdown: must be a date (YYYY-MM-DD, no time of day), not 'next year'"),
        # An edge multiple of 0 divided by zero when a member typed a size.
        ("free_sizes = { multiple = 0 }", "free_sizes.multiple: must be a whole number of at least 1"),
        ("free_sizes = { max_ratio = 0 }", "free_sizes.max_ratio: must be a number of at least 1"),
        ("free_sizes = { max_edge = -1 }", "free_sizes.max_edge: must be a whole number of at least 1"),
        ('free_sizes = { multiple = "16" }', "free_sizes.multiple: must be a whole number of at least 1"),
        ("free_sizes = { max_egde = 2048 }", "free_sizes: unknown rule 'max_egde'"),
        ('free_sizes = "yes"', "free_sizes: must be true, false or a table of rules"),
        # A negative hold for input images: every edit then failed on the ledger's CHECK constraint.
        ("input_tokens_per_image = -100000", "input_tokens_per_image: must be at least 1 (a whole number)"),
        ("max_prompt_chars = -5", "max_prompt_chars: must be at least 1 (a whole number), not -5"),
        ("max_input_images = 2.5", "max_input_images: must be at least 1 (a whole number), not 2.5"),
        # A non-empty string is truthy: "no" read as true.
        ('mask = "no"', "mask: must be true or false, not 'no'"),
        ("input_fidelity = 1", "input_fidelity: must be true or false, not 1"),
    ],
)
def test_model_values_that_would_fail_at_run_time_are_refused_at_load(
    tmp_path: Path, line: str, problem: str
) -> None:
    path = tmp_path / "catalog.toml"
    path.write_text(f"[models.a]\n{LOW}{LOW_PRICE}{line}\n{OPENAI}")
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    assert f"models.a.{problem}" in str(info.value)


@pytest.mark.parametrize(
    ("line", "field", "value"),
    [
        ("max_input_images = 4.0", "max_input_images", 4),
        ("max_prompt_chars = 32000.0", "max_prompt_chars", 32000),
        ("input_tokens_per_image = 6600.0", "input_tokens_per_image", 6600),
        (
            "free_sizes = { max_ratio = 2.5, max_edge = 2048.0 }",
            "size_rules",
            SizeRules(max_edge=2048, max_ratio=Decimal("2.5")),
        ),
        ("free_sizes = {}", "size_rules", None),
    ],
)
def test_values_a_catalog_file_could_hold_before_they_were_checked_still_load(
    tmp_path: Path, line: str, field: str, value: object
):
    """A whole number written as a float (`4.0`) was read with int() and an empty `free_sizes` table
    meant none: an operator's CATALOG_PATH that worked must not stop the bot after an upgrade."""
    path = tmp_path / "catalog.toml"
    path.write_text(f"[models.a]\n{LOW}{LOW_PRICE}{line}\n{OPENAI}")
    assert getattr(load_catalog(path).models["a"], field) == value


def test_a_catalog_file_that_is_not_utf8_is_refused_with_the_reason(tmp_path: Path):
    path = tmp_path / "catalog.toml"
    path.write_bytes("# prix en €\n[models.a]\n".encode("cp1252"))  # an editor's Windows save
    with pytest.raises(CatalogError, match=r"catalog\.toml: it is not UTF-8 text \(byte 0x80 at offset 10\)"):
        load_catalog(path)


# ----------------------------------------------------------------------------- routes (issue 3)


def test_packaged_routes_carry_price_and_capabilities_per_provider(catalog):
    mini = {r.provider: r for r in catalog.get("gpt-image-1-mini").routes}
    assert list(mini) == ["openai", "atlascloud", "wavespeed", "segmind", "oneminai"]
    assert mini["openai"].list_priced and mini["openai"].n and mini["openai"].max_input_images == 16
    assert (mini["atlascloud"].price, mini["wavespeed"].price) == (Decimal("0.004"), Decimal("0.02"))
    assert not mini["atlascloud"].mask and not mini["wavespeed"].mask
    assert (mini["segmind"].mask_convention, mini["oneminai"].mask_convention) == ("alpha", "white")
    assert mini["wavespeed"].sizes == ("auto",) and mini["wavespeed"].qualities == ("auto",)
    assert "auto" not in mini["atlascloud"].sizes and mini["atlascloud"].output_formats == ("png",)
    assert mini["oneminai"].max_prompt_chars == 4000 and mini["oneminai"].max_input_images == 1
    assert not any(r.n for name, r in mini.items() if name != "openai")
    full = {r.provider: r for r in catalog.get("gpt-image-1").routes}
    assert full["wavespeed"].model == "openai/gpt-image-1/edit" and full["wavespeed"].mask
    assert full["openai"].input_fidelity and not full["atlascloud"].input_fidelity


def test_a_route_without_capabilities_inherits_the_models_and_is_list_priced_without_n():
    catalog = parse_catalog(
        {
            "models": {
                "m": {
                    "qualities": ["low", "high"],
                    "sizes": ["1024x1024"],
                    "max_input_images": 3,
                    "mask": True,
                    "max_prompt_chars": 900,
                    "price": {"low": {"square": 1, "other": 1}, "high": {"square": 2, "other": 2}},
                    "routes": [
                        {"provider": "openai"},
                        {"provider": "segmind", "model": "s", "price": "0.05"},
                    ],
                }
            }
        }
    )
    plain, flat = catalog.get("m").routes
    assert (plain.model, plain.price, plain.n, plain.mask, plain.mask_convention) == (
        "m",
        None,
        False,
        True,
        None,  # the adapter's own convention
    )
    assert (plain.qualities, plain.sizes, plain.max_input_images, plain.max_prompt_chars) == (
        ("low", "high"),
        ("1024x1024",),
        3,
        900,
    )
    assert plain.backgrounds == ("auto", "opaque", "transparent") and plain.output_formats == (
        "png",
        "jpeg",
        "webp",
    )
    assert flat.price == Decimal("0.05") and not flat.list_priced


@pytest.mark.parametrize(
    ("route", "problem"),
    [
        ({"provider": "openai", "mask_conventon": "white"}, "unknown key(s) mask_conventon"),
        ({"provider": "openai", "mask_convention": "black"}, "mask_convention: must be one of alpha, white"),
        ({"provider": "openai", "price": -1}, "price: must be"),
        ({"provider": "openai", "min_price": -1}, "min_price: must be a USD amount of 0 or more"),
        ({"provider": "openai", "price": 1, "min_price": 1}, "min_price: must be a USD amount"),
        ({"provider": "openai", "sizes": ["2048x2048"]}, "sizes: unknown value(s) '2048x2048'"),
        ({"provider": "openai", "output_formats": []}, "output_formats: must list at least one value"),
        ({"provider": "openai", "max_input_images": 0}, "max_input_images: must be at least 1"),
        (
            {"provider": "oneminai", "backgrounds": ["auto"], "mask_backgrounds": ["auto", "transparent"]},
            "mask_backgrounds: must be among the route's backgrounds",
        ),
        (
            {"provider": "oneminai", "mask": True, "mask_backgrounds": []},
            "mask_backgrounds: must list at least one value (a route that takes no masked edits says "
            "mask = false)",
        ),
        # Values that passed and failed members later (or read "no" as true).
        ({"provider": "openai", "mask": "no"}, "mask: must be true or false, not 'no'"),
        ({"provider": "openai", "n": "false"}, "n: must be true or false, not 'false'"),
        ({"provider": "openai", "free_sizes": 1}, "free_sizes: must be true or false, not 1"),
        ({"provider": "openai", "input_fidelity": "yes"}, "input_fidelity: must be true or false"),
        ({"provider": "openai", "max_prompt_chars": -5}, "max_prompt_chars: must be at least 1"),
        ({"provider": "openai", "max_prompt_chars": 0}, "max_prompt_chars: must be at least 1"),
        (
            {"provider": "openai", "shutdown": dt.datetime(2027, 2, 10, tzinfo=dt.UTC)},
            "shutdown: must be a date (YYYY-MM-DD, no time of day)",
        ),
        # A misspelt provider: no key is ever configured for it, so the route would silently never run.
        ({"provider": "opnai"}, "provider: unknown provider 'opnai' (known: openai, atlascloud,"),
    ],
)
def test_broken_routes_are_refused_with_the_reason(route, problem):
    raw = {
        "models": {
            "m": {"qualities": ["low"], "price": {"low": {"square": 1, "other": 1}}, "routes": [route]}
        }
    }
    with pytest.raises(CatalogError) as info:
        parse_catalog(raw)
    assert problem in str(info.value)
    assert "models.m.routes[0]" in str(info.value)


def test_misspelt_model_keys_are_refused_all_at_once():
    # `shutdwon` and `replacment` were ignored: the model then kept no date and no successor.
    raw = {
        "models": {
            "m": {
                "qualities": ["low"],
                "price": {"low": {"square": 1, "other": 1}},
                "shutdwon": "2026-12-01",
                "replacment": "n",
                "routes": [{"provider": "opnai"}],
            }
        }
    }
    with pytest.raises(CatalogError) as info:
        parse_catalog(raw)
    assert "models.m: unknown key(s) replacment, shutdwon" in str(info.value)
    assert "models.m.routes[0].provider: unknown provider 'opnai'" in str(info.value)  # in the same list


@pytest.mark.parametrize("path", [None, NOVEMBER_CATALOG], ids=["packaged", "november"])
def test_the_shipped_catalogs_use_only_known_keys_and_providers(path: Path | None):
    catalog = load_catalog(path)
    assert {r.provider for m in catalog.models.values() for r in m.routes} <= set(PROVIDER_ENV)


def test_every_key_the_catalog_takes_is_documented_at_the_top_of_the_packaged_file():
    header = (Path(__file__).parents[1] / "bot" / "data" / "catalog.toml").read_text().split("\n[", 1)[0]
    documented = set(re.findall(r"[a-z_]+", header))
    assert sorted((MODEL_KEYS | ROUTE_KEYS) - documented) == []
