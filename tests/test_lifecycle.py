"""Which models are live: route-level shutdowns, the default model, OpenAI's model list, "model gone"
answers and stored defaults that move off a dead model. Every test sets its own calendar."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass

import pytest

from bot.catalog import RETIREMENT_WARNING_DAYS, Catalog, load_catalog
from bot.errors import InvalidOptions
from bot.lifecycle import ModelLifecycle, discover_once
from bot.providers.errors import ModelGone, ServerError, ServiceUnavailable
from bot.services import edits
from bot.storage import Storage
from tests.catalogs import NOVEMBER_CATALOG, catalog, model, route
from tests.fixtures import edit_service, settings_for

PROVIDERS = ("openai", "atlascloud", "wavespeed", "segmind", "oneminai")
SHUTDOWN = dt.date(2027, 1, 10)


@dataclass(frozen=True)
class Listed:
    id: str
    shutdown_date: dt.date | None = None


class Calendar:
    """A clock the test moves."""

    def __init__(self, day: dt.date) -> None:
        self.day = day

    def __call__(self) -> dt.date:
        return self.day


def two_route_catalog() -> Catalog:
    """`old` is sold by OpenAI (shut down there on SHUTDOWN) and by Atlas (no date); `new` replaces it."""
    return catalog(
        model(
            "old",
            qualities=["low"],
            price=0.01,
            replacement="new",
            snapshots=["old-2026-01-01"],
            routes=[route("openai", shutdown=SHUTDOWN), "atlascloud"],
        ),
        model("new", qualities=["low"], price=0.01),
        model("spare", qualities=["low"], price=0.01),
    )


class Events(list[str]):
    async def __call__(self, line: str) -> None:
        self.append(line)


# ------------------------------------------------------------------------- the packaged catalog


@pytest.mark.parametrize(
    ("configured", "default"),
    [
        ({"openai"}, "gpt-image-2.6-flare"),
        ({"wavespeed"}, "gpt-image-2.6-flare"),
        ({"atlascloud"}, "gpt-image-2"),
        ({"segmind"}, "gpt-image-2"),
        ({"oneminai"}, "gpt-image-2"),
        ({"atlascloud", "openai"}, "gpt-image-2.6-flare"),
    ],
)
@pytest.mark.parametrize("day", [dt.date(2026, 12, 6), dt.date(2027, 3, 1), dt.date(2030, 12, 31)])
def test_without_default_model_each_single_key_gets_a_live_model_it_sells(configured, default, day):
    catalog = load_catalog()
    lifecycle = ModelLifecycle(catalog, configured, lambda: day)
    chosen = lifecycle.default_model()
    assert chosen.id == default
    assert any(r.provider in configured for r in lifecycle.live_routes(chosen))


def test_the_shut_down_1x_line_moves_to_the_2x_line_for_an_openai_bot():
    lifecycle = ModelLifecycle(load_catalog(), {"openai"}, lambda: dt.date(2026, 12, 6))
    for old in ("gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5"):
        assert not lifecycle.usable(load_catalog().get(old))
        resolution = lifecycle.resolve(old, picked=True)
        assert resolution.model.id.startswith("gpt-image-2") and "retired" in (resolution.notice or "")
    assert [m.id for m in lifecycle.available()][:5] == [
        "gpt-image-2.6-flare",
        "gpt-image-2.6-sunburst",
        "gpt-image-2.5-flare",
        "gpt-image-2.5-sunburst",
        "gpt-image-2",
    ]


def test_packaged_2x_models_carry_the_specs_qualities_sizes_and_prices():
    catalog = load_catalog()
    two, flare = catalog.get("gpt-image-2"), catalog.get("gpt-image-2.6-flare")
    assert "xhigh" not in two.qualities and {"xhigh", "max"} <= set(flare.qualities)
    assert two.accepts_size("2048x1152") and two.accepts_size("3840x2160")
    assert not two.accepts_size("2050x1152") and not two.accepts_size("4096x1024")  # /16, ratio
    assert not two.accepts_size("512x512")  # too few pixels
    assert str(two.image_price("high", "1024x1024")) == "0.211"
    assert str(catalog.get("gpt-image-2.5-flare").image_price("max", "1536x1024")) == "0.165"
    # A free size is held at the square price scaled by its area (no published formula).
    assert two.image_price("low", "2048x2048") == two.image_price("low", "1024x1024") * 4
    routes = {(r.provider, r.model): r for r in two.routes}
    assert ("atlascloud", "openai/gpt-image-2/edit") in routes
    assert routes[("atlascloud", "openai/gpt-image-2-developer/edit")].price is not None
    assert "auto" not in routes[("oneminai", "gpt-image-2")].qualities
    assert routes[("oneminai", "gpt-image-2")].free_sizes and routes[("openai", "gpt-image-2")].free_sizes
    assert routes[("segmind", "gpt-image-2")].max_input_images == 1
    assert not any(
        r.input_fidelity for m in catalog.models.values() if m.id.startswith("gpt-image-2") for r in m.routes
    )


# ------------------------------------------------------------------------- dates per route


def test_a_date_on_one_route_leaves_the_model_live_on_the_others():
    catalog, calendar = two_route_catalog(), Calendar(SHUTDOWN - dt.timedelta(days=1))
    both = ModelLifecycle(catalog, {"openai", "atlascloud"}, calendar)
    only_openai = ModelLifecycle(catalog, {"openai"}, calendar)
    old = catalog.get("old")
    assert both.usable(old) and only_openai.usable(old)
    calendar.day = SHUTDOWN
    assert both.usable(old) and [r.provider for r in both.live_routes(old)] == ["atlascloud"]
    assert not only_openai.usable(old)
    assert only_openai.resolve("old", picked=False).model.id == "new"


def test_walking_across_the_shutdown_date_warns_then_moves_to_the_replacement():
    catalog, calendar = two_route_catalog(), Calendar(SHUTDOWN - dt.timedelta(days=40))
    lifecycle = ModelLifecycle(catalog, {"openai"}, calendar, default_model_id="old")
    assert lifecycle.resolve("old", picked=True).notice is None
    assert lifecycle.default_model().id == "old"
    calendar.day = SHUTDOWN - dt.timedelta(days=5)
    assert "will be retired on 2027-01-10" in (lifecycle.resolve("old", picked=True).notice or "")
    assert any("retires in 5 days" in w for w in lifecycle.warnings())
    calendar.day = SHUTDOWN
    resolution = lifecycle.resolve("old", picked=True)
    assert resolution.model.id == "new" and "retired" in (resolution.notice or "")
    assert lifecycle.default_model().id == "new"  # DEFAULT_MODEL follows its replacement
    assert [m.id for m in lifecycle.available()] == ["new", "spare"]


def test_a_dead_model_without_replacement_is_refused_to_who_picked_it_and_replaced_for_others():
    models = catalog(
        model("gone", qualities=["low"], price=1, shutdown="2026-01-01"),
        model("live", qualities=["low"], price=1),
    )
    lifecycle = ModelLifecycle(models, {"openai"}, lambda: dt.date(2026, 6, 1))
    with pytest.raises(InvalidOptions) as refused:
        lifecycle.resolve("gone", picked=True)
    assert refused.value.code == "model_retired" and "not charged" in refused.value.user_message
    resolution = lifecycle.resolve("gone", picked=False)
    assert resolution.model.id == "live" and "no longer available" in (resolution.notice or "")


def test_no_live_model_at_all_is_a_clear_refusal():
    lifecycle = ModelLifecycle(two_route_catalog(), {"segmind"}, lambda: SHUTDOWN)
    with pytest.raises(InvalidOptions) as refused:
        lifecycle.default_model()
    assert refused.value.code == "no_live_model" and "/diagnose" in refused.value.user_message


async def test_no_live_model_is_logged_once_when_it_starts_and_once_when_it_ends(caplog, storage: Storage):
    """A bot that can edit nothing says so in its log, not only to the member who tries; a tick per
    job (or a /healthz every 30 s) must not repeat it."""
    only = catalog(model("only", qualities=["low"], price=0.01, routes=[route("openai", shutdown=SHUTDOWN)]))
    calendar = Calendar(SHUTDOWN - dt.timedelta(days=1))
    lifecycle = ModelLifecycle(only, {"openai"}, calendar, store=storage.settings)
    caplog.set_level(logging.INFO, logger="bot.lifecycle")

    def said(level: int) -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "bot.lifecycle" and r.levelno == level]

    assert lifecycle.live_model_problem() is None  # start-up: one model is live
    await lifecycle.tick()
    calendar.day = SHUTDOWN
    for _ in range(3):
        await lifecycle.tick()
        assert lifecycle.live_model_problem() == "no live model"
    calendar.day = SHUTDOWN + dt.timedelta(days=1)
    await lifecycle.tick()
    [error] = said(logging.ERROR)
    assert error.startswith("no model can edit") and "(openai) as of 2027-01-10" in error
    assert said(logging.INFO) == []


async def test_no_live_model_at_start_up_is_logged_and_its_end_said_once(caplog, storage: Storage):
    gone = ModelGone("404 model_not_found", provider="openai", status=404, code="model_not_found")
    models = catalog(model("only", qualities=["low"], price=0.01))
    lifecycle = ModelLifecycle(models, {"openai"}, lambda: dt.date(2026, 12, 1), store=storage.settings)
    only = models.get("only")
    await lifecycle.retire(only, only.routes[0], gone)  # a route retired by an earlier process
    lifecycle = ModelLifecycle(models, {"openai"}, lambda: dt.date(2026, 12, 1), store=storage.settings)
    await lifecycle.load()
    caplog.clear()
    caplog.set_level(logging.INFO, logger="bot.lifecycle")
    assert lifecycle.live_model_problem() == "no live model"  # start-up
    assert lifecycle.live_model_problem() == "no live model"

    async def listing() -> list[Listed]:
        return [Listed("only")]

    await discover_once(lifecycle, "openai", listing)  # the key was granted access: back
    assert lifecycle.live_model_problem() is None
    levels = [(r.levelno, r.getMessage()[:20]) for r in caplog.records if r.name == "bot.lifecycle"]
    assert levels == [(logging.ERROR, "no model can edit: e"), (logging.INFO, "a model can edit aga")]


# ------------------------------------------------------------------------- run-time facts


async def test_model_gone_retires_one_route_persistently_and_is_announced(storage: Storage):
    catalog, events = two_route_catalog(), Events()
    calendar = Calendar(dt.date(2026, 12, 6))
    lifecycle = ModelLifecycle(
        catalog, {"openai", "atlascloud"}, calendar, store=storage.settings, on_event=events
    )
    old = catalog.get("old")
    atlas = next(r for r in old.routes if r.provider == "atlascloud")
    gone = ModelGone("404 model_not_found", provider="atlascloud", status=404, code="model_not_found")
    assert await lifecycle.retire(old, atlas, gone)
    assert not await lifecycle.retire(old, atlas, gone)  # once only
    assert [r.provider for r in lifecycle.live_routes(old)] == ["openai"]
    assert len(events) == 1 and "old on atlascloud" in events[0]
    # A new process reads what this one learned: the dead route is never asked again.
    again = ModelLifecycle(catalog, {"openai", "atlascloud"}, calendar, store=storage.settings)
    assert again.usable(old)
    await again.load()
    assert [r.provider for r in again.live_routes(old)] == ["openai"]
    assert any("answered" in w and "old on atlascloud" in w for w in again.warnings())


async def test_openai_model_list_sets_route_dates_and_reports_new_and_missing_models(storage: Storage):
    catalog, events = two_route_catalog(), Events()
    calendar = Calendar(dt.date(2026, 12, 1))
    lifecycle = ModelLifecycle(catalog, {"openai"}, calendar, store=storage.settings, on_event=events)

    async def listing() -> list[Listed]:
        return [
            Listed("old", dt.date(2026, 12, 20)),  # earlier than the catalog's date
            Listed("old-2026-01-01"),  # a known snapshot, not "unknown"
            Listed("spare"),
            Listed("gpt-image-9"),  # new
            Listed("whisper-1"),  # not an image model
        ]

    report = await discover_once(lifecycle, "openai", listing)
    assert report.ok and report.unknown == ("gpt-image-9",) and report.missing == ("new",)
    assert report.soon == ("old on openai shuts down on 2026-12-20 (in 19 days)",)
    old, new = catalog.get("old"), catalog.get("new")
    assert not lifecycle.usable(new)  # missing from the list: unavailable on that route
    assert lifecycle.route_end(old, old.routes[0]) == dt.date(2026, 12, 20)
    assert any("gpt-image-9" in line for line in events) and any("2026-12-20" in line for line in events)
    assert any("gpt-image-9" in w for w in lifecycle.warnings())
    calendar.day = dt.date(2026, 12, 20)
    assert not lifecycle.usable(old)
    # Persisted: a restart that cannot read the list keeps what the last read said.
    again = ModelLifecycle(catalog, {"openai"}, calendar, store=storage.settings)
    await again.load()

    async def broken() -> list[Listed]:
        raise ConnectionError("no route to host")

    # The restarted bot still shows the new model but does not announce it a second time.
    again_events = Events()
    again.on_event = again_events
    await discover_once(again, "openai", listing)
    assert any("gpt-image-9" in w for w in again.warnings())
    assert not any("gpt-image-9" in line for line in again_events)
    failed = await discover_once(again, "openai", broken)
    assert not failed.ok and failed.error == "the service could not be reached"
    assert not again.usable(old) and not again.usable(new) and again.usable(catalog.get("spare"))


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (ServiceUnavailable("HTTP 401 invalid_api_key", provider="openai"), "the service refused the key"),
        (TimeoutError(), "no answer in time"),
        (ServerError("HTTP 503", provider="openai"), "the service is busy or failing"),
        (ValueError("bad json"), "an answer it could not read (see the log)"),
    ],
)
async def test_a_failed_listing_is_said_in_words_not_as_an_exception_class(error: Exception, said: str):
    """/diagnose showed "could not read openai's model list (ServiceUnavailable)" for a wrong key."""
    lifecycle = ModelLifecycle(two_route_catalog(), {"openai"}, lambda: dt.date(2026, 12, 1))

    async def broken() -> list[Listed]:
        raise error

    report = await discover_once(lifecycle, "openai", broken)
    assert not report.ok and report.error is not None and report.error.startswith(said)


async def test_a_later_date_in_the_model_list_does_not_extend_the_catalogs_date():
    # The earlier of the two ends the route (bot/data/catalog.toml's header says so): a list that
    # lags behind an announced retirement must not keep sending edits to a model about to go.
    catalog, calendar = two_route_catalog(), Calendar(dt.date(2026, 12, 1))
    lifecycle = ModelLifecycle(catalog, {"openai"}, calendar)
    later = SHUTDOWN + dt.timedelta(days=30)
    await lifecycle.apply_listing("openai", [Listed("old", later), Listed("new"), Listed("spare")])
    old = catalog.get("old")
    assert lifecycle.route_end(old, old.routes[0]) == SHUTDOWN
    calendar.day = SHUTDOWN
    assert not lifecycle.route_live(old, old.routes[0])


async def test_a_failed_first_listing_keeps_the_catalogs_view():
    catalog = two_route_catalog()
    lifecycle = ModelLifecycle(catalog, {"openai"}, lambda: dt.date(2026, 12, 1))

    async def broken() -> list[Listed]:
        raise TimeoutError

    report = await discover_once(lifecycle, "openai", broken)
    assert not report.ok
    assert [m.id for m in lifecycle.available()] == ["old", "new", "spare"]


async def test_a_route_retired_on_a_404_is_back_once_the_model_list_has_it_again(storage: Storage):
    """OpenAI's 404 says "does not exist or you do not have access", and its list holds only what the
    key may use: a project granted access later gets the route back when the model reappears in the
    list, remembered across a restart. One retired while listed stays retired."""
    catalog, events = two_route_catalog(), Events()
    day = Calendar(dt.date(2026, 12, 1))
    lifecycle = ModelLifecycle(catalog, {"openai"}, day, store=storage.settings, on_event=events)
    spare, old = catalog.get("spare"), catalog.get("old")
    gone = ModelGone("404 model_not_found", provider="openai", status=404, code="model_not_found")

    async def without_spare() -> list[Listed]:
        return [Listed("old"), Listed("new")]

    async def with_spare() -> list[Listed]:
        return [Listed("old"), Listed("new"), Listed("spare")]

    new = catalog.get("new")
    await lifecycle.retire(new, new.routes[0], gone)  # before any list was read
    await discover_once(lifecycle, "openai", without_spare)  # no access to spare yet: not listed
    assert lifecycle.usable(new)  # listed at the first read: back
    await lifecycle.retire(spare, spare.routes[0], gone)
    await lifecycle.retire(old, old.routes[0], gone)  # listed, yet answered 404
    await discover_once(lifecycle, "openai", with_spare)
    assert lifecycle.usable(spare)
    assert not [r for r in lifecycle.live_routes(old) if r.provider == "openai"]
    assert any("spare is in openai's model list again" in line for line in events)
    assert not any("old is in openai's model list again" in line for line in events)
    again = ModelLifecycle(catalog, {"openai"}, day, store=storage.settings)
    await again.load()
    assert again.usable(spare)


async def test_a_list_naming_none_of_the_catalogs_models_is_not_applied(storage: Storage):
    """A gateway at OPENAI_BASE_URL that lists only chat models (or a key that sees no image model)
    must not mark every route unlisted and stop all editing."""
    catalog = two_route_catalog()
    lifecycle = ModelLifecycle(catalog, {"openai"}, lambda: dt.date(2026, 12, 1), store=storage.settings)

    async def chat_only() -> list[Listed]:
        return [Listed("gpt-4o"), Listed("gpt-4o-mini"), Listed("gpt-image-9")]

    report = await discover_once(lifecycle, "openai", chat_only)
    assert not report.ok and report.error == "lists none of the catalog's models"
    assert [m.id for m in lifecycle.available()] == ["old", "new", "spare"]
    again = ModelLifecycle(catalog, {"openai"}, lambda: dt.date(2026, 12, 1), store=storage.settings)
    await again.load()  # and nothing of it was remembered
    assert [m.id for m in again.available()] == ["old", "new", "spare"]


async def test_stored_defaults_on_a_dead_model_move_once_with_a_notice(storage: Storage):
    catalog, events = two_route_catalog(), Events()
    calendar = Calendar(SHUTDOWN - dt.timedelta(days=1))
    lifecycle = ModelLifecycle(catalog, {"openai"}, calendar, store=storage.settings, on_event=events)
    await storage.settings.update_user_settings(7, {"model": "old"})
    await storage.settings.update_user_settings(8, {"model": "spare"})
    await storage.settings.update_guild_policy(5, {"default_model": "old"}, actor_id=1)
    await lifecycle.tick()
    assert (await storage.settings.user_settings_row(7))["model"] == "old"  # still live
    calendar.day = SHUTDOWN
    await lifecycle.tick()
    assert (await storage.settings.user_settings_row(7))["model"] == "new"
    assert (await storage.settings.user_settings_row(8))["model"] == "spare"
    assert (await storage.settings.guild_policy_row(5))["default_model"] == "new"
    [notice] = await storage.settings.take_model_notices(7)
    assert notice == "old is no longer available, so your default is now new (change it with /settings)."
    assert await storage.settings.take_model_notices(7) == []  # one time only
    assert await storage.settings.take_model_notices(8) == []
    assert any("retired on every configured service" in e for e in events)
    assert any("1 member(s), 1 server(s)" in e for e in events)


async def test_a_slow_model_list_does_not_hold_up_start_up_and_is_applied_when_it_answers(
    storage: Storage, tmp_path, monkeypatch
):
    answer = asyncio.Event()

    class SlowOpenAI:
        """Only what start-up asks of the OpenAI adapter: its model list, which takes its time."""

        name = "openai"

        async def edit(self, request):  # never called here
            raise AssertionError("no edit in this test")

        async def list_models(self) -> list[Listed]:
            await answer.wait()
            return [Listed("old", dt.date(2027, 1, 2)), Listed("new"), Listed("spare")]

    monkeypatch.setattr(edits, "FIRST_DISCOVERY_WAIT_SECONDS", 0.05)
    cat = two_route_catalog()
    service = edit_service(
        settings_for(tmp_path, OPENAI_API_KEY="sk-test-0123456789"),
        cat,
        storage,
        {"openai": SlowOpenAI()},  # type: ignore[dict-item]
        approve=[],
        today=lambda: dt.date(2027, 1, 1),
    )
    old = cat.get("old")
    await asyncio.wait_for(service.start(), 5)  # returns while the list is still being read
    assert service.lifecycle.route_end(old, old.routes[0]) == SHUTDOWN  # the catalog's date, for now
    answer.set()
    for _ in range(200):
        if service.lifecycle.route_end(old, old.routes[0]) == dt.date(2027, 1, 2):
            break
        await asyncio.sleep(0.01)
    assert service.lifecycle.route_end(old, old.routes[0]) == dt.date(2027, 1, 2)
    await service.drain(0.1)


async def test_start_up_logs_an_error_when_no_model_can_edit(storage: Storage, tmp_path, caplog):
    class OpenAIWithoutList:
        name = "openai"

        async def edit(self, request):  # never called here
            raise AssertionError("no edit in this test")

    service = edit_service(
        settings_for(tmp_path, OPENAI_API_KEY="sk-test-0123456789"),
        load_catalog(NOVEMBER_CATALOG),  # the 1.x line only, all shut down by 2026-12-01
        storage,
        {"openai": OpenAIWithoutList()},  # type: ignore[dict-item]
        approve=[],
        today=lambda: dt.date(2026, 12, 7),
    )
    await asyncio.wait_for(service.start(), 5)
    await service.drain(0.1)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert [e for e in errors if e.startswith("no model can edit")]


# -- rules a mutation pass found untested: each test below fails if its rule is changed -----------


# a replacement that is itself dead is passed over for the next live one.
def test_a_dead_replacement_is_skipped_for_the_next_live_model_in_the_chain():
    models = catalog(
        model("old", qualities=["low"], price=1, shutdown="2026-01-01", replacement="mid"),
        model("mid", qualities=["low"], price=1, shutdown="2026-03-01", replacement="new"),
        model("new", qualities=["low"], price=1),
    )
    lifecycle = ModelLifecycle(models, {"openai"}, lambda: dt.date(2026, 6, 1))
    assert lifecycle.resolve("old", picked=True).model.id == "new"


# after the replacement chain comes the default, then catalog order.
def test_fallbacks_of_a_dead_model_try_the_default_before_the_rest_of_the_catalog():
    models = catalog(
        model("gone", qualities=["low"], price=1, shutdown="2026-01-01"),
        model("first", qualities=["low"], price=1),
        model("chosen", qualities=["low"], price=1),
    )
    lifecycle = ModelLifecycle(models, {"openai"}, lambda: dt.date(2026, 6, 1), default_model_id="chosen")
    assert [m.id for m in lifecycle.fallbacks(models.get("gone"))] == ["chosen", "first"]


# a model that lives on undated elsewhere is not announced as retiring.
def test_no_retirement_notice_while_another_live_route_has_no_date():
    lifecycle = ModelLifecycle(
        two_route_catalog(), {"openai", "atlascloud"}, Calendar(SHUTDOWN - dt.timedelta(days=5))
    )
    assert lifecycle.resolve("old", picked=True).notice is None


# the notice names the last live day, from
# exactly RETIREMENT_WARNING_DAYS before it.
def test_the_retirement_notice_names_the_last_routes_date_from_the_first_day_of_the_window():
    later = SHUTDOWN + dt.timedelta(days=10)
    models = catalog(
        model(
            "m",
            qualities=["low"],
            price=1,
            routes=[route("openai", shutdown=SHUTDOWN), route("atlascloud", shutdown=later)],
        )
    )
    calendar = Calendar(later - dt.timedelta(days=RETIREMENT_WARNING_DAYS + 1))
    lifecycle = ModelLifecycle(models, {"openai", "atlascloud"}, calendar)
    assert lifecycle.resolve("m", picked=True).notice is None
    calendar.day = later - dt.timedelta(days=RETIREMENT_WARNING_DAYS)
    assert f"will be retired on {later:%Y-%m-%d}" in (lifecycle.resolve("m", picked=True).notice or "")


# on its shutdown day a route is reported retired, not "retires in 0 days".
def test_on_its_shutdown_day_a_route_is_reported_retired():
    lifecycle = ModelLifecycle(two_route_catalog(), {"openai", "atlascloud"}, Calendar(SHUTDOWN))
    assert "old on openai retired on 2027-01-10" in lifecycle.warnings()


# a model's death is announced once, not again on every later day.
async def test_a_dead_model_is_announced_once():
    events, calendar = Events(), Calendar(SHUTDOWN - dt.timedelta(days=1))
    lifecycle = ModelLifecycle(two_route_catalog(), {"openai"}, calendar, on_event=events)
    await lifecycle.tick()
    calendar.day = SHUTDOWN
    await lifecycle.tick()
    calendar.day = SHUTDOWN + dt.timedelta(days=1)
    await lifecycle.tick()
    assert [line for line in events if "old is now retired" in line] == [
        "🪦 old is now retired on every configured service."
    ]


# a listed shutdown today is reported with the others that are soon.
async def test_a_listed_shutdown_on_the_day_of_the_listing_is_reported():
    lifecycle = ModelLifecycle(two_route_catalog(), {"openai"}, lambda: dt.date(2026, 12, 1))
    report = await lifecycle.apply_listing(
        "openai", [Listed("old", dt.date(2026, 12, 1)), Listed("new"), Listed("spare")]
    )
    assert report.soon == ("old on openai shuts down on 2026-12-01 (in 0 days)",)


# a provider with no route in the catalog has nothing to mark unlisted, so its
# list is applied (its new image models are reported), not refused as naming none of ours.
async def test_a_listing_from_a_provider_with_no_catalog_routes_is_applied():
    models = catalog(model("m", qualities=["low"], price=1, routes=["atlascloud"]))
    lifecycle = ModelLifecycle(models, {"openai", "atlascloud"}, lambda: dt.date(2026, 12, 1))

    async def listing() -> list[Listed]:
        return [Listed("gpt-image-9")]

    report = await discover_once(lifecycle, "openai", listing)
    assert report.ok and report.unknown == ("gpt-image-9",)
