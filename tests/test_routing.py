"""Routing: eligibility, order, fallback only when a job was provably not taken, circuit breaker,
count emulation and the charge following the serving route.

Three layers: the router with in-memory providers (exact control over each failure), the router
with the real adapters against their fake servers, and the settings/wiring that build it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import io
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

from bot.app import build_providers
from bot.catalog import Catalog, Route, load_catalog, reserve_usd, usd_to_credits
from bot.choices import quality_options
from bot.concurrency import ProviderLimiter, RateLimitWatch
from bot.config import ConfigError, load_settings
from bot.domain.options import Usage
from bot.errors import InvalidOptions
from bot.providers import errors as perr
from bot.providers.atlascloud import AtlasCloudProvider
from bot.providers.base import EditRequest, EditResult, InputImage, OutputImage, Provider
from bot.providers.http import RetryPolicy
from bot.providers.oneminai import OneMinAIProvider
from bot.providers.openai import OpenAIProvider
from bot.providers.segmind import SegmindProvider
from bot.providers.wavespeed import WaveSpeedProvider
from bot.routing import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    CircuitBreaker,
    Hold,
    Needs,
    Router,
    adapt,
    blockers,
    charge_usd,
    nearest_size,
    route_reserve_usd,
)
from bot.routing.breaker import _verdict
from bot.routing.rules import dearest_edit, split_charge
from bot.services.edits import EditJob, EditOptions, EditService, MaskSpec, Upload
from bot.storage import Storage
from tests.catalogs import NOVEMBER_CATALOG, WITH_AUTO, catalog, model
from tests.catalogs import route as catalog_route
from tests.fakes import atlascloud_server as atlas_fake
from tests.fakes import segmind_server as segmind_fake
from tests.fakes.atlascloud_server import FakeAtlas
from tests.fakes.discord import FakeDiscord
from tests.fakes.oneminai_server import FakeOneMin
from tests.fakes.oneminai_server import Fault as OneMinFault
from tests.fakes.openai_server import FakeOpenAI, Fault
from tests.fakes.segmind_server import FakeSegmind
from tests.fakes.wavespeed_server import FakeWaveSpeed
from tests.fixtures import edit_service, provider_env
from tests.harness import running_bot
from tests.live import NoResult, run_to_end

DATA = Path(__file__).parent / "data"
CATALOG = load_catalog(NOVEMBER_CATALOG)  # the 1.x routes, frozen: routing rules, not today's models
MINI = CATALOG.get("gpt-image-1-mini")
FULL = CATALOG.get("gpt-image-1")
FAST = RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.02, max_retry_after=1.0)
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
BASE_ENV = {"DISCORD_TOKEN": "tok-abcdef123456"}


def photo(name: str = "rocket.jpg") -> InputImage:
    data = (DATA / name).read_bytes()
    with Image.open(io.BytesIO(data)) as img:
        mime = {"PNG": "image/png", "JPEG": "image/jpeg"}[img.format or ""]
        return InputImage(data=data, mime=mime, width=img.width, height=img.height)


def openai_mask(size: tuple[int, int]) -> InputImage:
    img = Image.new("RGBA", size, (0, 0, 0, 255))
    img.paste((0, 0, 0, 0), (0, 0, size[0] // 2, size[1] // 2))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return InputImage(buf.getvalue(), "image/png", *size)


def request(**kw: object) -> EditRequest:
    kw.setdefault("deadline", time.monotonic() + 30)
    images = kw.pop("images", (photo(),))
    return EditRequest(images=images, prompt=str(kw.pop("prompt", "p")), model="ignored", **kw)  # type: ignore[arg-type]


class StubProvider:
    """An in-memory provider: each call takes the next outcome (the last one repeats)."""

    def __init__(self, name: str, *outcomes: BaseException | str, cost: str | None = None) -> None:
        self.name = name
        self.outcomes = list(outcomes) or ["ok"]
        self.calls: list[EditRequest] = []
        self.cost = cost

    async def edit(self, req: EditRequest) -> EditResult:
        self.calls.append(req)
        outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return EditResult(
            images=tuple(OutputImage(PNG, "png") for _ in range(req.count)),
            provider=self.name,
            quality=None if req.quality == "auto" else req.quality,
            size=None if req.size == "auto" else req.size,
            request_id=f"{self.name}-{len(self.calls)}",
            cost_usd=self.cost,
        )


def refused(name: str = "x") -> perr.ProviderError:
    """A failure that provably created nothing (the connection was never opened)."""
    return perr.ConnectionFailed("could not connect", provider=name, accepted=False)


def stubs(*providers: StubProvider) -> dict[str, StubProvider]:
    return {p.name: p for p in providers}


# ----------------------------------------------------------------------------- eligibility


def route(**kw: object) -> Route:
    base: dict[str, object] = {"provider": "p", "model": "m", "mask": True, "max_input_images": 4}
    return Route(**{**base, **kw})  # type: ignore[arg-type]


NEEDS = Needs(images=1, size="auto", quality="auto", background="auto", output_format="png")


@pytest.mark.parametrize(
    ("route_kw", "needs_kw", "blocked"),
    [
        ({}, {}, ()),
        ({"mask": False}, {"mask": True}, ("mask",)),
        ({"max_input_images": 1}, {"images": 4}, ("images",)),
        ({"sizes": ("1024x1024",)}, {"size": "1536x1024"}, ("size",)),
        ({"sizes": ("1024x1024", "1536x1024")}, {"size": "auto"}, ()),  # auto is resolved to a shape
        ({"sizes": ("auto",)}, {"size": "1024x1024"}, ("size",)),
        ({"qualities": ("auto",)}, {"quality": "high"}, ("quality",)),
        ({"backgrounds": ("auto",)}, {"background": "transparent"}, ("background",)),
        ({"output_formats": ("png",)}, {"output_format": "webp"}, ("format",)),
        ({}, {"background": "transparent", "output_format": "webp"}, ()),
        (
            {"transparent_formats": ("png",)},
            {"background": "transparent", "output_format": "webp"},
            ("transparent_format",),
        ),
        ({"transparent_formats": ("png",)}, {"background": "opaque", "output_format": "webp"}, ()),
        ({"mask_backgrounds": ("auto",)}, {"mask": True, "background": "transparent"}, ("mask_background",)),
        ({"mask_backgrounds": ("auto",)}, {"mask": True}, ()),
        ({"mask_backgrounds": ("auto",)}, {"background": "transparent"}, ()),  # no mask: any background
        ({"max_prompt_chars": 4000}, {"prompt_chars": 4001}, ("prompt",)),
        ({}, {"input_fidelity": True}, ("input_fidelity",)),
        ({"n": False}, {"count": 4}, ()),  # count is emulated, never refused
        (
            {"mask": False, "output_formats": ("png",)},
            {"mask": True, "output_format": "jpeg"},
            ("mask", "format"),
        ),
    ],
)
def test_a_route_is_eligible_only_when_it_can_honour_every_option(
    route_kw: dict[str, object], needs_kw: dict[str, object], blocked: tuple[str, ...]
) -> None:
    needs = Needs(
        **{
            "images": 1,
            "size": "auto",
            "quality": "auto",
            "background": "auto",
            "output_format": "png",
            **needs_kw,
        }  # type: ignore[arg-type]
    )
    assert blockers(route(**route_kw), needs) == blocked


@pytest.mark.parametrize(
    ("width", "height", "size"),
    [(640, 427, "1536x1024"), (427, 640, "1024x1536"), (500, 500, "1024x1024"), (2000, 100, "1536x1024")],
)
def test_auto_size_on_a_fixed_size_route_is_the_closest_shape(width: int, height: int, size: str) -> None:
    assert nearest_size(("1024x1024", "1024x1536", "1536x1024"), width, height) == size


def test_adapt_uses_the_routes_model_id_and_resolves_auto_size_only_where_needed() -> None:
    req = request(size="auto")  # rocket.jpg is 640x427 (landscape)
    atlas = next(r for r in MINI.routes if r.provider == "atlascloud")
    wavespeed = next(r for r in MINI.routes if r.provider == "wavespeed")

    assert (adapt(req, atlas).model, adapt(req, atlas).size) == ("openai/gpt-image-1-mini/edit", "1536x1024")
    assert adapt(req, wavespeed).size == "auto"
    assert adapt(request(size="1024x1024"), atlas).size == "1024x1024"


def test_auto_size_reaches_no_shipped_gpt_image_2_route_that_documents_only_wxh() -> None:
    """Segmind and 1min.ai document `size` as WxH: an `auto` edit goes there as the nearest standard
    size (a free `WxH` the member typed still goes as typed)."""
    entry = load_catalog().get("gpt-image-2")
    req = request(size="auto")  # rocket.jpg is 640x427 (landscape)
    for provider in ("segmind", "oneminai"):
        route = next(r for r in entry.routes if r.provider == provider)
        assert adapt(req, route).size == "1536x1024", provider
        assert adapt(request(size="1280x768"), route).size == "1280x768", provider
        assert "size" not in blockers(route, Needs(1, "1280x768", "low", "auto", "png")), provider


def test_routes_follow_provider_order_and_unnamed_providers_keep_catalog_order() -> None:
    providers = stubs(*(StubProvider(n) for n in ("openai", "atlascloud", "wavespeed", "segmind")))
    router = Router(providers, order=("wavespeed", "atlascloud"))

    assert [r.provider for r in router.configured(MINI)] == ["wavespeed", "atlascloud", "openai", "segmind"]
    assert (
        next(r.provider for r in router.configured(MINI, order=("segmind",))) == "segmind"
    )  # guild override
    assert "oneminai" not in [r.provider for r in router.configured(MINI)]  # not configured


def test_no_eligible_route_names_the_option_to_change() -> None:
    router = Router(stubs(StubProvider("atlascloud"), StubProvider("wavespeed")))

    with pytest.raises(InvalidOptions) as info:
        router.require(MINI, Needs(1, "1024x1024", "low", "auto", "png", mask=True))
    assert info.value.code == "route_mask"
    assert "remove the `mask`" in info.value.user_message

    with pytest.raises(InvalidOptions) as info:
        router.require(MINI, Needs(1, "1024x1024", "low", "auto", "jpeg"))
    assert "`format`" in info.value.user_message and "png" in info.value.user_message

    with pytest.raises(InvalidOptions, match="No configured image service sells") as info:
        Router(stubs(StubProvider("oneminai"))).require(CATALOG.get("gpt-image-1.5"), NEEDS)
    assert info.value.code == "no_route"


@pytest.mark.parametrize("rate", [1, 3, 7, 1000, 999_983])
@pytest.mark.parametrize(
    "options",
    [
        {"size": "auto"},
        {"size": "1536x1024", "quality": "high", "count": 3},
        {"quality": "auto", "prompt": "🎨é" * 300},
    ],
)
async def test_a_route_the_hold_was_priced_on_is_never_skipped_as_dearer_than_the_hold(
    rate: int, options: dict[str, Any]
) -> None:
    """The hold is `usd_to_credits` of the worst case over the eligible routes; each of those routes,
    first in the order, still serves the job held at exactly that, whatever the rounding."""
    names = ("openai", "atlascloud", "wavespeed", "segmind", "oneminai")
    req = request(**options)
    needs = Needs.of(req)
    router = Router(stubs(*(StubProvider(n) for n in names)))
    held = Hold(usd_to_credits(router.reserve_usd(MINI, needs, prompt=req.prompt), rate), rate)
    eligible = [r.provider for r in router.eligible(MINI, needs)]
    assert len(eligible) >= 3

    for provider in eligible:
        served = await router.run(MINI, req, order=(provider,), hold=held)
        assert served.route.provider == provider


async def test_a_route_dearer_than_the_jobs_hold_is_skipped_and_none_within_it_refuses_untried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    atlas, wavespeed = StubProvider("atlascloud"), StubProvider("wavespeed")
    router = Router(stubs(atlas, wavespeed), order=("wavespeed", "atlascloud"))
    req = request(size="auto")

    served = await router.run(MINI, req, hold=Hold(4, 1000))  # Atlas's $0.004; WaveSpeed's $0.02 is 20
    assert served.route.provider == "atlascloud" and wavespeed.calls == []
    assert "not sending this job to wavespeed (up to $0.02): dearer than its hold of 4 credits" in caplog.text

    with pytest.raises(InvalidOptions) as info:
        await router.run(MINI, req, hold=Hold(3, 1000))
    assert info.value.code == "over_hold" and len(atlas.calls) == 1 and wavespeed.calls == []
    assert "Nothing was charged" in info.value.user_message
    assert (await router.run(MINI, req, hold=Hold(20, 1000))).route.provider == "wavespeed"


# ----------------------------------------------------------------------------- fallback rules


async def test_first_provider_down_the_second_serves_and_the_charge_is_the_seconds_price() -> None:
    atlas = StubProvider("atlascloud", refused("atlascloud"))
    wavespeed = StubProvider("wavespeed")
    router = Router(stubs(atlas, wavespeed), order=("atlascloud", "wavespeed"))

    served = await router.run(MINI, request())

    assert len(atlas.calls) == 1 and len(wavespeed.calls) == 1
    assert served.route.provider == "wavespeed" and served.result.provider == "wavespeed"
    assert served.cost_usd == Decimal("0.02")  # WaveSpeed's flat price, not Atlas's $0.004
    assert served.refused_by == ("atlascloud",)
    assert wavespeed.calls[0].model == "openai/gpt-image-1-mini/edit"


@pytest.mark.parametrize(
    "error",
    [
        perr.ServiceUnavailable("insufficient balance", status=402, accepted=False),
        perr.RateLimited("429 beyond the deadline", retry_after=600, accepted=False),
        perr.ModelUnavailable("404", accepted=False),
        perr.ConnectionFailed("refused", accepted=False),
    ],
    ids=["balance", "429", "model", "connect"],
)
async def test_failures_that_provably_created_nothing_fall_back(error: perr.ProviderError) -> None:
    first, second = StubProvider("atlascloud", error), StubProvider("wavespeed")

    served = await Router(stubs(first, second), order=("atlascloud",)).run(MINI, request())

    assert served.route.provider == "wavespeed"


async def test_a_429_with_a_wait_inside_the_deadline_is_sent_again_to_the_same_provider() -> None:
    now = [1000.0]

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    busy = perr.RateLimited("429", status=429, retry_after=2.0, accepted=False)
    first, second = StubProvider("atlascloud", busy, "ok"), StubProvider("wavespeed")
    limiter = ProviderLimiter(clock=lambda: now[0], sleep=sleep)
    router = Router(stubs(first, second), order=("atlascloud",), limiter=limiter)

    served = await router.run(MINI, request(deadline=now[0] + 300))

    assert served.route.provider == "atlascloud" and served.refused_by == ()
    assert len(first.calls) == 2 and second.calls == []
    assert now[0] >= 1002.0  # after the provider's Retry-After


async def test_a_5xx_on_a_submit_without_a_job_id_falls_back_but_one_that_may_have_run_does_not() -> None:
    unqueued = perr.ServerError("500, no id", accepted=False)
    unqueued.retryable_elsewhere = True  # what the async adapters' classifiers say of it
    first, second = StubProvider("atlascloud", unqueued), StubProvider("wavespeed")
    assert (
        await Router(stubs(first, second), order=("atlascloud",)).run(MINI, request())
    ).route.provider == ("wavespeed")

    first, second = (
        StubProvider("atlascloud", perr.ServerError("504", accepted=True)),
        StubProvider("wavespeed"),
    )
    with pytest.raises(perr.ServerError):
        await Router(stubs(first, second), order=("atlascloud",)).run(MINI, request())
    assert second.calls == []


@pytest.mark.parametrize(
    "error",
    [
        perr.ProviderJobFailed("prediction failed", accepted=True),
        perr.ProviderTimeout("deadline while polling", accepted=True),
        perr.ConnectionFailed("reset after sending", accepted=True),
        perr.ProviderRejected("safety", accepted=False),
        perr.InvalidInput("bad image", accepted=False),
        # Kinds that may go elsewhere when nothing was taken, but not once the provider may have.
        perr.RateLimited("429 after the job was taken", status=429, accepted=True),
        perr.ServiceUnavailable("402 after the job was taken", status=402, accepted=True),
        perr.ModelUnavailable("404 while polling", status=404, accepted=True),
    ],
    ids=["job-failed", "poll-timeout", "reset", "safety", "invalid", "429", "402", "404"],
)
async def test_an_accepted_or_refused_job_is_never_sent_to_another_provider(
    error: perr.ProviderError,
) -> None:
    first, second = StubProvider("atlascloud", error), StubProvider("wavespeed")

    with pytest.raises(type(error)) as info:
        await Router(stubs(first, second), order=("atlascloud",)).run(MINI, request())

    assert info.value is error
    assert second.calls == []


async def test_when_every_call_of_an_emulated_count_fails_the_one_the_provider_may_have_taken_is_raised():
    """Its `accepted` decides whether the job may ever be sent again and whether its spend counts."""
    untaken = perr.ServerError("500 before anything was made", accepted=False)
    taken = perr.ProviderJobFailed("failed after it was taken", accepted=True)
    atlas = StubProvider("atlascloud", untaken, taken)

    with pytest.raises(perr.ProviderError) as info:
        await Router(stubs(atlas)).run(MINI, request(count=2, size="1024x1024"))
    assert info.value is taken


async def test_when_every_route_refuses_the_last_error_is_raised() -> None:
    a = StubProvider("atlascloud", refused("atlascloud"))
    b = StubProvider("wavespeed", perr.ServiceUnavailable("401", status=401))

    with pytest.raises(perr.ServiceUnavailable):
        await Router(stubs(a, b), order=("atlascloud",)).run(MINI, request())


async def test_a_mask_job_is_never_routed_to_a_route_without_mask_support() -> None:
    atlas, wavespeed, segmind = StubProvider("atlascloud"), StubProvider("wavespeed"), StubProvider("segmind")
    router = Router(stubs(atlas, wavespeed, segmind), order=("atlascloud", "wavespeed", "segmind"))
    img = photo()

    served = await router.run(MINI, request(images=(img,), mask=openai_mask((img.width, img.height))))

    assert served.route.provider == "segmind"
    assert atlas.calls == [] and wavespeed.calls == []
    # And with only mask-less routes configured, the user is told instead.
    with pytest.raises(InvalidOptions, match="mask"):
        await Router(stubs(atlas, wavespeed)).run(MINI, request(mask=openai_mask((img.width, img.height))))
    assert atlas.calls == [] and wavespeed.calls == []


# ----------------------------------------------------------------------------- count emulation and charges


async def test_count_without_n_is_parallel_single_calls_charged_per_image() -> None:
    atlas = StubProvider("atlascloud")

    served = await Router(stubs(atlas)).run(MINI, request(count=3, size="1024x1024"))

    assert [c.count for c in atlas.calls] == [1, 1, 1]
    assert len(served.result.images) == 3
    assert served.cost_usd == Decimal("0.004") * 3
    assert served.notice is None


async def test_count_with_n_is_one_call() -> None:
    openai = StubProvider("openai")

    served = await Router(stubs(openai)).run(MINI, request(count=3))

    assert [c.count for c in openai.calls] == [3]
    assert len(served.result.images) == 3


async def test_partly_failed_emulated_count_delivers_and_charges_what_came_back() -> None:
    atlas = StubProvider("atlascloud", "ok", perr.ProviderJobFailed("failed", accepted=True), "ok")

    served = await Router(stubs(atlas)).run(MINI, request(count=3, size="1024x1024"))

    assert len(served.result.images) == 2
    assert served.cost_usd == Decimal("0.008")
    assert served.notice is not None and "2 of the 3" in served.notice


class ShortProvider(StubProvider):
    """Answers an `n` call with one image fewer than asked, as when the adapter dropped an unusable
    one, with `usage` (tokens billed for every image) when given."""

    def __init__(self, name: str, usage: Usage | None = None) -> None:
        super().__init__(name)
        self.usage = usage

    async def edit(self, req: EditRequest) -> EditResult:
        result = await super().edit(req)
        return replace(result, images=result.images[1:], usage=self.usage)


@pytest.mark.parametrize(
    ("usage", "member", "absorbed"),
    [
        # Tokens bill the whole call: the member pays two thirds of it, the rest is absorbed.
        (Usage(output_image_tokens=3000), "0.016", "0.008"),
        # No usage: the list price per image; the member pays for two, the third is absorbed.
        (None, "0.022", "0.011"),
    ],
)
async def test_an_image_an_n_call_billed_but_did_not_deliver_is_absorbed_not_charged(
    usage: Usage | None, member: str, absorbed: str
) -> None:
    openai = ShortProvider("openai", usage)

    served = await Router(stubs(openai)).run(MINI, request(count=3, quality="medium", size="1024x1024"))

    assert [c.count for c in openai.calls] == [3] and len(served.result.images) == 2
    assert served.cost_usd == Decimal(member)
    assert served.absorbed_usd == Decimal(absorbed)
    assert served.notice == "Only 2 of the 3 images could be made; you were charged for 2."


async def test_a_flat_priced_n_call_charges_the_images_delivered_and_absorbs_the_rest() -> None:
    openai_route = next(r for r in MINI.routes if r.provider == "openai")
    flat = replace(MINI, routes=(replace(openai_route, price=Decimal("0.04")),))
    openai = ShortProvider("openai")

    served = await Router(stubs(openai)).run(flat, request(count=3, size="1024x1024"))

    assert [c.count for c in openai.calls] == [3] and len(served.result.images) == 2
    assert (served.cost_usd, served.absorbed_usd) == (Decimal("0.08"), Decimal("0.04"))


async def test_a_billed_call_of_an_emulated_count_that_failed_is_absorbed_at_its_siblings_cost() -> None:
    unusable = perr.ServerError("HTTP 200 but no usable image", accepted=True)
    untaken = refused("atlascloud")
    atlas = StubProvider("atlascloud", "ok", unusable, untaken, "ok")

    served = await Router(stubs(atlas)).run(MINI, request(count=4, size="1024x1024"))

    assert served.cost_usd == Decimal("0.008")  # the two images delivered
    assert served.absorbed_usd == Decimal("0.004")  # the accepted one; the refused one cost nothing


async def test_an_emulated_count_that_failed_after_acceptance_is_not_resent_elsewhere() -> None:
    atlas = StubProvider("atlascloud", refused(), perr.ProviderJobFailed("failed", accepted=True))
    wavespeed = StubProvider("wavespeed")

    with pytest.raises(perr.ProviderJobFailed):
        await Router(stubs(atlas, wavespeed), order=("atlascloud",)).run(
            MINI, request(count=2, size="1024x1024")
        )
    assert wavespeed.calls == []


async def test_provider_reported_cost_wins_over_the_route_price() -> None:
    segmind = StubProvider("segmind", cost="0.0280")

    served = await Router(stubs(segmind)).run(MINI, request(count=2))

    assert served.cost_usd == Decimal("0.0560")
    assert served.result.cost_usd == "0.0560"


def test_list_priced_routes_charge_token_usage_then_the_price_table() -> None:
    openai = next(r for r in MINI.routes if r.provider == "openai")
    req = request(quality="low", size="1024x1024")
    usage = Usage(input_text_tokens=50, input_image_tokens=1000, output_image_tokens=1000)
    by_usage = EditResult((OutputImage(PNG, "png"),), "openai", "low", "1024x1024", usage=usage)
    by_table = EditResult((OutputImage(PNG, "png"),) * 2, "oneminai", "medium", "1536x1024")
    onemin = next(r for r in MINI.routes if r.provider == "oneminai")

    assert charge_usd(MINI, openai, by_usage, req) == Decimal("0.0106")
    assert charge_usd(MINI, onemin, by_table, req) == Decimal("0.015") * 2


def test_the_reserve_covers_the_dearest_eligible_route() -> None:
    router = Router(stubs(StubProvider("atlascloud"), StubProvider("segmind")))
    needs = Needs(1, "1024x1024", "low", "auto", "png", count=2)

    assert router.reserve_usd(MINI, needs, prompt="p") == Decimal("0.12")  # Segmind's 0.06 hold × 2
    only_atlas = Router(stubs(StubProvider("atlascloud")))
    assert only_atlas.reserve_usd(MINI, needs, prompt="p") == Decimal("0.008")


def test_a_list_priced_route_without_n_reserves_input_tokens_for_every_call() -> None:
    no_n = Route("openai", "gpt-image-1-mini", n=False, max_input_images=16)
    with_n = Route("openai", "gpt-image-1-mini", n=True, max_input_images=16)
    needs = Needs(1, "1024x1024", "low", "auto", "png", count=2)

    one_call = route_reserve_usd(MINI, with_n, needs, prompt="p")
    two_calls = route_reserve_usd(MINI, no_n, needs, prompt="p")

    assert two_calls > one_call
    assert two_calls == 2 * route_reserve_usd(
        MINI, with_n, Needs(1, "1024x1024", "low", "auto", "png"), prompt="p"
    )


@pytest.mark.parametrize(
    ("model_id", "provider", "floor"),
    [
        ("gpt-image-2", "atlascloud", "0.01"),  # $0.008 advertised, $0.01 list
        ("gpt-image-2", "wavespeed", "0.06"),
        ("gpt-image-2.6-flare", "wavespeed", "0.045"),
        ("gpt-image-2.5-sunburst", "wavespeed", "0.01"),
    ],
)
def test_a_resellers_from_price_is_the_least_each_image_is_held_and_charged(
    model_id: str, provider: str, floor: str
) -> None:
    """Resellers bill their 2.x edits "from" a price above OpenAI's low-quality list price: charging the
    list price would have let the operator's real spend pass every budget by the difference."""
    entry = load_catalog().get(model_id)
    reseller = next(r for r in entry.routes if r.provider == provider and r.price is None)
    openai = next(r for r in entry.routes if r.provider == "openai")
    cheap = Needs(1, "1024x1024", "low", "auto", "png", count=2)
    req = request(quality="low", size="1024x1024", count=2)
    made = EditResult((OutputImage(PNG, "png"),) * 2, reseller.provider, None, None)

    assert reseller.min_price == Decimal(floor)
    assert route_reserve_usd(entry, reseller, cheap, prompt="p") >= 2 * Decimal(floor)
    assert charge_usd(entry, reseller, made, req) == 2 * Decimal(floor)
    # The list price where it is the higher one, and OpenAI's own route is untouched.
    dear = request(quality="high", size="2048x2048", count=2)
    assert charge_usd(entry, reseller, made, dear) == 2 * entry.image_price("high", "2048x2048")
    assert entry.image_price("high", "2048x2048") > Decimal(floor)
    assert openai.min_price is None
    assert charge_usd(entry, openai, made, req) == 2 * entry.image_price("low", "1024x1024")


LARGE_ONLY = Route("atlascloud", "openai/gpt-image-2/edit", sizes=("2048x2048", "2048x1152", "1152x2048"))


@pytest.mark.parametrize("shape", [(1920, 1080), (1080, 1920), (1000, 1000), (1500, 1000)])
@pytest.mark.parametrize("quality", ["low", "high", "auto"])
@pytest.mark.parametrize("sizes", ["atlas", "large only"])
def test_an_auto_size_is_held_at_the_dearest_size_a_route_without_auto_may_turn_it_into(
    shape: tuple[int, int], quality: str, sizes: str
) -> None:
    """A route that takes no `auto` size gets the nearest of its standard sizes (Atlas: a 16:9 photo
    becomes 1536x1024, as OpenAI's own `auto` would choose among those, not 2048x1152); a route with
    only large sizes gets the nearest of those, priced by area, and is held at the dearest of them."""
    entry = load_catalog().get("gpt-image-2")
    atlas = next(r for r in entry.routes if r.provider == "atlascloud" and r.price is None)
    route = atlas if sizes == "atlas" else LARGE_ONLY
    photo_of_shape = InputImage(PNG, "image/png", *shape)
    req = request(images=(photo_of_shape,), quality=quality, size="auto")
    adapted = adapt(req, route)
    made = EditResult((OutputImage(PNG, "png"),), "atlascloud", None, adapted.size)

    assert route_reserve_usd(entry, route, Needs.of(req), prompt="p") >= charge_usd(
        entry, route, made, adapted
    )
    if route is atlas:
        assert adapted.size in ("1024x1024", "1536x1024", "1024x1536")


def test_packaged_atlas_gpt_image_2_routes_send_auto_quality_as_the_high_it_is_charged_for() -> None:
    """Atlas takes quality low, medium or high (models-2026-12.md §4). `auto` was sent by leaving the
    field out, so Atlas made its own default (medium) while the charge, finding no quality in the
    answer, counted the dearest (high): members paid for high and got medium, shown as "auto"."""
    entry = load_catalog().get("gpt-image-2")
    for atlas in (r for r in entry.routes if r.provider == "atlascloud"):
        adapted = adapt(request(quality="auto", size="1536x1024"), atlas)
        assert adapted.quality == "high"
        made = EditResult((OutputImage(PNG, "png"),), "atlascloud", None, adapted.size)
        expected = atlas.price if atlas.price is not None else entry.image_price("high", "1536x1024")
        assert charge_usd(entry, atlas, made, adapted) == max(expected, atlas.min_price or Decimal(0))


def test_auto_quality_is_held_at_what_a_route_without_auto_sends_and_at_the_dearest_elsewhere() -> None:
    """WaveSpeed's 2.6 route takes no `auto` quality and is sent `high` (`auto_quality`): `auto` is held
    and shown at high there, not at max (which made it look dearer than xhigh). OpenAI leaves the choice
    to the model, so `auto` stays held at its dearest quality."""
    entry = load_catalog().get("gpt-image-2.6-flare")
    wavespeed = next(r for r in entry.routes if r.provider == "wavespeed")
    openai = next(r for r in entry.routes if r.provider == "openai")
    req = request(quality="auto", size="1024x1024")
    at = {q: request(quality=q, size="1024x1024") for q in ("high", "xhigh", "max")}

    def held(route: Route, r: EditRequest) -> Decimal:
        return route_reserve_usd(entry, route, Needs.of(r), prompt=r.prompt)

    assert adapt(req, wavespeed).quality == "high"
    assert held(wavespeed, req) == held(wavespeed, at["high"]) < held(wavespeed, at["xhigh"])
    made = EditResult((OutputImage(PNG, "png"),), "wavespeed", None, "1024x1024")
    assert charge_usd(entry, wavespeed, made, adapt(req, wavespeed)) <= held(wavespeed, req)
    assert dearest_edit(entry, [wavespeed], "auto", "1024x1024") == dearest_edit(
        entry, [wavespeed], "high", "1024x1024"
    )
    # Where the route takes `auto` (the model chooses), it is still held at the model's dearest quality.
    assert adapt(req, openai).quality == "auto"
    assert held(openai, req) == held(openai, at["max"])
    dearest = dearest_edit(entry, [openai], "max", "1024x1024")
    assert dearest_edit(entry, [openai, wavespeed], "auto", "1024x1024") == dearest


def test_the_price_members_are_shown_is_the_dearest_of_the_routes_that_may_serve_them() -> None:
    entry = load_catalog().get("gpt-image-2")
    by = {(r.provider, r.model): r for r in entry.routes}
    openai = by[("openai", "gpt-image-2")]
    developer = by[("atlascloud", "openai/gpt-image-2-developer/edit")]
    wavespeed = by[("wavespeed", "openai/gpt-image-2/edit")]

    def edit(routes: list[Route], quality: str, size: str = "1024x1024") -> Decimal:
        return dearest_edit(entry, routes, quality, size, prompt="p")

    def held(route: Route, quality: str, size: str = "1024x1024") -> Decimal:
        return route_reserve_usd(entry, route, Needs.of(request(quality=quality, size=size)), prompt="p")

    no_route = reserve_usd(entry, quality="low", size="1024x1024", count=1, n_inputs=1, prompt="p")
    assert edit([], "low") == no_route  # no route known: the list price, one input image and the prompt
    assert edit([openai], "low") == held(openai, "low")
    assert edit([developer], "low") == Decimal("0.012")  # a flat price, whatever the tokens
    assert edit([openai, developer], "low") == held(openai, "low")  # the dearer of the two
    assert edit([openai, developer, wavespeed], "low") == held(wavespeed, "low")  # WaveSpeed's $0.06 floor
    assert edit([openai, developer, wavespeed], "high") == held(openai, "high")
    credits = quality_options(entry, "low", credits_per_usd=1000, routes=[openai, wavespeed])
    # The suggestion is a one-image edit's hold: the output image, one input image and a prompt in tokens.
    assert credits == [("low — up to 64 credits per image", "low")]
    # A route that cannot make the quality or the size never serves the job: its price is not counted.
    dear = replace(developer, price=Decimal("1.00"), qualities=("low",))
    assert edit([openai, dear], "low") == Decimal("1.00")
    assert edit([openai, dear], "high") == held(openai, "high")
    assert edit([openai, dear], "low", "1152x1152") == held(openai, "low", "1152x1152")


# ----------------------------------------------------------------------------- circuit breaker


def test_the_limiters_own_refusal_says_nothing_about_a_providers_health() -> None:
    assert _verdict(perr.unsent_rate_limit("p", "no free slot")) is None
    assert _verdict(perr.RateLimited("429", provider="p", status=429)) is False


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_breaker_opens_after_consecutive_failures_skips_then_closes_after_a_good_trial(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="bot.routing")
    clock = Clock()
    breaker = CircuitBreaker(threshold=2, cooldown=30, clock=clock)
    atlas = StubProvider("atlascloud", refused(), refused(), "ok")
    wavespeed = StubProvider("wavespeed")
    router = Router(stubs(atlas, wavespeed), order=("atlascloud",), breaker=breaker)

    for _ in range(2):
        assert (await router.run(MINI, request())).route.provider == "wavespeed"
    assert breaker.state("atlascloud") == OPEN
    assert "circuit for atlascloud opened after 2 consecutive failures" in caplog.text

    served = await router.run(MINI, request())  # skipped while open: not even tried
    assert served.route.provider == "wavespeed" and len(atlas.calls) == 2

    clock.now += 31
    assert breaker.state("atlascloud") == HALF_OPEN
    served = await router.run(MINI, request())  # one trial call, which works
    assert served.route.provider == "atlascloud" and len(atlas.calls) == 3
    assert breaker.state("atlascloud") == CLOSED
    assert "circuit for atlascloud closed" in caplog.text
    assert router.circuits() == {"atlascloud": CLOSED, "wavespeed": CLOSED}


def test_a_failed_trial_reopens_and_only_one_trial_runs_at_a_time(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="bot.routing")
    clock = Clock()
    breaker = CircuitBreaker(threshold=1, cooldown=10, clock=clock)
    breaker.record("p", False)
    assert breaker.state("p") == OPEN and not breaker.allow("p")

    clock.now += 10
    assert breaker.allow("p")  # the trial
    assert not breaker.allow("p")  # a second caller waits for the trial's verdict
    breaker.record("p", False)
    assert breaker.state("p") == OPEN
    assert "re-opened" in caplog.text

    clock.now += 10
    assert breaker.allow("p")
    breaker.record("p", None)  # cancelled: no verdict, the slot is free again
    assert breaker.allow("p")
    breaker.record("p", True)
    assert breaker.state("p") == CLOSED


async def test_user_errors_do_not_trip_the_breaker() -> None:
    breaker = CircuitBreaker(threshold=2)
    atlas = StubProvider(
        "atlascloud", perr.InvalidInput("bad image", status=400), perr.ProviderRejected("safety", status=400)
    )
    router = Router(stubs(atlas), breaker=breaker)

    for _ in range(3):
        with pytest.raises((perr.InvalidInput, perr.ProviderRejected)):
            await router.run(MINI, request())

    assert breaker.state("atlascloud") == CLOSED


async def test_a_429_counts_against_the_breaker_only_when_its_wait_outlasts_the_job() -> None:
    """The limiter owns 429s: one whose Retry-After the job can sit out is sent again, and the call
    that then works is a success. A 429 reaches the breaker only when the provider asks for a wait the
    job cannot afford; a provider that keeps doing that is skipped for the cool-down, so the jobs that
    follow go to another route at once instead of each learning it with a call of its own."""
    # From the host's monotonic clock: the router compares a job's deadline with it (`remaining`).
    now = [time.monotonic()]

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    breaker = CircuitBreaker(threshold=2, cooldown=60, clock=lambda: now[0])
    short = perr.RateLimited("429", status=429, retry_after=2.0, accepted=False)
    atlas = StubProvider("atlascloud", short, "ok", short, "ok")
    wavespeed = StubProvider("wavespeed")
    limiter = ProviderLimiter(clock=lambda: now[0], sleep=sleep)
    router = Router(stubs(atlas, wavespeed), order=("atlascloud",), limiter=limiter, breaker=breaker)
    for _ in range(2):
        served = await router.run(MINI, request(deadline=now[0] + 300))
        assert served.route.provider == "atlascloud"
    assert breaker.state("atlascloud") == CLOSED and wavespeed.calls == []

    # A wait of 50 s, for jobs with a minute left: not worth sitting out.
    long = perr.RateLimited("429", status=429, retry_after=50.0, accepted=False)
    atlas.outcomes = [long]
    for _ in range(2):
        now[0] += 51  # past the previous pause, so each job sends its own call and gets its own 429
        served = await router.run(MINI, request(deadline=now[0] + 60))
        assert served.route.provider == "wavespeed" and served.refused_by == ("atlascloud",)
    assert breaker.state("atlascloud") == OPEN and len(atlas.calls) == 6

    now[0] += 51  # the provider's pause is over, the circuit's cool-down is not
    assert breaker.state("atlascloud") == OPEN
    served = await router.run(MINI, request(deadline=now[0] + 300))
    assert served.route.provider == "wavespeed" and len(atlas.calls) == 6


def test_a_local_refusal_by_the_adapter_says_nothing_about_health() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=1, cooldown=5, clock=clock)
    breaker.record("p", False)
    clock.now += 5
    assert breaker.allow("p")

    breaker.record("p", _verdict(perr.InvalidInput("route cannot take size=auto", code="unsupported_option")))

    assert breaker.state("p") == HALF_OPEN  # still waiting for a real answer
    assert breaker.allow("p")


async def test_with_every_circuit_open_the_job_fails_fast_without_a_call() -> None:
    breaker = CircuitBreaker(threshold=1, cooldown=60)
    breaker.record("atlascloud", False)
    atlas = StubProvider("atlascloud")

    with pytest.raises(perr.ServerError) as info:
        await Router(stubs(atlas), breaker=breaker).run(MINI, request())

    assert info.value.code == "circuit_open" and not info.value.accepted
    assert atlas.calls == []


async def test_a_cancelled_job_frees_the_trial_slot() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=1, cooldown=5, clock=clock)
    breaker.record("atlascloud", False)
    clock.now += 5
    started = asyncio.Event()

    class Hanging(StubProvider):
        async def edit(self, req: EditRequest) -> EditResult:
            started.set()
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

    task = asyncio.create_task(Router(stubs(Hanging("atlascloud")), breaker=breaker).run(MINI, request()))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert breaker.allow("atlascloud")


# ----------------------------------------------------------------------------- real adapters, real fakes


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def adapters(
    session: aiohttp.ClientSession, atlas: FakeAtlas, wavespeed: FakeWaveSpeed
) -> dict[str, Provider]:
    """The Atlas and WaveSpeed adapters on their fakes, polling fast."""
    fast = {"policy": FAST, "poll_interval": 0.01, "max_poll_interval": 0.02, "call_timeout": 5.0}
    return {
        "atlascloud": AtlasCloudProvider(session, atlas.api_key, atlas.base_url, **fast),  # type: ignore[arg-type]
        "wavespeed": WaveSpeedProvider(session, wavespeed.api_key, wavespeed.base_url, **fast),  # type: ignore[arg-type]
    }


@pytest.fixture
def real_router(adapters: dict[str, Provider]) -> Callable[..., Router]:
    def make(**kw: object) -> Router:
        return Router(adapters, order=("atlascloud", "wavespeed"), **kw)  # type: ignore[arg-type]

    return make


async def test_over_the_wire_a_provider_that_refuses_over_two_at_once_serves_every_edit_exactly_once(
    session: aiohttp.ClientSession,
) -> None:
    async with FakeOpenAI(max_in_flight=2, busy_retry_after=0.05, delay=0.05) as openai:
        adapter = OpenAIProvider(session, openai.api_key, openai.base_url, policy=FAST, call_timeout=5.0)
        router = Router({"openai": adapter}, limiter=ProviderLimiter({"openai": (6, 10)}))
        model = CATALOG.get("gpt-image-1.5")

        served = await asyncio.gather(
            *(router.run(model, request(deadline=time.monotonic() + 120)) for _ in range(6))
        )

        assert [s.route.provider for s in served] == ["openai"] * 6
        assert openai.edits_served == 6  # no image made (and paid) twice
        assert openai.busy_refusals > 0 and openai.peak_in_flight == 2
        assert router.limiter.limit("openai") == 2


async def test_over_the_wire_a_429_the_adapter_retries_by_itself_still_reaches_the_limiter() -> None:
    limiter = ProviderLimiter({"openai": (8, 8)})
    async with FakeOpenAI() as openai:
        watch = RateLimitWatch({openai.base_url: "openai"})
        watch.attach(limiter)
        async with aiohttp.ClientSession(trace_configs=[watch.trace_config()]) as session:
            adapter = OpenAIProvider(session, openai.api_key, openai.base_url, policy=FAST, call_timeout=5.0)
            openai.fail_next(Fault.RATE_LIMITED_MS, retry_after=0.05)

            router = Router({"openai": adapter}, limiter=limiter)
            served = await router.run(CATALOG.get("gpt-image-1.5"), request(deadline=time.monotonic() + 120))

    assert served.route.provider == "openai" and openai.post_count == 2  # the adapter's own retry
    state = limiter.snapshot()["openai"]
    assert state.refused_at == 1 and state.limit == 1  # one call in flight drew the 429


@pytest.mark.parametrize("fault", [atlas_fake.Fault.UNAUTHORIZED, atlas_fake.Fault.INSUFFICIENT_BALANCE])
async def test_over_the_wire_atlas_refusing_sends_the_job_to_wavespeed_at_wavespeeds_price(
    real_router: Callable[..., Router], atlas: FakeAtlas, wavespeed: FakeWaveSpeed, fault: atlas_fake.Fault
) -> None:
    atlas.fail_always(fault)

    served = await real_router().run(MINI, request(size="auto"))

    assert served.route.provider == "wavespeed"
    assert served.cost_usd == Decimal("0.02")
    assert wavespeed.submit_count == 1
    assert Image.open(io.BytesIO(served.result.images[0].data)).size == (1024, 1024)


async def test_over_the_wire_an_accepted_atlas_job_that_fails_is_not_resubmitted(
    real_router: Callable[..., Router], atlas: FakeAtlas, wavespeed: FakeWaveSpeed
) -> None:
    atlas.fail_next(atlas_fake.Fault.JOB_FAILED)

    with pytest.raises(perr.ProviderJobFailed) as info:
        await real_router().run(MINI, request(size="1024x1024"))

    assert info.value.accepted
    assert atlas.submit_count == 1
    assert wavespeed.requests == []


async def test_over_the_wire_count_is_emulated_with_one_prediction_per_image(
    real_router: Callable[..., Router], atlas: FakeAtlas
) -> None:
    served = await real_router().run(MINI, request(count=3, size="1024x1024"))

    assert atlas.submit_count == 3
    assert len(served.result.images) == 3
    assert served.cost_usd == Decimal("0.012")


async def test_over_the_wire_auto_size_reaches_atlas_as_the_photos_shape(
    real_router: Callable[..., Router], atlas: FakeAtlas
) -> None:
    await real_router().run(MINI, request(size="auto"))  # rocket.jpg is landscape

    submit = next(r for r in atlas.requests if r.endpoint == "submit")
    assert submit.json["size"] == "1536x1024"


async def test_over_the_wire_a_masked_full_model_job_skips_nothing_it_should_not(
    session: aiohttp.ClientSession,
) -> None:
    async with FakeSegmind() as segmind, FakeWaveSpeed(polls_to_finish=1) as ws:
        providers = {
            "wavespeed": WaveSpeedProvider(session, ws.api_key, ws.base_url, policy=FAST, poll_interval=0.01),
            "segmind": SegmindProvider(
                session, segmind.api_key, segmind.base_url, upload_url=segmind.upload_url, policy=FAST
            ),
        }
        router = Router(providers, order=("wavespeed", "segmind"))
        img = photo("astronaut.png")
        mini_job = request(images=(img,), mask=openai_mask((img.width, img.height)))

        served = await router.run(MINI, mini_job)  # WaveSpeed's mini edit has no mask field

        assert served.route.provider == "segmind" and ws.requests == []
        assert served.cost_usd == Decimal("0.0280")  # Segmind's x-cost, not the 0.06 hold
        served = await router.run(FULL, mini_job)  # WaveSpeed's gpt-image-1 edit takes a mask
        assert served.route.provider == "wavespeed"
        assert next(r for r in ws.requests if r.endpoint == "submit").json["mask_image"]


async def test_over_the_wire_a_breaker_opened_by_a_dead_provider_stops_calling_it(
    real_router: Callable[..., Router], atlas: FakeAtlas, wavespeed: FakeWaveSpeed
) -> None:
    atlas.fail_always(atlas_fake.Fault.UNAUTHORIZED)
    router = real_router(breaker=CircuitBreaker(threshold=2, cooldown=60))

    for _ in range(3):
        await router.run(MINI, request(size="auto"))  # WaveSpeed's mini edit honours only auto

    assert len([r for r in atlas.requests if r.endpoint == "upload"]) == 2  # the third job skipped it
    assert wavespeed.submit_count == 3


# ----------------------------------------------------------------------------- settings and wiring


def test_every_provider_key_is_named_when_none_is_set() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(BASE_ENV)

    for key in (
        "OPENAI_API_KEY",
        "ATLASCLOUD_API_KEY",
        "WAVESPEED_API_KEY",
        "SEGMIND_API_KEY",
        "ONEMINAI_API_KEY",
    ):
        assert key in str(info.value)


@pytest.mark.parametrize(
    ("prefix", "name", "default_base"),
    [
        ("ATLASCLOUD", "atlascloud", "https://api.atlascloud.ai/api/v1"),
        ("WAVESPEED", "wavespeed", "https://api.wavespeed.ai/api/v3"),
        ("SEGMIND", "segmind", "https://api.segmind.com/v1"),
        ("ONEMINAI", "oneminai", "https://api.1min.ai/api"),
    ],
)
def test_each_provider_can_be_configured_alone_with_its_own_key_and_base_url(
    prefix: str, name: str, default_base: str
) -> None:
    alone = load_settings({**BASE_ENV, f"{prefix}_API_KEY": "k-123"})
    moved = load_settings(
        {**BASE_ENV, f"{prefix}_API_KEY": "k-123", f"{prefix}_BASE_URL": "http://127.0.0.1:9/x/"}
    )

    assert [(p.name, p.base_url) for p in alone.providers] == [(name, default_base)]
    assert moved.providers[0].base_url == "http://127.0.0.1:9/x"
    assert "k-123" not in repr(alone) + str(alone.describe())


def test_provider_order_and_vendor_extras_are_read_and_typos_refused() -> None:
    env = {
        **BASE_ENV,
        "SEGMIND_API_KEY": "SG_1",
        "WAVESPEED_API_KEY": "ws",
        "WAVESPEED_SYNC_MODE": "on",
        "SEGMIND_UPLOAD_URL": "http://127.0.0.1:9/upload-asset",
        "PROVIDER_ORDER": " Segmind , wavespeed,segmind",
    }
    s = load_settings(env)
    assert s.provider_order == ("segmind", "wavespeed")
    by_name = {p.name: p for p in s.providers}
    assert by_name["wavespeed"].sync_mode is True
    assert by_name["segmind"].upload_url == "http://127.0.0.1:9/upload-asset"

    with pytest.raises(ConfigError, match="PROVIDER_ORDER names unknown provider"):
        load_settings({**env, "PROVIDER_ORDER": "segmind,wavespeeed"})


async def test_build_providers_builds_every_adapter_with_the_catalogs_mask_conventions(
    session: aiohttp.ClientSession,
) -> None:
    settings = load_settings(
        {
            **BASE_ENV,
            "OPENAI_API_KEY": "sk-1",
            "ATLASCLOUD_API_KEY": "a",
            "WAVESPEED_API_KEY": "w",
            "SEGMIND_API_KEY": "s",
            "ONEMINAI_API_KEY": "o",
        }
    )
    flipped = catalog(
        model(
            "m",
            qualities=["low"],
            price=0.01,
            routes=[
                catalog_route("atlascloud", model="openai/gpt-image-1/edit", mask_convention="white"),
                catalog_route("oneminai", model="gpt-image-1-mini", mask=True),  # names none
            ],
        )
    )

    providers = build_providers(settings, session, flipped)

    assert set(providers) == {"openai", "atlascloud", "wavespeed", "segmind", "oneminai"}
    assert all(p.name == name for name, p in providers.items())
    assert providers["atlascloud"]._mask_conventions["openai/gpt-image-1/edit"] == "white"  # type: ignore[attr-defined]
    # A route that names no convention keeps its adapter's: 1min.ai's inpainter reads white = edit,
    # so the area to change (transparent in OpenAI's mask: the top-left quarter) is sent white.
    img = photo()
    masked = replace(request(mask=openai_mask((img.width, img.height))), model="gpt-image-1-mini")
    sent = await providers["oneminai"]._vendor_mask(masked)  # type: ignore[attr-defined]
    with Image.open(io.BytesIO(sent)) as vendor_mask:
        assert "A" not in vendor_mask.getbands()  # white = edit, not transparent = edit
        grey = vendor_mask.convert("L")
        assert (grey.getpixel((1, 1)), grey.getpixel((img.width - 2, img.height - 2))) == (255, 0)
    packaged = build_providers(settings, session)  # no catalog given: the packaged/admin one
    assert packaged["oneminai"]._mask_conventions["gpt-image-1-mini"] == "white"  # type: ignore[attr-defined]


async def test_a_wavespeed_sync_submit_is_never_cut_off_by_a_shorter_call_timeout(
    session: aiohttp.ClientSession, wavespeed: FakeWaveSpeed
) -> None:
    """PROVIDER_CALL_TIMEOUT_SECONDS under WaveSpeed's own sync wait would end every long sync submit
    in a timeout: billed, and the task's id, which only the answer carries, lost. The wait is scaled
    down here, to 1.5 s against the lowest timeout the setting takes."""
    wavespeed.sync_wait = 1.5
    env = {**BASE_ENV, **provider_env("wavespeed", wavespeed)}
    settings = load_settings({**env, "WAVESPEED_SYNC_MODE": "on", "PROVIDER_CALL_TIMEOUT_SECONDS": "1"})
    adapter = build_providers(settings, session)["wavespeed"]
    assert isinstance(adapter, WaveSpeedProvider)
    submitted: list[str] = []

    async def on_submitted(task_id: str) -> None:
        submitted.append(task_id)

    result = await adapter.edit(
        replace(request(), model="openai/gpt-image-1-mini/edit"), on_submitted=on_submitted
    )

    assert len(result.images) == 1 and submitted
    assert (wavespeed.submit_count, wavespeed.count("poll")) == (1, 0)


def test_needs_of_a_request_reads_every_option() -> None:
    img = photo()
    req = request(
        images=(img, img),
        mask=openai_mask((img.width, img.height)),
        size="1024x1536",
        quality="high",
        background="opaque",
        output_format="webp",
        count=2,
        prompt="x" * 10,
        input_fidelity="high",
    )

    assert Needs.of(req) == Needs(2, "1024x1536", "high", "opaque", "webp", 2, True, 10, True)


# ----------------------------------------------------------------------------- the job service (real ledger)


def edit_job(**options: object) -> EditJob:
    data = (DATA / "chelsea.png").read_bytes()

    async def read() -> bytes:
        return data

    return EditJob(
        guild_id=1,
        user_id=2,
        channel_id=3,
        uploads=[Upload("image", "image.png", len(data), read)],
        options=EditOptions(prompt="make it a watercolour", **options),  # type: ignore[arg-type]
        upload_limit=10 * 1024 * 1024,
    )


def service_for(
    storage: Storage,
    tmp_path: Path,
    adapters: dict[str, Provider],
    atlas: FakeAtlas,
    wavespeed: FakeWaveSpeed,
) -> EditService:
    """The job service as build_services wires it, with Atlas first and WaveSpeed second bot-wide."""
    env = {**provider_env("atlascloud", atlas), **provider_env("wavespeed", wavespeed)}
    env |= {"PROVIDER_ORDER": "atlascloud,wavespeed", "DATA_DIR": str(tmp_path), "STARTING_CREDITS": "1000"}
    settings = load_settings({**BASE_ENV, **env})
    return edit_service(settings, CATALOG, storage, adapters, approve=[1], today=lambda: dt.date(2026, 11, 1))


async def test_service_charges_the_route_that_served_after_the_first_refused(
    adapters: dict[str, Provider],
    atlas: FakeAtlas,
    wavespeed: FakeWaveSpeed,
    storage: Storage,
    tmp_path: Path,
) -> None:
    atlas.fail_always(atlas_fake.Fault.INSUFFICIENT_BALANCE)
    outcome = await run_to_end(
        service_for(storage, tmp_path, adapters, atlas, wavespeed), edit_job(model="gpt-image-1-mini")
    )

    assert outcome.provider == "wavespeed"
    assert outcome.charged == 20  # $0.02 at 1000 credits per USD: WaveSpeed's price, not Atlas's
    assert (await storage.ledger.get_account(1, 2)).balance == 980
    assert [row["kind"] for row in await storage.reports.ledger_rows(outcome.job_id)] == [
        "reserve",
        "capture",
    ]
    assert (await storage.jobs.get_job(outcome.job_id)).provider == "wavespeed"


async def test_a_servers_provider_order_overrides_the_bot_wide_order(
    adapters: dict[str, Provider],
    atlas: FakeAtlas,
    wavespeed: FakeWaveSpeed,
    storage: Storage,
    tmp_path: Path,
) -> None:
    service = service_for(storage, tmp_path, adapters, atlas, wavespeed)  # bot-wide: atlascloud first
    await service.policy.update_guild(1, 99, {"provider_order": ("wavespeed", "atlascloud")})
    outcome = await run_to_end(service, edit_job(model="gpt-image-1-mini"))

    assert outcome.provider == "wavespeed"
    assert outcome.charged == 20
    assert atlas.submit_count == 0


async def test_service_refunds_an_accepted_job_that_failed_and_never_resubmits_it(
    adapters: dict[str, Provider],
    atlas: FakeAtlas,
    wavespeed: FakeWaveSpeed,
    storage: Storage,
    tmp_path: Path,
) -> None:
    atlas.fail_next(atlas_fake.Fault.JOB_FAILED)
    with pytest.raises(NoResult, match="not charged") as info:
        await run_to_end(
            service_for(storage, tmp_path, adapters, atlas, wavespeed), edit_job(model="gpt-image-1-mini")
        )
    assert info.value.ref is not None  # a failure, with its log reference

    assert atlas.submit_count == 1 and wavespeed.requests == []
    [job] = await storage.jobs.recent_jobs(1, 2)
    assert [row["kind"] for row in await storage.reports.ledger_rows(job.id)] == ["reserve", "release"]
    account = await storage.ledger.get_account(1, 2)
    assert (account.balance, account.held) == (1000, 0)


async def test_service_emulated_count_charges_per_delivered_image(
    adapters: dict[str, Provider],
    atlas: FakeAtlas,
    wavespeed: FakeWaveSpeed,
    storage: Storage,
    tmp_path: Path,
) -> None:
    outcome = await run_to_end(
        service_for(storage, tmp_path, adapters, atlas, wavespeed),
        edit_job(model="gpt-image-1-mini", count=2, size="1024x1024"),
    )

    assert atlas.submit_count == 2
    assert len(outcome.files) == 2 and outcome.charged == 8


async def test_service_refuses_options_no_configured_route_honours_for_free(
    adapters: dict[str, Provider],
    atlas: FakeAtlas,
    wavespeed: FakeWaveSpeed,
    storage: Storage,
    tmp_path: Path,
) -> None:
    with pytest.raises(InvalidOptions, match="`format`"):
        await run_to_end(
            service_for(storage, tmp_path, adapters, atlas, wavespeed),
            edit_job(model="gpt-image-1-mini", output_format="jpeg"),
        )

    assert atlas.requests == []
    assert await storage.ledger.get_account(1, 2) is None


def onemin_first_service(
    storage: Storage,
    tmp_path: Path,
    fakes: dict[str, FakeOneMin | FakeOpenAI],
    session: aiohttp.ClientSession,
) -> EditService:
    """The job service on the November catalog's providers in `fakes`, 1min.ai first."""
    env = {k: v for name, fake in fakes.items() for k, v in provider_env(name, fake).items()}
    env |= {"PROVIDER_ORDER": "oneminai,openai", "DATA_DIR": str(tmp_path), "STARTING_CREDITS": "1000"}
    settings = load_settings({**BASE_ENV, **env})
    providers = build_providers(settings, session, CATALOG)
    return edit_service(
        settings, CATALOG, storage, providers, approve=[1], today=lambda: dt.date(2026, 11, 1)
    )


def masked_transparent_job() -> EditJob:
    job = edit_job(model="gpt-image-1-mini", size="1024x1024", background="transparent", output_format="png")
    return replace(job, mask=MaskSpec(grid=(3, 3), cells=(5,)))


async def test_a_masked_edit_with_a_transparent_background_skips_the_inpainter_that_takes_no_background(
    storage: Storage, tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    """1min.ai's masked edits (its inpainter) have no background field: routing leaves a masked
    transparent edit to a route that makes it, and 1min.ai, first in the order, is not tried."""
    async with FakeOneMin() as onemin, FakeOpenAI() as openai:
        service = onemin_first_service(storage, tmp_path, {"oneminai": onemin, "openai": openai}, session)
        masked = Needs(1, "1024x1024", "low", "transparent", "png", mask=True)
        assert [r.provider for r in service.router.eligible(MINI, masked)] == ["openai"]
        unmasked = replace(masked, mask=False)
        assert [r.provider for r in service.router.eligible(MINI, unmasked)] == ["oneminai", "openai"]
        outcome = await run_to_end(service, masked_transparent_job())

        assert outcome.provider == "openai"
        assert openai.requests[-1].fields["background"] == "transparent"
        assert onemin.requests == []
        assert [r["kind"] for r in await storage.reports.ledger_rows(outcome.job_id)] == [
            "reserve",
            "capture",
        ]


async def test_a_masked_transparent_edit_no_route_can_make_is_refused_before_anything_is_held(
    storage: Storage, tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    async with FakeOneMin() as onemin:
        service = onemin_first_service(storage, tmp_path, {"oneminai": onemin}, session)
        with pytest.raises(InvalidOptions) as refused:
            await service.prepare(masked_transparent_job())

    assert refused.value.code == "route_mask_background"
    assert "set your background in /settings to auto for a masked edit" in refused.value.user_message
    assert onemin.requests == []
    assert await storage.ledger.get_account(1, 2) is None


async def test_a_saved_transparent_background_on_a_masked_edit_only_the_inpainter_sells_runs_at_auto(
    storage: Storage, tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    """/mask has no background option: the member's saved transparent background, which 1min.ai's
    inpainter cannot make, falls back to auto with a note (as any saved default the model lacks)
    instead of refusing every masked edit with "set your background in /settings"."""
    async with FakeOneMin() as onemin:
        service = onemin_first_service(storage, tmp_path, {"oneminai": onemin}, session)
        await storage.settings.update_user_settings(2, {"background": "transparent", "output_format": "png"})
        job = replace(
            edit_job(model="gpt-image-1-mini", size="1024x1024"), mask=MaskSpec(grid=(3, 3), cells=(5,))
        )
        outcome = await run_to_end(service, job)

    assert outcome.provider == "oneminai"
    [feature] = [r.json for r in onemin.requests if r.endpoint == "features"]
    assert feature["type"] == "IMAGE_INPAINTER"
    assert (
        "GPT Image 1 Mini cannot make background `transparent` with a mask, so Retouch uses auto"
        in " ".join(outcome.notices)
    )


# ----------------------------------------------------------------------------- /edit end to end, one provider


def single_route_catalog(only: dict[str, object]) -> Catalog:
    """The harness's one test model, sold only by route `only`."""
    return catalog(
        model(
            "gpt-image-1.5",
            name="GPT Image 1.5",
            qualities=WITH_AUTO,
            max_input_images=16,
            mask=True,
            routes=[only],
        )
    )


async def test_a_charge_above_the_hold_is_capped_for_the_member_and_counted_against_the_budgets(
    fake_discord: FakeDiscord, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Segmind reports (`x-cost`) more than the catalog's price the hold was made on, as after a price
    rise: the member pays the hold, never more, and the rest still counts against the budgets."""
    monkeypatch.setitem(segmind_fake.PRICE, "gpt-image-1-edit-mini", Decimal("0.0280"))
    async with contextlib.AsyncExitStack() as stack:
        openai = await stack.enter_async_context(FakeOpenAI())
        fake = await stack.enter_async_context(FakeSegmind())
        route = {
            "provider": "segmind",
            "model": "gpt-image-1-edit-mini",
            "price": 0.01,
            "max_input_images": 4,
        }
        world = await stack.enter_async_context(
            running_bot(
                fake_discord,
                openai,
                tmp_path,
                env={"OPENAI_API_KEY": "", **provider_env("segmind", fake)},
                catalog=single_route_catalog(route),
            )
        )
        it = await world.edit((DATA / "chelsea.png").read_bytes())
        assert (await world.finished(it)).startswith("Done — 10 credits charged")
        [(absorbed,)] = await world.services.storage.db.all("SELECT credits FROM absorbed_spend")
        assert absorbed == 18  # $0.028 billed = 28 credits: 10 charged, 18 counted against the budgets
        spent = await world.services.storage.reports.spend_by_guild(dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
        assert spent[world.guild.id][0] == 28


@pytest.mark.parametrize("name", ["atlascloud", "wavespeed", "segmind", "oneminai"])
async def test_slash_edit_works_end_to_end_with_each_provider_configured_alone(
    fake_discord: FakeDiscord, tmp_path: Path, name: str
) -> None:
    photo_bytes = (DATA / "chelsea.png").read_bytes()
    async with contextlib.AsyncExitStack() as stack:
        openai = await stack.enter_async_context(FakeOpenAI())  # the harness wants one; it is not configured
        if name == "atlascloud":
            fake: Any = await stack.enter_async_context(FakeAtlas(polls_to_finish=1))
            route = {"provider": name, "model": "openai/gpt-image-1-mini/edit", "price": 0.004, "mask": False}
            route |= {"sizes": ["1024x1024", "1536x1024", "1024x1536"], "backgrounds": ["auto"]}
            route |= {"max_input_images": 4}  # what the adapter sends (checked at start-up)
            route |= {"output_formats": ["png"]}
            charged, paid = 4, lambda: fake.submit_count
        elif name == "wavespeed":
            fake = await stack.enter_async_context(FakeWaveSpeed(polls_to_finish=1))
            route = {"provider": name, "model": "openai/gpt-image-1-mini/edit", "price": 0.02, "mask": False}
            route |= {
                "max_input_images": 4,
                "sizes": ["auto"],
                "qualities": ["auto"],
                "backgrounds": ["auto"],
                "output_formats": ["png"],
            }
            charged, paid = 20, lambda: fake.submit_count
        elif name == "segmind":
            fake = await stack.enter_async_context(FakeSegmind())
            route = {"provider": name, "model": "gpt-image-1-edit-mini", "price": 0.06, "max_input_images": 4}
            charged, paid = 28, lambda: fake.post_count  # its x-cost, $0.028
        else:
            fake = await stack.enter_async_context(FakeOneMin())
            route = {"provider": name, "model": "gpt-image-1-mini", "price": "list", "max_input_images": 1}
            route |= {"sizes": ["1024x1024", "1536x1024", "1024x1536"], "mask_convention": "white"}
            route |= {"backgrounds": ["auto", "transparent"], "transparent_formats": ["png"]}
            route |= {"mask_backgrounds": ["auto"], "max_prompt_chars": 4000}
            charged, paid = 20, lambda: fake.feature_count  # list price, "other" size: chelsea is landscape
        world = await stack.enter_async_context(
            running_bot(
                fake_discord,
                openai,
                tmp_path,
                env={"OPENAI_API_KEY": "", **provider_env(name, fake)},
                catalog=single_route_catalog(route),
            )
        )
        assert set(world.services.providers) == {name}

        it = await world.edit(photo_bytes)
        final = await world.finished(it)

        assert final.startswith(f"Done — {charged} credits charged"), final
        [result] = [m for m in it.followups if not m.ephemeral]
        [(_, data)] = result.files
        assert Image.open(io.BytesIO(data)).size[0] >= 1024
        assert paid() == 1
        assert openai.post_count == 0


# -- rules a mutation pass found untested: each test below fails if its rule is changed -----------


# Once the deadline has passed (remaining() is 0), a refused job is not sent to the next route.
async def test_a_job_past_its_deadline_is_not_sent_to_the_next_route_after_a_refusal() -> None:
    first, second = StubProvider("atlascloud", refused("atlascloud")), StubProvider("wavespeed")
    router = Router(stubs(first, second), order=("atlascloud", "wavespeed"))

    with pytest.raises(perr.ConnectionFailed):
        await router.run(MINI, request(deadline=time.monotonic() - 1))

    assert len(first.calls) == 1 and second.calls == []


# only a call refused unworked is taken back through on_call.
async def test_a_call_the_provider_took_and_then_failed_is_not_reported_as_refused() -> None:
    calls: list[tuple[str, bool]] = []
    first = StubProvider("atlascloud", perr.ProviderJobFailed("failed", accepted=True))

    with pytest.raises(perr.ProviderJobFailed):
        await Router(stubs(first)).run(
            MINI, request(), on_call=lambda r, sent: calls.append((r.provider, sent))
        )

    assert calls == [("atlascloud", True)]


# the refusal names what to change on the route needing the fewest changes.
def test_no_eligible_route_names_the_changes_of_the_closest_route_not_the_first() -> None:
    two = catalog(
        model(
            "m",
            routes=[
                catalog_route("atlascloud", model="a", mask=False, output_formats=["png"]),
                catalog_route("wavespeed", model="w", mask=True, output_formats=["png"]),
            ],
        )
    ).get("m")
    router = Router(stubs(StubProvider("atlascloud"), StubProvider("wavespeed")), order=("atlascloud",))

    with pytest.raises(InvalidOptions) as info:
        router.require(two, replace(NEEDS, mask=True, output_format="jpeg"))

    assert info.value.code == "route_format"  # wavespeed needs only the format changed


# a resumed job is charged on the route that took it, not the provider's first.
async def test_a_resumed_job_follows_the_route_it_was_sent_on_when_a_provider_sells_it_twice() -> None:
    class Resumable(StubProvider):
        async def edit(self, req: EditRequest, *, on_submitted: object = None) -> EditResult:
            return await super().edit(req)

        async def resume(self, job_id: str, req: EditRequest) -> EditResult:
            return await super().edit(req)

    twice = catalog(
        model(
            "m",
            routes=[
                catalog_route("wavespeed", model="cheap", price=0.01),
                catalog_route("wavespeed", model="dear", price=0.05),
            ],
        )
    ).get("m")
    provider = Resumable("wavespeed")

    served = await Router(stubs(provider)).resume(twice, "wavespeed", ["j1"], request(), route_model="dear")

    assert served.route.model == "dear" and provider.calls[0].model == "dear"
    assert served.cost_usd == Decimal("0.05")


# `auto` quality is resolved on a route that lists only concrete qualities.
def test_auto_quality_never_blocks_a_route_with_concrete_qualities() -> None:
    assert blockers(route(qualities=("low", "high")), NEEDS) == ()
    assert blockers(route(qualities=("auto",)), replace(NEEDS, quality="high")) == ("quality",)


# a prompt of exactly the route's limit is allowed.
def test_a_prompt_exactly_at_the_routes_limit_is_allowed() -> None:
    assert blockers(route(max_prompt_chars=4000), replace(NEEDS, prompt_chars=4000)) == ()
    assert blockers(route(max_prompt_chars=4000), replace(NEEDS, prompt_chars=4001)) == ("prompt",)


# without "high", `auto` quality becomes the route's best listed level.
def test_auto_quality_without_high_becomes_the_routes_best_listed_quality() -> None:
    r = route(qualities=("low", "medium"), sizes=("auto",))
    assert adapt(request(quality="auto"), r).quality == "medium"
    assert (
        adapt(request(quality="auto"), route(qualities=("low", "medium", "high"), sizes=("auto",))).quality
        == "high"
    )


# a provider that reports a charge of 0 charges nothing (not the list price).
def test_a_reported_charge_of_zero_is_charged_as_zero() -> None:
    listed = next(r for r in MINI.routes if r.provider == "atlascloud")
    result = EditResult(images=(OutputImage(PNG, "png"),), provider="atlascloud", cost_usd="0")
    assert charge_usd(MINI, listed, result, request()) == Decimal(0)


# on a flat-priced route the member pays per delivered image even if the
# provider's answer carries token usage; the undelivered image is absorbed at the flat price.
def test_a_flat_priced_call_that_delivered_fewer_images_charges_each_delivered_image_in_full() -> None:
    assert MINI.tokens is not None
    flat = next(r for r in MINI.routes if r.provider == "wavespeed" and r.price is not None)
    result = EditResult(
        images=(OutputImage(PNG, "png"),),
        provider="wavespeed",
        usage=Usage(
            input_text_tokens=10, input_image_tokens=100, output_image_tokens=1000, output_text_tokens=0
        ),
    )
    member, absorbed = split_charge(MINI, flat, result, request(count=2))
    assert (member, absorbed) == (flat.price, flat.price)


# failures of calls sent before the circuit opened do not push its trial back.
def test_late_failures_of_calls_already_in_flight_do_not_push_back_the_trial() -> None:
    now = [0.0]
    breaker = CircuitBreaker(threshold=2, cooldown=60, clock=lambda: now[0])
    for _ in range(3):
        assert breaker.allow("p")  # three calls out while the circuit is closed
    breaker.record("p", False)
    breaker.record("p", False)  # opens at 0
    now[0] = 30.0
    breaker.record("p", False)  # the third call fails later
    now[0] = 60.0
    assert breaker.state("p") == HALF_OPEN and breaker.allow("p")


# a shared circuit whose open period ends now ("zero or less: over") is not adopted.
async def test_a_shared_circuit_with_no_time_left_is_not_adopted() -> None:
    class Shared:
        async def exchange(self, opened: object, closed: object) -> dict[str, float]:
            return {"p": 0.0}

    breaker = CircuitBreaker(clock=lambda: 100.0)
    await breaker.share(Shared())
    assert breaker.state("p") == CLOSED and breaker.allow("p")


# a route the lifecycle says is dead (past its date, unlisted, "model gone") is
# never sent a job, though its provider is configured and the model lives on elsewhere.
async def test_a_route_the_lifecycle_says_is_dead_is_never_tried() -> None:
    atlas, wavespeed = StubProvider("atlascloud"), StubProvider("wavespeed")
    router = Router(
        stubs(atlas, wavespeed), order=("atlascloud",), live=lambda m, r: r.provider != "atlascloud"
    )

    served = await router.run(MINI, request())

    assert served.route.provider == "wavespeed" and atlas.calls == []


# only a "model gone" answer retires a route; any other refusal just moves on.
async def test_only_a_model_gone_answer_retires_the_route() -> None:
    retired: list[str] = []

    async def on_gone(model: object, route: object, exc: perr.ModelGone) -> None:
        retired.append(route.provider)  # type: ignore[attr-defined]

    for error, expected in (
        (refused("atlascloud"), []),
        (perr.ModelUnavailable("404, not this model", status=404, accepted=False), []),
        (perr.ModelGone("model_not_found", status=404, accepted=False), ["atlascloud"]),
    ):
        retired.clear()
        first, second = StubProvider("atlascloud", error), StubProvider("wavespeed")
        router = Router(stubs(first, second), order=("atlascloud",), on_gone=on_gone)
        assert (await router.run(MINI, request())).route.provider == "wavespeed"
        assert retired == expected


async def test_a_trial_routes_sync_408_is_never_sent_to_a_second_provider() -> None:
    """A retired route on its trial moves a job it refused without taking to the next route. A 408 is
    not such a refusal: 1min.ai's feature call is synchronous, and a gateway's 408 may come after the
    image was made and billed; sent on, the edit was made, and paid, a second time elsewhere."""
    mini = catalog(
        model(
            "gpt-image-1-mini",
            qualities=["low"],
            price=0.01,
            routes=[catalog_route("oneminai", model="gpt-image-1-mini"), catalog_route("wavespeed")],
        )
    ).get("gpt-image-1-mini")
    wavespeed = StubProvider("wavespeed")
    async with FakeOneMin() as onemin, aiohttp.ClientSession() as session:
        router = Router(
            {
                "oneminai": OneMinAIProvider(session, onemin.api_key, onemin.base_url, policy=FAST),
                "wavespeed": wavespeed,
            },
            order=("oneminai", "wavespeed"),
            on_trial=lambda route: route.provider == "oneminai",
        )
        onemin.fail_next(OneMinFault.GATEWAY_TIMEOUT)
        with pytest.raises(perr.ProviderTimeout):
            await router.run(mini, request(size="1024x1024", quality="low"))
    assert onemin.billed_timeouts == 1
    assert wavespeed.calls == []
