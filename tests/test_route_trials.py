"""A route retired by a "model gone" answer is tried again after GONE_ROUTE_RETRY_HOURS, comes back on
a result, restarts its wait on "model gone" again (or on another failure), and the operator can bring it
back by hand; other processes learn either from the stored `route_status`. Every test sets its own clock."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from decimal import Decimal

import aiohttp
import pytest

import tests.test_engine as engine_tests
from bot.errors import InvalidOptions
from bot.lifecycle import NO_LIVE_MODEL_PROBLEM, ModelLifecycle
from bot.providers import errors as perr
from bot.providers.atlascloud import AtlasCloudProvider
from bot.providers.base import Provider
from bot.providers.wavespeed import WaveSpeedProvider
from bot.routing import Router
from bot.storage import Storage
from cogs.owner import route_line
from tests.catalogs import catalog, model, route
from tests.fakes.atlascloud_server import FakeAtlas, Fault
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.wavespeed_server import FakeWaveSpeed
from tests.test_engine import (
    ALICE,
    BOB,
    Factory,
    deadline_watch,
    job,
    kinds,
    past_the_deadline,
    submit,
    until,
    wait_state,
)
from tests.test_lifecycle import Events
from tests.test_routing import CATALOG, FAST, MINI, request

START = dt.datetime(2026, 11, 15, 9, 30, tzinfo=dt.UTC)
GONE = perr.ModelGone("404 model not found", provider="atlascloud", status=404, code="not_found")
make = engine_tests.make  # the engine's service on the fake OpenAI and WaveSpeed (a fixture)
OPENAI_GONE = perr.ModelGone("404", provider="openai", status=404, code="model_not_found")
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
    ("error", "after"),
    [
        (None, "back"),  # a result: the only proof the model serves
        # A gateway answering a dead model with a 500, an input refusal worded like "gone", a job
        # taken but never finished: no result, so another cool-off (not announced).
        (perr.InvalidInput("400 image too small", status=400), "waits"),
        (perr.ServerError("500", status=500), "waits"),
        (perr.ProviderTimeout("deadline", accepted=True), "waits"),
        # Said before the model is looked at, or never reached it: the trial is still due.
        (perr.RateLimited("429", status=429), "due"),
        (perr.ServiceUnavailable("401 key", status=401), "due"),  # our account, not the model
        (perr.ModelUnavailable("no access", status=403), "due"),
        (perr.ConnectionFailed("refused", accepted=False), "due"),
    ],
)
async def test_only_a_result_on_a_trial_brings_a_route_back(error: perr.ProviderError | None, after: str):
    clock, events = Clock(), Events()
    lifecycle = lifecycle_for(clock, events=events)
    m = lifecycle.catalog.get("m")
    atlas = m.routes[0]
    await lifecycle.retire(m, atlas, GONE)
    clock.advance(hours=24)
    assert await lifecycle.answered(m, atlas, error) is (after == "back")
    assert lifecycle.facts(atlas).gone is (after != "back")
    assert lifecycle.trial_due(atlas) is (after == "due")
    if after == "waits":
        assert lifecycle.trial_at(atlas) == clock.now + dt.timedelta(hours=24)
        assert lifecycle.facts(atlas).gone_reason == "ModelGone status=404 code=not_found"
    assert len(events) == 1 + (after == "back")  # the retirement, and a route back


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


def routed(
    adapters: dict[str, Provider], clock: Clock, storage: Storage, events: Events
) -> tuple[Router, ModelLifecycle]:
    lifecycle = ModelLifecycle(
        CATALOG,
        set(adapters),
        clock.day,
        now=clock,
        gone_retry_hours=24,
        store=storage.settings,
        on_event=events,
    )
    router = Router(
        adapters,
        order=("atlascloud", "wavespeed"),
        live=lifecycle.route_live,
        on_gone=lifecycle.retire,
        on_answer=lifecycle.heard,
    )
    return router, lifecycle


ATLAS_MINI = next(r.model for r in MINI.routes if r.provider == "atlascloud")


async def test_a_due_trial_that_succeeds_brings_the_route_back(
    adapters: dict[str, Provider], atlas: FakeAtlas, wavespeed: FakeWaveSpeed, storage: Storage
):
    clock, events = Clock(), Events()
    router, lifecycle = routed(adapters, clock, storage, events)
    atlas.retire_route(ATLAS_MINI)  # a mistaken "model gone", or a shutdown since undone
    assert (await router.run(MINI, request(size="auto"))).route.provider == "wavespeed"
    assert (await router.run(MINI, request(size="auto"))).route.provider == "wavespeed"
    assert atlas.submit_count == 1  # retired: not asked again
    atlas.gone_routes.clear()

    clock.advance(hours=24)
    served = await router.run(MINI, request(size="auto"))

    assert served.route.provider == "atlascloud" and served.cost_usd == Decimal("0.004")
    assert atlas.submit_count == 2 and wavespeed.submit_count == 2
    await lifecycle.flush()  # stored and announced off the job's path
    assert events[-1] == "♻️ gpt-image-1-mini on atlascloud answered again; that route is back."
    [row] = await storage.settings.route_status_rows()
    assert (row["provider"], row["gone_at"], row["gone_reason"]) == ("atlascloud", None, None)
    clock.advance(minutes=1)
    assert (await router.run(MINI, request(size="auto"))).route.provider == "atlascloud"


async def test_a_due_trial_that_answers_gone_falls_over_to_the_next_route_and_costs_nothing(
    adapters: dict[str, Provider], atlas: FakeAtlas, wavespeed: FakeWaveSpeed, storage: Storage
):
    clock, events = Clock(), Events()
    router, _ = routed(adapters, clock, storage, events)
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


async def test_a_trial_that_fails_without_a_result_waits_again_and_the_job_is_not_sent_there_next(
    adapters: dict[str, Provider], atlas: FakeAtlas, wavespeed: FakeWaveSpeed, storage: Storage
):
    """A service answering a dead model with a plain 500 on its trial: no result, so the route waits
    another cool-off (silently) instead of coming back and failing the next member's jobs the same way."""
    clock, events = Clock(), Events()
    router, lifecycle = routed(adapters, clock, storage, events)
    atlas.retire_route(ATLAS_MINI)
    await router.run(MINI, request(size="auto"))
    atlas.gone_routes.clear()
    atlas.fail_next(Fault.SERVER_ERROR)

    clock.advance(hours=24)
    served = await router.run(MINI, request(size="auto"))  # Atlas's 500 took nothing: sent on
    assert served.route.provider == "wavespeed" and served.refused_by == ("atlascloud",)
    await lifecycle.flush()

    on_atlas = next(r for r in MINI.routes if r.provider == "atlascloud")
    assert lifecycle.facts(on_atlas).gone and not lifecycle.route_live(MINI, on_atlas)
    assert lifecycle.trial_at(on_atlas) == clock.now + dt.timedelta(hours=24)
    assert len(events) == 1  # the retirement only
    assert (await router.run(MINI, request(size="auto"))).route.provider == "wavespeed"
    assert atlas.submit_count == 2  # not asked again before its next trial


# ------------------------------------------------------------------- stored facts and the fleet


class SlowPuts:
    """The store's writes held until released (a busy pool, a slow commit)."""

    def __init__(self, store: object) -> None:
        self.store, self.held, self.gate = store, asyncio.Event(), asyncio.Event()
        self.gate.set()

    async def put(self, provider: str, model: str, fields: dict[str, object]) -> None:
        if not self.gate.is_set():
            self.held.set()
            await self.gate.wait()
        await type(self.store).put_route_status(self.store, provider, model, fields)  # type: ignore[attr-defined]


async def test_a_trials_answer_is_not_undone_by_the_round_that_reads_while_it_is_stored(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
):
    clock, events = Clock(), Events()
    here = lifecycle_for(clock, storage, events=events)
    slow = SlowPuts(storage.settings)
    monkeypatch.setattr(storage.settings, "put_route_status", slow.put)
    m = here.catalog.get("m")
    atlas = m.routes[0]
    await here.retire(m, atlas, GONE)
    clock.advance(hours=24)

    slow.gate.clear()
    answer = asyncio.create_task(here.answered(m, atlas))  # a served job's result on the trial
    await slow.held.wait()  # its write is on its way
    await here.refresh()  # this process's lease round reads the old row meanwhile
    slow.gate.set()
    assert await answer

    assert not here.facts(atlas).gone
    await here.answered(m, atlas)  # the next job on it
    assert [e for e in events if e.startswith("♻️")] == [
        "♻️ m on atlascloud answered again; that route is back."
    ]
    await here.refresh()  # once the write has landed, the round reads it as this process has it
    assert not here.facts(atlas).gone


async def test_a_revive_is_not_undone_by_the_round_that_reads_while_it_is_stored(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
):
    clock = Clock()
    here = lifecycle_for(clock, storage, hours=0)
    slow = SlowPuts(storage.settings)
    monkeypatch.setattr(storage.settings, "put_route_status", slow.put)
    m = here.catalog.get("m")
    atlas = m.routes[0]
    await here.retire(m, atlas, GONE)

    slow.gate.clear()
    revive = asyncio.create_task(here.revive("m", "atlascloud", actor_id=OPERATOR))
    await slow.held.wait()
    await here.refresh()
    slow.gate.set()
    await revive
    assert here.route_live(m, atlas)


async def test_a_fresh_retirement_is_not_undone_by_the_round_so_it_is_announced_once(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
):
    clock, events = Clock(), Events()
    here = lifecycle_for(clock, storage, events=events)
    slow = SlowPuts(storage.settings)
    monkeypatch.setattr(storage.settings, "put_route_status", slow.put)
    m = here.catalog.get("m")
    atlas = m.routes[0]

    slow.gate.clear()
    retire = asyncio.create_task(here.retire(m, atlas, GONE))
    await slow.held.wait()
    await here.refresh()
    slow.gate.set()
    await retire
    assert not here.route_live(m, atlas)
    await here.retire(m, atlas, GONE)  # a concurrent job's same answer
    assert [e for e in events if e.startswith("🪦")] == [
        '🪦 m on atlascloud answered "model gone"; that route is retired.'
    ]


async def test_a_trials_answer_whose_write_fails_leaves_the_route_retired_here(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
):
    clock, events = Clock(), Events()
    here = lifecycle_for(clock, storage, events=events)
    m = here.catalog.get("m")
    atlas = m.routes[0]
    await here.retire(m, atlas, GONE)
    clock.advance(hours=24)

    async def down(*a: object, **k: object) -> None:
        raise ConnectionError("database gone")

    monkeypatch.setattr(storage.settings, "put_route_status", down)
    assert not await here.answered(m, atlas)  # never raises on the served job's path
    monkeypatch.undo()
    assert here.facts(atlas).gone and here.trial_due(atlas)  # as storage still has it
    stored = lifecycle_for(clock, storage)
    await stored.load()
    assert here.facts(atlas) == stored.facts(atlas)

    assert await here.answered(m, atlas)  # the next result stores it, and it is announced
    assert events[-1] == "♻️ m on atlascloud answered again; that route is back."


async def test_a_model_retired_on_one_process_is_announced_dead_once_by_the_fleet(storage: Storage):
    clock, events = Clock(), Events()
    here = lifecycle_for(clock, storage, events=events)
    there = lifecycle_for(clock, storage, events=events)  # both post to the one audit channel
    await here.load()
    await there.load()
    await here.tick()
    await there.tick()
    solo = here.catalog.get("solo")
    await here.retire(solo, solo.routes[0], GONE)
    await there.refresh()  # its next lease round
    clock.advance(hours=15)  # the next UTC day, before the trial is due
    await here.tick()
    await there.tick()
    assert [e for e in events if "retired on every configured service" in e] == [
        "🪦 solo is now retired on every configured service."
    ]


# ------------------------------------------------------------- what the operator is told


def dated_and_other():
    return catalog(
        model("dated", qualities=["low"], price=0.01, routes=[route("atlascloud", shutdown="2026-11-20")]),
        model("other", qualities=["low"], price=0.01, routes=[route("wavespeed", model="other-id")]),
    )


async def test_a_retired_route_past_its_date_is_not_shown_on_trial_nor_revived():
    clock = Clock()
    models = dated_and_other()
    lifecycle = lifecycle_for(clock, models=models)
    dated = models.get("dated")
    await lifecycle.retire(dated, dated.routes[0], GONE)
    clock.advance(days=10)  # past its trial, and past its date: never asked again
    assert not lifecycle.route_live(dated, dated.routes[0])

    [state] = [s for s in lifecycle.route_states() if s.model == "dated"]
    assert not state.trial_due and state.trial_at is None
    assert route_line(state).startswith("❌") and "not tried again" in route_line(state)
    assert not any("being tried again" in w or "revive" in w for w in lifecycle.warnings())
    assert any("dated on atlascloud" in w and "shut down on 2026-11-20" in w for w in lifecycle.warnings())
    with pytest.raises(InvalidOptions) as refused:
        await lifecycle.revive("dated", "atlascloud", actor_id=OPERATOR)
    assert refused.value.code == "route_dead_otherwise" and "shut down" in str(refused.value)
    assert lifecycle.facts(dated.routes[0]).gone


async def test_a_retired_route_missing_from_the_model_list_is_not_shown_on_trial():
    clock = Clock()
    lifecycle = lifecycle_for(clock)
    solo = lifecycle.catalog.get("solo")
    r = solo.routes[0]
    await lifecycle.retire(solo, r, GONE)
    await lifecycle._learn(r, listed=False)
    clock.advance(hours=25)
    assert not lifecycle.route_live(solo, r)
    [state] = [s for s in lifecycle.route_states() if s.model == "solo"]
    assert "on trial" not in route_line(state) and "missing from atlascloud's model list" in route_line(state)
    assert not any("being tried again" in w for w in lifecycle.warnings())


# ------------------------------------------------------------------------------- the engine


async def test_a_trial_that_answers_delivers_its_paid_image_though_the_audit_channel_is_slow(
    make: Factory, openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
):
    """The route's comeback is stored and announced off the job's path: a slow audit channel (or
    database) past the job's deadline must not end the job as a timeout with the paid image lost."""
    service, recorder = await make()
    asked = deadline_watch(monkeypatch, service, "openai")  # job deadline 3 s
    lifecycle = service.lifecycle
    now = [dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)]
    lifecycle.now = lambda: now[0]
    lifecycle.gone_retry_hours = 24
    preferred = lifecycle.catalog.get("gpt-image-1.5")
    await lifecycle.retire(preferred, preferred.routes[0], OPENAI_GONE)
    now[0] += dt.timedelta(hours=25)
    assert lifecycle.trial_due(preferred.routes[0])

    posting, go_on = asyncio.Event(), asyncio.Event()

    async def slow_audit(line: str) -> None:  # the audit channel rate limited, or Discord slow
        posting.set()
        await go_on.wait()

    lifecycle.on_event = slow_audit
    job_id = await submit(service)
    await until(posting.is_set)  # OpenAI answered (billed): the route is back, its post on its way
    await past_the_deadline(asked)
    await wait_state(service, job_id, "delivered")
    assert len(recorder.delivered) == 1 and openai.post_count == 1
    go_on.set()
    await lifecycle.flush()
    assert not lifecycle.facts(preferred.routes[0]).gone


async def test_a_default_job_priced_during_a_trial_moves_on_when_the_trial_answers_gone(
    make: Factory, openai: FakeOpenAI, wavespeed: FakeWaveSpeed
):
    """Priced while the preferred model's retired route was due (the default then is that model), a
    job that did not pick it runs after another job's trial answered "model gone" again: it moves to
    the next live model within its hold, as one whose model dies mid-run does."""
    service, recorder = await make()
    lifecycle = service.lifecycle
    now = [dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)]
    lifecycle.now = lambda: now[0]
    lifecycle.gone_retry_hours = 24
    preferred = lifecycle.catalog.get("gpt-image-1.5")
    openai.retire("gpt-image-1.5")
    await lifecycle.retire(preferred, preferred.routes[0], OPENAI_GONE)
    now[0] += dt.timedelta(hours=25)  # the trial is due: the default is the preferred model again
    first = await service.prepare(job(ALICE, model=None))
    second = await service.prepare(job(BOB, model=None))
    assert first.model.id == second.model.id == "gpt-image-1.5"

    a = (await service.submit(first)).job_id
    await wait_state(service, a, "delivered")  # its trial: "model gone" again, moved mid-run
    assert not lifecycle.usable(preferred)
    b = (await service.submit(second)).job_id
    await wait_state(service, b, "delivered")
    row = await service.storage.jobs.get_job(b)
    assert row is not None and row.model != "gpt-image-1.5"
    assert len(recorder.delivered) == 2


async def test_a_picked_model_that_died_while_queued_is_released_as_retired(
    make: Factory, openai: FakeOpenAI
):
    service, _ = await make()
    lifecycle = service.lifecycle
    now = [dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)]
    lifecycle.now = lambda: now[0]
    lifecycle.gone_retry_hours = 24
    preferred = lifecycle.catalog.get("gpt-image-1.5")
    await lifecycle.retire(preferred, preferred.routes[0], OPENAI_GONE)
    now[0] += dt.timedelta(hours=25)
    picked = await service.prepare(job(ALICE, model="gpt-image-1.5"))
    await lifecycle.retire(preferred, preferred.routes[0], OPENAI_GONE)  # another job's trial, meanwhile

    job_id = (await service.submit(picked)).job_id
    await wait_state(service, job_id, "failed")
    assert openai.post_count == 0 and await kinds(service, job_id) == ["reserve", "release"]
