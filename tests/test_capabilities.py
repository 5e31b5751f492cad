"""The catalog is checked against the adapters at start-up: a route that declares what its adapter
cannot send is disabled (and shown), the others keep editing; one whose masked edits only miss some
backgrounds is narrowed to those it sends (and shown), and keeps editing."""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from importlib import resources
from pathlib import Path

import aiohttp
import pytest

from bot.app import build_providers
from bot.capabilities import check_routes, route_problems
from bot.catalog import PACKAGED_CATALOG, Catalog, load_catalog, parse_catalog
from bot.config import load_settings
from bot.errors import InvalidOptions
from bot.lifecycle import ModelLifecycle
from bot.providers.base import EditRequest, InputImage, Provider, ValidatingProvider
from bot.providers.errors import ProviderError
from bot.routing.rules import Needs, blockers
from bot.services.edits import MaskSpec
from bot.storage import Storage
from tests.catalogs import NOVEMBER_CATALOG
from tests.fakes.atlascloud_server import FakeAtlas
from tests.fakes.oneminai_server import FakeOneMin
from tests.fakes.openai_server import FakeOpenAI
from tests.fixtures import provider_env, wired_services
from tests.live import run_to_end
from tests.test_routing import edit_job

KEYS = {
    "DISCORD_TOKEN": "t" * 30,
    "OPENAI_API_KEY": "sk-test-0123456789",
    "ATLASCLOUD_API_KEY": "atlas-0123456789",
    "WAVESPEED_API_KEY": "ws-0123456789",
    "SEGMIND_API_KEY": "SG_0123456789",
    "ONEMINAI_API_KEY": "1min-0123456789",
}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def providers(catalog: Catalog, session: aiohttp.ClientSession, tmp_path) -> dict[str, Provider]:
    return build_providers(load_settings({**KEYS, "DATA_DIR": str(tmp_path)}), session, catalog)


@pytest.mark.parametrize("path", [None, NOVEMBER_CATALOG], ids=["packaged", "november-2026"])
async def test_the_shipped_catalogs_promise_only_what_the_adapters_send(path, session, tmp_path):
    catalog = load_catalog(path)
    check = check_routes(catalog, providers(catalog, session, tmp_path))
    assert (check.disabled, check.narrowed, check.catalog) == ({}, {}, catalog)


async def test_a_route_that_promises_more_than_its_adapter_is_disabled_and_the_rest_edit(session, tmp_path):
    price = {"low": {"square": 0.01, "other": 0.01}}
    catalog = parse_catalog(
        {
            "models": {
                "gpt-image-2": {
                    "qualities": ["low"],
                    "price": price,
                    "mask": True,
                    "free_sizes": True,
                    "routes": [
                        # Atlas's GPT Image 2 edit has no mask field, and no 1536x1536 size.
                        {"provider": "atlascloud", "model": "openai/gpt-image-2/edit", "mask": True},
                        {
                            "provider": "wavespeed",
                            "model": "openai/gpt-image-2/edit",
                            "sizes": ["1536x1536"],
                            "mask": False,
                            "backgrounds": ["auto"],
                            "output_formats": ["png"],
                        },
                        {"provider": "openai"},
                    ],
                }
            }
        }
    )
    built = providers(catalog, session, tmp_path)
    atlas, wavespeed, _ = catalog.get("gpt-image-2").routes
    assert any(p.startswith("a mask") for p in route_problems(atlas, built["atlascloud"]))  # type: ignore[arg-type]
    assert "size 1536x1536 (InvalidInput)" in route_problems(wavespeed, built["wavespeed"])  # type: ignore[arg-type]
    disabled = check_routes(catalog, built).disabled
    assert set(disabled) == {atlas.key, wavespeed.key}
    lifecycle = ModelLifecycle(catalog, set(built), lambda: dt.date(2026, 12, 6), disabled=disabled)
    model = catalog.get("gpt-image-2")
    assert [r.provider for r in lifecycle.live_routes(model)] == ["openai"]
    assert any("gpt-image-2 on atlascloud is disabled" in w for w in lifecycle.warnings())


async def test_a_route_promising_transparency_in_a_format_its_adapter_refuses_it_in_is_disabled(
    session, tmp_path
):
    """1min.ai makes a transparent background only as PNG: a route that leaves `transparent_formats`
    at PNG and WebP would send WebP jobs there, each paid for and refused."""
    price = {"low": {"square": 0.01, "other": 0.01}}
    onemin = {"provider": "oneminai", "model": "gpt-image-2", "qualities": ["low"], "mask": False}
    onemin |= {"sizes": ["1024x1024"], "backgrounds": ["auto", "transparent"], "max_prompt_chars": 4000}
    raw = {"models": {"gpt-image-2": {"qualities": ["low"], "price": price, "routes": [onemin]}}}
    built = providers(parse_catalog(raw), session, tmp_path)
    [promising] = parse_catalog(raw).get("gpt-image-2").routes
    assert route_problems(promising, built["oneminai"]) == ["background transparent as webp (InvalidInput)"]  # type: ignore[arg-type]
    onemin["transparent_formats"] = ["png"]
    [honest] = parse_catalog(raw).get("gpt-image-2").routes
    assert route_problems(honest, built["oneminai"]) == []  # type: ignore[arg-type]


async def test_a_png_only_transparency_is_probed_as_png_whatever_format_the_route_lists_first(
    session, tmp_path
):
    price = {"low": {"square": 0.01, "other": 0.01}}
    onemin = {"provider": "oneminai", "model": "gpt-image-2", "qualities": ["low"], "mask": False}
    onemin |= {"sizes": ["1024x1024"], "max_prompt_chars": 4000, "backgrounds": ["auto", "transparent"]}
    onemin |= {"output_formats": ["webp", "png"], "transparent_formats": ["png"]}
    raw = {"models": {"gpt-image-2": {"qualities": ["low"], "price": price, "routes": [onemin]}}}
    built = providers(parse_catalog(raw), session, tmp_path)
    [route] = parse_catalog(raw).get("gpt-image-2").routes
    assert route_problems(route, built["oneminai"]) == []  # type: ignore[arg-type]


@pytest.mark.parametrize("path", [None, NOVEMBER_CATALOG], ids=["packaged", "november-2026"])
async def test_every_route_routing_finds_for_a_masked_transparent_edit_can_send_it(path, session, tmp_path):
    """A mask and a transparent background together, which each route's start-up check never tried at
    once: 1min.ai's inpainter takes no background, and routing sent such edits there to be refused."""
    catalog = load_catalog(path)
    built = providers(catalog, session, tmp_path)
    probe = InputImage(data=b"\x89PNG probe", mime="image/png", width=1024, height=1024)
    needs = Needs(1, "1024x1024", "low", "transparent", "png", mask=True, prompt_chars=5)
    refused = []
    for model in catalog.models.values():
        for route in model.routes:
            adapter = built.get(route.provider)
            if not isinstance(adapter, ValidatingProvider) or blockers(route, needs):
                continue
            request = EditRequest(
                images=(probe,),
                prompt="probe",
                model=route.model,
                quality="low",
                size="1024x1024",
                background="transparent",
                output_format="png",
                mask=probe,
                deadline=time.monotonic() + 60,
            )
            try:
                adapter.validate(request)
            except ProviderError as exc:
                refused.append((model.id, route.provider, type(exc).__name__))
    assert refused == []


async def test_a_route_promising_a_background_its_inpainter_has_not_is_narrowed_not_disabled(
    session, tmp_path
):
    """A catalog copy made before `mask_backgrounds`: its 1min.ai mask route would take masked
    transparent edits its adapter refuses, so the check names the combination and narrows the route's
    masked edits to the background that passed; the route stays live for everything else."""
    price = {"low": {"square": 0.01, "other": 0.01}}
    onemin = {"provider": "oneminai", "model": "gpt-image-1-mini", "qualities": ["low"], "mask": True}
    onemin |= {"sizes": ["1024x1024"], "backgrounds": ["auto", "transparent"], "max_prompt_chars": 4000}
    onemin |= {"transparent_formats": ["png"], "output_formats": ["png"]}
    raw = {"models": {"gpt-image-1-mini": {"qualities": ["low"], "price": price, "routes": [onemin]}}}
    built = providers(parse_catalog(raw), session, tmp_path)
    [promising] = parse_catalog(raw).get("gpt-image-1-mini").routes
    assert route_problems(promising, built["oneminai"]) == [  # type: ignore[arg-type]
        "a mask with background transparent as png (InvalidInput)"
    ]
    check = check_routes(parse_catalog(raw), built)
    assert check.disabled == {}
    assert check.narrowed == {
        promising.key: "its masked edits take background auto only: the oneminai adapter cannot send "
        "a mask with background transparent as png (InvalidInput)"
    }
    [narrowed] = check.catalog.get("gpt-image-1-mini").routes
    assert narrowed == replace(promising, mask_backgrounds=("auto",))
    onemin["mask_backgrounds"] = ["auto"]
    [honest] = parse_catalog(raw).get("gpt-image-1-mini").routes
    assert route_problems(honest, built["oneminai"]) == []  # type: ignore[arg-type]
    assert check_routes(parse_catalog(raw), built).narrowed == {}


def catalog_with_atlas_masks(tmp_path: Path) -> Catalog:
    """The packaged catalog with Atlas's GPT Image 2 route said to take masks (its edit has no mask
    field): every mask probe fails there, and nothing else does."""
    text = (resources.files("bot") / "data" / PACKAGED_CATALOG).read_text("utf-8")
    # The first `mask = false` after Atlas's route id is that route's own (lines up to the next `[`).
    route = r'(provider = "atlascloud"\nmodel = "openai/gpt-image-2/edit"\n(?:[^\[].*\n)*?)mask = false'
    text, found = re.subn(route, r"\1mask = true", text)
    assert found == 1
    path = tmp_path / "catalog.toml"
    path.write_text(text)
    return load_catalog(path)


async def test_a_route_whose_every_masked_edit_fails_keeps_its_unmasked_edits(
    storage: Storage, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The start-up check used to disable such a route for everything, though only its masks fail: now
    it is narrowed to no masked edits (logged, shown by `/diagnose`), its unmasked edits still run on it
    and a masked edit goes to a route that takes masks."""
    catalog = catalog_with_atlas_masks(tmp_path)
    async with FakeAtlas() as atlas, FakeOpenAI() as openai, aiohttp.ClientSession() as session:
        env = {**provider_env("atlascloud", atlas), **provider_env("openai", openai)}
        env |= {"PROVIDER_ORDER": "atlascloud,openai", "DATA_DIR": str(tmp_path), "STARTING_CREDITS": "1000"}
        settings = load_settings({"DISCORD_TOKEN": "t" * 30, **env})
        built = build_providers(settings, session, catalog)
        atlas_route = next(
            r for r in catalog.get("gpt-image-2").routes if r.model == "openai/gpt-image-2/edit"
        )
        problems = route_problems(atlas_route, built["atlascloud"])  # type: ignore[arg-type]
        assert problems and all(p.startswith("a mask") for p in problems)

        check = check_routes(catalog, built)
        assert check.disabled == {}
        assert check.narrowed[atlas_route.key].startswith(
            "it takes no masked edits: the atlascloud adapter cannot send a mask (InvalidInput)"
        )
        narrowed = next(r for r in check.catalog.get("gpt-image-2").routes if r.key == atlas_route.key)
        assert narrowed == replace(atlas_route, mask=False)
        assert "narrowed: it takes no masked edits" in caplog.text and "set its mask = false" in caplog.text

        services = wired_services(
            settings, catalog, storage, built, approve=[1], today=lambda: dt.date(2026, 11, 1)
        )
        plain = edit_job(model="gpt-image-2", size="1024x1024", quality="low")
        masked = replace(plain, mask=MaskSpec(grid=(3, 3), cells=(5,)))
        assert (await run_to_end(services.edits, plain)).provider == "atlascloud"
        assert (await run_to_end(services.edits, masked)).provider == "openai"

    assert all("mask" not in str(r.json) for r in atlas.requests if r.json)
    assert any(
        "gpt-image-2 on atlascloud is narrowed: it takes no masked edits" in line
        for line in services.edits.lifecycle.warnings()
    )


async def test_a_model_whose_every_configured_mask_route_is_narrowed_is_not_offered_for_masks(
    tmp_path: Path,
) -> None:
    """With its masks narrowed off every configured route, the model still said it takes masks: /mask
    offered it, and a masked edit of it (a default model's, every /mask without a model) was refused by
    its routes instead of as a model without masks."""
    catalog = catalog_with_atlas_masks(tmp_path)
    async with FakeAtlas() as atlas, aiohttp.ClientSession() as session:
        settings = load_settings(
            {"DISCORD_TOKEN": "t" * 30, **provider_env("atlascloud", atlas), "DATA_DIR": str(tmp_path)}
        )
        check = check_routes(catalog, build_providers(settings, session, catalog))
    assert catalog.get("gpt-image-2").mask
    assert any(key[0] == "atlascloud" for key in check.narrowed)
    assert not check.catalog.get("gpt-image-2").mask


def catalog_before_mask_backgrounds(tmp_path: Path) -> Catalog:
    """The November catalog as an operator copied it before `mask_backgrounds` existed."""
    text = re.sub(r"(?m)^mask_backgrounds = .*\n", "", NOVEMBER_CATALOG.read_text())
    assert "mask_backgrounds =" not in text
    path = tmp_path / "catalog.toml"
    path.write_text(text)
    return load_catalog(path)


async def test_an_operator_catalog_without_mask_backgrounds_keeps_1minai_for_all_but_masked_backgrounds(
    storage: Storage, tmp_path: Path
) -> None:
    """The start-up check used to disable the whole 1min.ai route of such a catalog (its inpainter takes
    no background): now it still makes unmasked edits and masked `auto` ones, a masked transparent edit
    goes to OpenAI, and `/diagnose` says why the route is narrowed."""
    catalog = catalog_before_mask_backgrounds(tmp_path)
    async with FakeOneMin() as onemin, FakeOpenAI() as openai, aiohttp.ClientSession() as session:
        env = {**provider_env("oneminai", onemin), **provider_env("openai", openai)}
        env |= {"PROVIDER_ORDER": "oneminai,openai", "DATA_DIR": str(tmp_path), "STARTING_CREDITS": "1000"}
        settings = load_settings({"DISCORD_TOKEN": "t" * 30, **env})
        services = wired_services(
            settings,
            catalog,
            storage,
            build_providers(settings, session, catalog),
            approve=[1],
            today=lambda: dt.date(2026, 11, 1),
        )
        plain = edit_job(
            model="gpt-image-1-mini", size="1024x1024", background="transparent", output_format="png"
        )
        masked = replace(
            edit_job(model="gpt-image-1-mini", size="1024x1024"), mask=MaskSpec(grid=(3, 3), cells=(5,))
        )
        transparent = replace(plain, mask=masked.mask)

        assert (await run_to_end(services.edits, plain)).provider == "oneminai"
        assert (await run_to_end(services.edits, masked)).provider == "oneminai"
        assert (await run_to_end(services.edits, transparent)).provider == "openai"

    features = [r.json["type"] for r in onemin.requests if r.endpoint == "features"]
    assert features == ["IMAGE_EDITOR", "IMAGE_INPAINTER"]
    assert openai.requests[-1].fields["background"] == "transparent"
    assert any(
        "gpt-image-1-mini on oneminai is narrowed: its masked edits take background auto only" in line
        for line in services.edits.lifecycle.warnings()
    )


async def test_a_masked_transparent_edit_only_a_narrowed_route_sells_is_refused_before_anything_is_held(
    storage: Storage, tmp_path: Path
) -> None:
    catalog = catalog_before_mask_backgrounds(tmp_path)
    async with FakeOneMin() as onemin, aiohttp.ClientSession() as session:
        env = {**provider_env("oneminai", onemin), "DATA_DIR": str(tmp_path), "STARTING_CREDITS": "1000"}
        settings = load_settings({"DISCORD_TOKEN": "t" * 30, **env})
        providers = build_providers(settings, session, catalog)
        services = wired_services(
            settings, catalog, storage, providers, approve=[1], today=lambda: dt.date(2026, 11, 1)
        )
        job = edit_job(
            model="gpt-image-1-mini", size="1024x1024", background="transparent", output_format="png"
        )
        with pytest.raises(InvalidOptions) as refused:
            await services.edits.prepare(replace(job, mask=MaskSpec(grid=(3, 3), cells=(5,))))

    assert refused.value.code == "route_mask_background"
    assert onemin.requests == []
    assert await storage.ledger.get_account(1, 2) is None
