"""The test catalog builder (tests/catalogs.py) makes the catalog its TOML twin describes."""

from __future__ import annotations

from decimal import Decimal

from tests.catalogs import catalog, flat, model, route
from tests.durable import CATALOG as DURABLE_TOML_CATALOG


def test_the_builder_makes_the_same_catalog_as_the_toml_it_stands_for() -> None:
    mini = {"model": "openai/gpt-image-1-mini/edit", "max_input_images": 4}
    formats = {"backgrounds": ["auto"], "output_formats": ["png"]}
    built = catalog(
        model(
            "gpt-image-1.5",
            name="GPT Image 1.5",
            qualities=["low", "medium", "high", "auto"],
            max_input_images=16,
        ),
        model(
            "ws-mini",
            name="WS Mini",
            qualities=["auto"],
            sizes=["auto"],
            max_input_images=4,
            price=flat(0.02, qualities=["high"]),
            routes=[route("wavespeed", price=0.02, **mini, **formats)],
        ),
        model(
            "atlas-mini",
            name="Atlas Mini",
            sizes=["1024x1024"],
            qualities=["low", "medium", "high"],
            max_input_images=4,
            price=0.004,
            routes=[route("atlascloud", price=0.004, **mini, **formats)],
        ),
    )
    assert built == DURABLE_TOML_CATALOG


def test_a_model_is_list_priced_at_every_quality_it_offers_and_sold_by_openai_unless_told() -> None:
    entry = catalog(model("m", qualities=["low", "xhigh", "auto"], price=0.05)).get("m")
    assert entry.prices == {
        q: {"square": Decimal("0.05"), "other": Decimal("0.05")} for q in ("low", "xhigh")
    }
    assert [r.provider for r in entry.routes] == ["openai"]
    default = catalog(model("d")).get("d")
    assert default.prices["high"] == {"square": Decimal("0.01"), "other": Decimal("0.02")}
