"""A route retired by a "model gone" answer is tried again after GONE_ROUTE_RETRY_HOURS, comes back on
any other answer, restarts its wait on "model gone" again, and the operator can bring it back by hand;
other processes learn either from the stored `route_status`. Every test sets its own clock."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from decimal import Decimal

import aiohttp
import pytest

from bot.errors import InvalidOptions
from bot.lifecycle import NO_LIVE_MODEL_PROBLEM, ModelLifecycle
from bot.providers import errors as perr
from bot.providers.atlascloud import AtlasCloudProvider
from bot.providers.base import Provider
from bot.providers.wavespeed import WaveSpeedProvider
from bot.routing import Router
from bot.storage import Storage
from tests.catalogs import catalog, model, route
from tests.fakes.atlascloud_server import FakeAtlas
from tests.fakes.wavespeed_server import FakeWaveSpeed
from tests.test_lifecycle import Events
from tests.test_routing import CATALOG, FAST, MINI, request

START = dt.datetime(2026, 11, 15, 9, 30, tzinfo=dt.UTC)
GONE = perr.ModelGone("404 model not found", provider="atlascloud", status=404, code="not_found")
OPERATOR = 2**62 + 7


class Clock:
    """The time the test moves (UTC); `day` is its calendar."""

    def __init__(self, now: dt.datetime = START) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now

    def day(self) -> dt.date:
        return self.now.date()

    def advance(self, **kw: float) -> None:
        self.now += dt.timedelta(**kw)


def resold():
    """`m` sold by Atlas first and WaveSpeed second; `solo` by Atlas alone, before `other`."""
    return catalog(
        model("m", qualities=["low"], price=0.01, routes=[route("atlascloud"), route("wavespeed")]),
        model("solo", qualities=["low"], price=0.01, routes=[route("atlascloud", model="solo-id")]),
        model("other", qualities=["low"], price=0.01, routes=[route("wavespeed", model="other-id")]),
    )


def lifecycle_for(
    clock: Clock,
    storage: Storage | None = None,
    *,
    hours: float = 24,
    events: Events | None = None,
    models=None,
) -> ModelLifecycle:
    return ModelLifecycle(
        models or resold(),
        {"atlascloud", "wavespeed"},
        clock.day,
        now=clock,
        gone_retry_hours=hours,
        store=storage.settings if storage is not None else None,
        on_event=events,
    )


# ------------------------------------------------------------------------------ the lifecycle


async def test_a_route_gone_is_tried_again_after_its_wait_and_a_result_brings_it_back(storage: Storage):
    clock, events = Clock(), Events()
    lifecycle = lifecycle_for(clock, storage, events=events)
    m = lifecycle.catalog.get("m")
    atlas = m.routes[0]

    assert await lifecycle.retire(m, atlas, GONE)
    assert not lifecycle.route_live(m, atlas)
    clock.advance(hours=23, minutes=59)
    assert not lifecycle.route_live(m, atlas) and not lifecycle.trial_due(atlas)
    assert not await lifecycle.answered(m, atlas)  # a call sent before it was retired proves nothing
    clock.advance(minutes=1)
    assert lifecycle.trial_due(atlas) and lifecycle.route_live(m, atlas)
    assert [r.provider for r in lifecycle.live_routes(m)] == ["atlascloud", "wavespeed"]  # its own place

    assert await lifecycle.answered(m, atlas)
    assert lifecycle.route_live(m, atlas) and not lifecycle.facts(atlas).gone
    assert events == [
        '🪦 m on atlascloud answered "model gone"; that route is retired.',
        "♻️ m on atlascloud answered again; that route is back.",
    ]
    again = lifecycle_for(clock, storage)  # a restart reads it back
    await again.load()
    assert again.route_live(m, atlas) and not again.facts(atlas).gone


async def test_a_trial_that_answers_gone_again_waits_another_cool_off_without_a_second_announcement(
    storage: Storage,
):
    clock, events = Clock(), Events()
    lifecycle = lifecycle_for(clock, storage, events=events)
    m = lifecycle.catalog.get("m")
    atlas = m.routes[0]
    await lifecycle.retire(m, atlas, GONE)
    clock.advance(hours=30)
    assert lifecycle.route_live(m, atlas)

    assert await lifecycle.retire(m, atlas, GONE)
    assert not await lifecycle.retire(m, atlas, GONE)  # a concurrent trial's same answer: nothing new
    assert not lifecycle.route_live(m, atlas)
    assert lifecycle.facts(atlas).gone_at == START + dt.timedelta(hours=30)
    assert lifecycle.trial_at(atlas) == START + dt.timedelta(hours=54)
    assert len(events) == 1
    stored = lifecycle_for(clock, storage)
    await stored.load()
    assert stored.facts(atlas).gone_at == START + dt.timedelta(hours=30)


async def test_with_no_retry_hours_a_gone_route_is_retired_for_good(storage: Storage):
    clock = Clock()
    lifecycle = lifecycle_for(clock, storage, hours=0)
    m = lifecycle.catalog.get("m")
    await lifecycle.retire(m, m.routes[0], GONE)
    clock.advance(days=3650)
    assert not lifecycle.route_live(m, m.routes[0]) and lifecycle.trial_at(m.routes[0]) is None
    assert not await lifecycle.answered(m, m.routes[0])
    assert "not tried again" in " ".join(lifecycle.warnings())


@pytest.mark.parametrize(
    ("error", "back"),
    [
        (perr.InvalidInput("400 image too small", status=400), True),
        (perr.ServerError("500", status=500), True),
        (perr.ProviderTimeout("deadline", accepted=True), True),  # it took the job
        (perr.RateLimited("429", status=429), False),  # said before the model is looked at
        (perr.ServiceUnavailable("401 key", status=401), False),  # our account, not the model
        (perr.ModelUnavailable("no access", status=403), False),
        (perr.ConnectionFailed("refused", accepted=False), False),  # never reached it
    ],
)
async def test_which_answers_on_a_trial_bring_a_route_back(error: perr.ProviderError, back: bool):
    clock = Clock()
    lifecycle = lifecycle_for(clock)
    m = lifecycle.catalog.get("m")
    await lifecycle.retire(m, m.routes[0], GONE)
    clock.advance(hours=24)
    assert await lifecycle.answered(m, m.routes[0], error) is back
    assert lifecycle.facts(m.routes[0]).gone is not back


async def test_a_model_whose_only_route_is_retired_is_usable_again_for_its_trial(storage: Storage):
    """Its trial is a question one place answers: while it is due the model is offered, the default may
    be it and /healthz has a live model; "model gone" again makes it dead at once."""
    clock = Clock()
    lifecycle = lifecycle_for(clock, storage)
    solo = lifecycle.catalog.get("solo")
    await lifecycle.retire(solo, solo.routes[0], GONE)
    assert not lifecycle.usable(solo)
    assert lifecycle.resolve("solo", picked=False).model.id == "m"
    await storage.settings.update_user_settings(1, {"model": "solo"})
    await lifecycle.move_stored_defaults()
    assert (await storage.settings.user_settings_row(1))["model"] is None  # type: ignore[index]

    clock.advance(hours=24)
    assert lifecycle.usable(solo) and lifecycle.resolve("solo", picked=True).model.id == "solo"
    assert lifecycle.live_model_problem() is None
    assert any("solo on atlascloud" in w and "being tried again" in w for w in lifecycle.warnings())

    await lifecycle.retire(solo, solo.routes[0], GONE)
    assert not lifecycle.usable(solo)
    with pytest.raises(InvalidOptions):
        lifecycle.resolve("solo", picked=True)


async def test_no_live_model_lasts_only_until_a_retired_routes_trial_is_due():
    clock = Clock()
    models = catalog(model("only", qualities=["low"], price=0.01, routes=[route("atlascloud")]))
    lifecycle = lifecycle_for(clock, models=models)
    only = models.get("only")
    await lifecycle.retire(only, only.routes[0], GONE)
    assert lifecycle.live_model_problem() == NO_LIVE_MODEL_PROBLEM
    clock.advance(hours=24)
    assert lifecycle.live_model_problem() is None


async def test_a_dead_model_whose_trials_keep_answering_gone_is_announced_dead_once():
    clock, events = Clock(), Events()
    lifecycle = lifecycle_for(clock, events=events)
    solo = lifecycle.catalog.get("solo")
    await lifecycle.tick()
    await lifecycle.retire(solo, solo.routes[0], GONE)
    for _ in range(3):  # a day later its trial is due, the next edit asks it, and it is still gone
        clock.advance(hours=24)
        await lifecycle.tick()
        await lifecycle.retire(solo, solo.routes[0], GONE)
    clock.advance(hours=1)
    await lifecycle.tick()
    assert [e for e in events if e.startswith("🪦")] == [
        '🪦 solo on atlascloud answered "model gone"; that route is retired.',
        "🪦 solo is now retired on every configured service.",
    ]


async def test_a_row_stored_before_gone_at_held_a_time_counts_from_its_day(storage: Storage):
    await storage.settings.put_route_status(
        "atlascloud", "m", {"gone_at": "2026-11-15", "gone_reason": "ModelGone status=404 code=None"}
    )
    clock = Clock(dt.datetime(2026, 11, 15, 23, 0, tzinfo=dt.UTC))
    lifecycle = lifecycle_for(clock, storage)
    await lifecycle.load()
    m = lifecycle.catalog.get("m")
    assert not lifecycle.route_live(m, m.routes[0])
    clock.now = dt.datetime(2026, 11, 16, 0, 0, tzinfo=dt.UTC)
    assert lifecycle.route_live(m, m.routes[0])


async def test_dates_and_model_lists_are_not_tried_again():
    """Only a "model gone" answer waits for a trial: a route past its shutdown date stays dead."""
    clock = Clock()
    models = catalog(
        model("dated", qualities=["low"], price=0.01, routes=[route("atlascloud", shutdown="2026-11-20")])
    )
    lifecycle = lifecycle_for(clock, models=models)
    dated = models.get("dated")
    await lifecycle.retire(dated, dated.routes[0], GONE)
    clock.advance(days=10)  # past its date, and past its trial
    assert lifecycle.trial_due(dated.routes[0]) and not lifecycle.route_live(dated, dated.routes[0])


# --------------------------------------------------------------------------- by hand, and fleet-wide


async def test_the_operator_brings_a_route_back_and_every_process_hears_of_it(storage: Storage):
    clock, events = Clock(), Events()
    here, there = (
        lifecycle_for(clock, storage, hours=0, events=events),
        lifecycle_for(clock, storage, hours=0),
    )
    await there.load()
    m = here.catalog.get("m")
    atlas = m.routes[0]

    await here.retire(m, atlas, GONE)
    assert there.route_live(m, atlas)
    await there.refresh()  # its next lease round
    assert not there.route_live(m, atlas)

    with pytest.raises(InvalidOptions) as refused:
        await here.revive("m", "wavespeed", actor_id=OPERATOR)
    assert refused.value.code == "route_not_retired"
    with pytest.raises(InvalidOptions) as missing:
        await here.revive("other", "atlascloud", actor_id=OPERATOR)
    assert missing.value.code == "no_such_route"

    [revived] = await here.revive("m", "atlascloud", actor_id=OPERATOR)
    assert revived == atlas and here.route_live(m, atlas)
    assert events[-1] == f"♻️ m on atlascloud was brought back by <@{OPERATOR}>."
    await there.refresh()
    assert there.route_live(m, atlas)
    [state] = [s for s in there.route_states() if s.model == "m" and s.provider == "atlascloud"]
    assert state.live and state.why is None


async def test_a_trials_new_wait_reaches_the_other_processes(storage: Storage):
    clock = Clock()
    here, there = lifecycle_for(clock, storage), lifecycle_for(clock, storage)
    m = here.catalog.get("m")
    atlas = m.routes[0]
    await here.retire(m, atlas, GONE)
    await there.refresh()
    clock.advance(hours=24)
    await here.retire(m, atlas, GONE)  # its trial: still gone
    assert there.trial_due(atlas)
    await there.refresh()
    assert not there.trial_due(atlas)  # the fleet tries it once per wait, not once per process
    [state] = [s for s in there.route_states() if s.model == "m" and s.provider == "atlascloud"]
    assert not state.live and state.trial_at == clock.now + dt.timedelta(hours=24)


# ------------------------------------------------------------------ the router, over the wire


@pytest.fixture
async def adapters(atlas: FakeAtlas, wavespeed: FakeWaveSpeed) -> AsyncIterator[dict[str, Provider]]:
    fast = {"policy": FAST, "poll_interval": 0.01, "max_poll_interval": 0.02, "call_timeout": 5.0}
    async with aiohttp.ClientSession() as session:
        yield {
            "atlascloud": AtlasCloudProvider(session, atlas.api_key, atlas.base_url, **fast),  # type: ignore[arg-type]
            "wavespeed": WaveSpeedProvider(session, wavespeed.api_key, wavespeed.base_url, **fast),  # type: ignore[arg-type]
        }


def routed(adapters: dict[str, Provider], clock: Clock, storage: Storage, events: Events) -> Router:
    lifecycle = ModelLifecycle(
        CATALOG,
        set(adapters),
        clock.day,
        now=clock,
        gone_retry_hours=24,
        store=storage.settings,
        on_event=events,
    )
    return Router(
        adapters,
        order=("atlascloud", "wavespeed"),
        live=lifecycle.route_live,
        on_gone=lifecycle.retire,
        on_answer=lifecycle.answered,
    )


ATLAS_MINI = next(r.model for r in MINI.routes if r.provider == "atlascloud")


async def test_a_due_trial_that_succeeds_brings_the_route_back(
    adapters: dict[str, Provider], atlas: FakeAtlas, wavespeed: FakeWaveSpeed, storage: Storage
):
    clock, events = Clock(), Events()
    router = routed(adapters, clock, storage, events)
    atlas.retire_route(ATLAS_MINI)  # a mistaken "model gone", or a shutdown since undone
    assert (await router.run(MINI, request(size="auto"))).route.provider == "wavespeed"
    assert (await router.run(MINI, request(size="auto"))).route.provider == "wavespeed"
    assert atlas.submit_count == 1  # retired: not asked again
    atlas.gone_routes.clear()

    clock.advance(hours=24)
    served = await router.run(MINI, request(size="auto"))

    assert served.route.provider == "atlascloud" and served.cost_usd == Decimal("0.004")
    assert atlas.submit_count == 2 and wavespeed.submit_count == 2
    assert events[-1] == "♻️ gpt-image-1-mini on atlascloud answered again; that route is back."
    [row] = await storage.settings.route_status_rows()
    assert (row["provider"], row["gone_at"], row["gone_reason"]) == ("atlascloud", None, None)
    clock.advance(minutes=1)
    assert (await router.run(MINI, request(size="auto"))).route.provider == "atlascloud"


async def test_a_due_trial_that_answers_gone_falls_over_to_the_next_route_and_costs_nothing(
    adapters: dict[str, Provider], atlas: FakeAtlas, wavespeed: FakeWaveSpeed, storage: Storage
):
    clock, events = Clock(), Events()
    router = routed(adapters, clock, storage, events)
    atlas.retire_route(ATLAS_MINI)
    await router.run(MINI, request(size="auto"))

    clock.advance(hours=25)
    served = await router.run(MINI, request(size="auto"))

    assert served.route.provider == "wavespeed" and served.refused_by == ("atlascloud",)
    assert served.cost_usd == Decimal("0.02") and served.absorbed_usd == 0  # WaveSpeed's price alone
    assert atlas.submit_count == 2 and not atlas.predictions  # asked, and nothing was created
    assert len(events) == 1  # the retirement was announced once
    [row] = await storage.settings.route_status_rows()
    assert row["gone_at"] == (START + dt.timedelta(hours=25)).isoformat()
    await router.run(MINI, request(size="auto"))
    assert atlas.submit_count == 2  # the next trial is another wait away
