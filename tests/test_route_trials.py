"""A route retired by a "model gone" answer is tried again after GONE_ROUTE_RETRY_HOURS, comes back on
a result, restarts its wait on "model gone" again (any other failure changes nothing), and the operator
can bring it back by hand; other processes learn either from the stored `route_status`, and of
processes that answer one trial at once only the first counts. Every test sets its own clock."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Awaitable
from decimal import Decimal
from pathlib import Path
from typing import TypeVar

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
from bot.routing.breaker import BREAKER_THRESHOLD
from bot.storage import Storage
from cogs.owner import route_line
from tests.catalogs import catalog, model, route
from tests.fakes.atlascloud_server import FakeAtlas, Fault
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.wavespeed_server import FakeWaveSpeed
from tests.live import NoResult, RecordingLive, run_prepared
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
from tests.test_routing import CATALOG, FAST, MINI, edit_job, request, service_for

START = dt.datetime(2026, 11, 15, 9, 30, tzinfo=dt.UTC)
T = TypeVar("T")
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
    assert await lifecycle.answered(m, m.routes[0])  # its stored day is the stamp it read
    assert [row["gone_at"] for row in await storage.settings.route_status_rows()] == [None]


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
        on_trial=lifecycle.trial_due,
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


@pytest.mark.parametrize("fault", [Fault.SERVER_ERROR, Fault.INPUT_NOT_FOUND])
async def test_a_trial_that_fails_without_a_result_stays_due_and_the_next_job_asks_again(
    adapters: dict[str, Provider], atlas: FakeAtlas, storage: Storage, fault: Fault
):
    """Only a result or "model gone" again answers a trial: a 500 (sent on) or a refused input (the
    member's job fails) proves neither, changes nothing, and the next job asks the route again."""
    clock, events = Clock(), Events()
    router, lifecycle = routed(adapters, clock, storage, events)
    atlas.retire_route(ATLAS_MINI)
    await router.run(MINI, request(size="auto"))
    atlas.gone_routes.clear()
    atlas.fail_next(fault)

    clock.advance(hours=24)
    with contextlib.suppress(perr.InvalidInput):
        await router.run(MINI, request(size="auto"))
    await lifecycle.flush()
    on_atlas = next(r for r in MINI.routes if r.provider == "atlascloud")
    assert lifecycle.trial_due(on_atlas) and len(events) == 1  # the retirement only
    [row] = await storage.settings.route_status_rows()
    assert row["gone_at"] == START.isoformat()  # nothing stored either

    clock.advance(minutes=1)
    assert (await router.run(MINI, request(size="auto"))).route.provider == "atlascloud"  # asked again
    await lifecycle.flush()
    assert not lifecycle.facts(on_atlas).gone and events[-1].startswith("♻️")


async def test_a_trials_refused_input_does_not_keep_the_next_jobs_result_from_bringing_it_back(
    adapters: dict[str, Provider], atlas: FakeAtlas, storage: Storage
):
    """Two members' jobs on one due trial: the first one's input refused (400), the second's image made
    and billed. The second result brings the route back; the first failure took nothing from it."""
    clock, events = Clock(), Events()
    router, lifecycle = routed(adapters, clock, storage, events)
    atlas.retire_route(ATLAS_MINI)
    await router.run(MINI, request(size="auto"))
    atlas.gone_routes.clear()
    clock.advance(hours=24)

    atlas.fail_next(Fault.INPUT_NOT_FOUND)
    # Refused untaken on its trial: that job moves on to the next route (see the test below).
    assert (await router.run(MINI, request(size="auto"))).route.provider == "wavespeed"
    assert (await router.run(MINI, request(size="auto"))).route.provider == "atlascloud"
    await lifecycle.flush()
    on_atlas = next(r for r in MINI.routes if r.provider == "atlascloud")
    assert not lifecycle.facts(on_atlas).gone
    assert events[-1] == "♻️ gpt-image-1-mini on atlascloud answered again; that route is back."


async def test_a_failure_on_another_process_does_not_retire_again_a_route_a_result_brought_back(
    adapters: dict[str, Provider], atlas: FakeAtlas, storage: Storage
):
    """The trial is due on every process. Process A's job delivers a result: the route is back. Process
    B, before its next lease round, still sees the trial due; its job there gets a 500. Fleet-wide the
    route that just served a paid result must stay back."""
    clock, events = Clock(), Events()
    b_router, b = routed(adapters, clock, storage, events)
    a = lifecycle_for(clock, storage, events=events, models=CATALOG)
    atlas.retire_route(ATLAS_MINI)
    await b_router.run(MINI, request(size="auto"))
    atlas.gone_routes.clear()
    await a.refresh()
    clock.advance(hours=24)
    on_atlas = next(r for r in MINI.routes if r.provider == "atlascloud")

    assert await a.answered(MINI, on_atlas)  # a paid result on A
    clock.advance(seconds=1)
    atlas.fail_next(Fault.SERVER_ERROR)
    assert (await b_router.run(MINI, request(size="auto"))).route.provider == "wavespeed"  # B's job
    await b.flush()
    await a.refresh()  # A's next lease round
    await b.refresh()
    assert not a.facts(on_atlas).gone and not b.facts(on_atlas).gone


async def test_a_due_trials_provider_that_keeps_failing_is_skipped_by_its_circuit_breaker(
    adapters: dict[str, Provider], atlas: FakeAtlas, wavespeed: FakeWaveSpeed, storage: Storage
):
    """A trial's 5xx changes nothing in the lifecycle: the breaker counts it like any failure, so after
    BREAKER_THRESHOLD in a row the provider is skipped and members' jobs are not sent there each time."""
    clock, events = Clock(), Events()
    router, lifecycle = routed(adapters, clock, storage, events)
    atlas.retire_route(ATLAS_MINI)
    await router.run(MINI, request(size="auto"))
    atlas.gone_routes.clear()
    clock.advance(hours=24)

    for _ in range(BREAKER_THRESHOLD):
        atlas.fail_next(Fault.SERVER_ERROR)
        assert (await router.run(MINI, request(size="auto"))).route.provider == "wavespeed"
    asked = atlas.submit_count
    assert router.breaker.state("atlascloud") == "open"
    assert (await router.run(MINI, request(size="auto"))).route.provider == "wavespeed"
    assert atlas.submit_count == asked  # skipped: not asked again during the cool-down
    on_atlas = next(r for r in MINI.routes if r.provider == "atlascloud")
    assert lifecycle.trial_due(on_atlas)


async def test_a_due_trials_job_followed_after_a_restart_brings_the_route_back(
    adapters: dict[str, Provider], atlas: FakeAtlas, storage: Storage
):
    """A job the trial route took before a restart is followed to its result (`Router.resume`): that
    result brings the route back as `run`'s does."""
    clock, events = Clock(), Events()
    router, lifecycle = routed(adapters, clock, storage, events)
    atlas.retire_route(ATLAS_MINI)
    await router.run(MINI, request(size="auto"))
    atlas.gone_routes.clear()
    clock.advance(hours=24)

    atlas.hold_results()
    taken: list[str] = []

    async def submitted(route: object, job_id: str) -> None:
        taken.append(job_id)

    running = asyncio.create_task(router.run(MINI, request(size="auto"), on_submitted=submitted))
    await until(lambda: taken)
    running.cancel()  # the process stops; the provider keeps the job
    with contextlib.suppress(asyncio.CancelledError):
        await running
    atlas.release_results()

    served = await router.resume(MINI, "atlascloud", taken, request(size="auto"))
    assert served.route.provider == "atlascloud"
    await lifecycle.flush()
    assert not lifecycle.facts(served.route).gone
    assert events[-1] == "♻️ gpt-image-1-mini on atlascloud answered again; that route is back."


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

    async def swap(self, provider: str, model: str, *args: object) -> bool:
        if not self.gate.is_set():
            self.held.set()
            await self.gate.wait()
        return await type(self.store).replace_route_gone(self.store, provider, model, *args)  # type: ignore[attr-defined]


async def stored_while_a_round_reads(slow: SlowPuts, here: ModelLifecycle, change: Awaitable[T]) -> T:
    """`change` run while its write is held on its way to storage, and this process's lease round reads
    the old row meanwhile (`refresh`); what `change` returns, once its write has landed."""
    slow.gate.clear()
    task = asyncio.ensure_future(change)
    await slow.held.wait()
    await here.refresh()
    slow.gate.set()
    return await task


async def test_a_trials_answer_is_not_undone_by_the_round_that_reads_while_it_is_stored(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
):
    clock, events = Clock(), Events()
    here = lifecycle_for(clock, storage, events=events)
    slow = SlowPuts(storage.settings)
    monkeypatch.setattr(storage.settings, "put_route_status", slow.put)
    monkeypatch.setattr(storage.settings, "replace_route_gone", slow.swap)
    m = here.catalog.get("m")
    atlas = m.routes[0]
    await here.retire(m, atlas, GONE)
    clock.advance(hours=24)

    assert await stored_while_a_round_reads(slow, here, here.answered(m, atlas))  # a result on the trial

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

    await stored_while_a_round_reads(slow, here, here.revive("m", "atlascloud", actor_id=OPERATOR))
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

    await stored_while_a_round_reads(slow, here, here.retire(m, atlas, GONE))
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

    monkeypatch.setattr(storage.settings, "replace_route_gone", down)
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


async def test_a_trials_comeback_is_announced_once_by_the_fleet(storage: Storage):
    """Two processes see one trial due (one stored stamp) and each sends a job there before its next
    lease round: both results bring the route back, but only the first write counts and is announced;
    the other reads the stored row back."""
    clock, events = Clock(), Events()
    here = lifecycle_for(clock, storage, events=events)
    there = lifecycle_for(clock, storage, events=events)  # one audit channel
    m = here.catalog.get("m")
    atlas = m.routes[0]
    await here.retire(m, atlas, GONE)
    await there.refresh()
    clock.advance(hours=24)
    assert here.trial_due(atlas) and there.trial_due(atlas)

    assert await here.answered(m, atlas)
    assert not await there.answered(m, atlas)  # its own job's result, before its lease round
    assert [e for e in events if e.startswith("♻️")] == [
        "♻️ m on atlascloud answered again; that route is back."
    ]
    assert not there.facts(atlas).gone and there.route_live(m, atlas)


async def test_a_trials_gone_again_on_another_process_does_not_undo_a_result(storage: Storage):
    """Process A's job brings the route back; B's job on the same trial (before B's lease round) hears
    "model gone": B's restamp is conditional on the stamp it read, so A's comeback stands, and B holds it."""
    clock, events = Clock(), Events()
    a = lifecycle_for(clock, storage, events=events)
    b = lifecycle_for(clock, storage, events=events)
    m = a.catalog.get("m")
    atlas = m.routes[0]
    await a.retire(m, atlas, GONE)
    await b.refresh()
    clock.advance(hours=24)

    assert await a.answered(m, atlas)
    assert not await b.retire(m, atlas, GONE)
    assert not b.facts(atlas).gone
    await a.refresh()
    assert not a.facts(atlas).gone and len(events) == 2  # retired, back: nothing more


async def test_a_models_death_is_announced_though_its_own_lease_round_reads_the_stamp_back(
    storage: Storage,
):
    """A real clock has microseconds; the stored stamp has seconds. Memory holds the stored form, so
    this process's own lease round does not take its own write for another process's news."""
    clock, events = Clock(dt.datetime(2026, 11, 15, 9, 30, 0, 123456, tzinfo=dt.UTC)), Events()
    here = lifecycle_for(clock, storage, events=events)
    await here.load()
    await here.tick()
    solo = here.catalog.get("solo")
    await here.retire(solo, solo.routes[0], GONE)
    clock.advance(seconds=5)
    await here.refresh()  # this process's own next lease round (PostgreSQL fleet)
    clock.advance(hours=15)  # the next UTC day, before the trial is due
    await here.tick()
    assert "🪦 solo is now retired on every configured service." in events


async def test_another_processes_unrelated_news_does_not_swallow_a_models_death(storage: Storage):
    """Only models with a route another process retired count as told elsewhere: one this process
    retired itself, or one whose date passed, is still announced (and its stored defaults moved)."""
    models = catalog(
        model("dated", qualities=["low"], price=0.01, routes=[route("atlascloud", shutdown="2026-11-16")]),
        model("solo", qualities=["low"], price=0.01, routes=[route("atlascloud", model="solo-id")]),
        model(
            "m", qualities=["low"], price=0.01, routes=[route("atlascloud", model="m-id"), route("wavespeed")]
        ),
    )
    clock, events = Clock(dt.datetime(2026, 11, 15, 20, 0, tzinfo=dt.UTC)), Events()
    here = lifecycle_for(clock, storage, events=events, models=models)
    there = lifecycle_for(clock, storage, models=models)
    await here.load()
    await here.tick()
    await storage.settings.update_user_settings(1, {"model": "dated"})
    solo, m = models.get("solo"), models.get("m")
    await here.retire(solo, solo.routes[0], GONE)
    clock.advance(hours=5)  # past midnight: "dated" shut down
    await there.retire(m, m.routes[0], GONE)  # unrelated news from another process
    await here.refresh()  # a lease round before this process's first edit of the day
    await here.tick()
    assert "🪦 solo is now retired on every configured service." in events
    assert "🪦 dated is now retired on every configured service." in events
    assert (await storage.settings.user_settings_row(1))["model"] != "dated"  # type: ignore[index]


async def test_shutdown_waits_for_a_trials_hung_announcement_only_so_long(storage: Storage):
    """The comeback is stored first; an audit post that hangs (Discord rate limit, an outage) is given
    up on at `flush`'s bound: only the post is lost."""
    clock = Clock()
    posting = asyncio.Event()

    async def hung(line: str) -> None:
        posting.set()
        await asyncio.Event().wait()

    here = lifecycle_for(clock, storage)
    m = here.catalog.get("m")
    atlas = m.routes[0]
    await here.retire(m, atlas, GONE)
    clock.advance(hours=24)
    here.on_event = hung
    here.heard(m, atlas)
    await posting.wait()
    try:
        await asyncio.wait_for(here.flush(0.05), timeout=5)
    except TimeoutError:
        pytest.fail("flush still waits on the hung audit post")
    [row] = await storage.settings.route_status_rows()
    assert row["gone_at"] is None


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


WAVESPEED_GONE = perr.ModelGone("404", provider="wavespeed", status=404, code="not_found")


async def test_a_dearer_route_back_on_its_trial_after_the_hold_was_priced_does_not_serve_that_job(
    adapters: dict[str, Provider],
    atlas: FakeAtlas,
    wavespeed: FakeWaveSpeed,
    storage: Storage,
    tmp_path: Path,
):
    """The hold is the worst case over the routes live when the job was priced. WaveSpeed ($0.02), first
    in the server's order, was retired then, so the hold is Atlas's $0.004; its trial comes due before
    the job runs. The job must not go to WaveSpeed: the member pays at most the hold, and the operator
    would absorb the rest, past every budget that was checked against that hold."""
    clock = Clock(dt.datetime(2026, 11, 1, 9, 30, tzinfo=dt.UTC))
    service = service_for(storage, tmp_path, adapters, atlas, wavespeed)
    await service.policy.update_guild(1, 99, {"provider_order": ("wavespeed", "atlascloud")})
    lifecycle = service.lifecycle
    lifecycle.now = clock
    lifecycle.gone_retry_hours = 24
    on_wavespeed = next(r for r in MINI.routes if r.provider == "wavespeed")
    await lifecycle.retire(MINI, on_wavespeed, WAVESPEED_GONE)
    prepared = await service.prepare(edit_job(model="gpt-image-1-mini"))
    assert prepared.reserve == 4  # Atlas's $0.004 at 1000 credits per USD

    clock.advance(hours=24)  # WaveSpeed's trial is due before the job runs
    assert lifecycle.route_live(MINI, on_wavespeed)
    outcome = await run_prepared(service, prepared, RecordingLive())

    assert (outcome.provider, outcome.charged, outcome.absorbed) == ("atlascloud", 4, 0)
    assert wavespeed.submit_count == 0
    assert lifecycle.trial_due(on_wavespeed)  # still due: the next job held for it tries it


async def test_a_held_job_whose_routes_left_are_all_dearer_than_its_hold_fails_untried_and_costs_nothing(
    adapters: dict[str, Provider],
    atlas: FakeAtlas,
    wavespeed: FakeWaveSpeed,
    storage: Storage,
    tmp_path: Path,
):
    """Priced on Atlas alone (WaveSpeed retired), the job runs once Atlas is retired and WaveSpeed's trial
    is due: its one live route is dearer than its hold, so it is refused before any call, released."""
    clock = Clock(dt.datetime(2026, 11, 1, 9, 30, tzinfo=dt.UTC))
    service = service_for(storage, tmp_path, adapters, atlas, wavespeed)
    lifecycle = service.lifecycle
    lifecycle.now = clock
    lifecycle.gone_retry_hours = 24
    on_atlas, on_wavespeed = (
        next(r for r in MINI.routes if r.provider == p) for p in ("atlascloud", "wavespeed")
    )
    await lifecycle.retire(MINI, on_wavespeed, WAVESPEED_GONE)
    prepared = await service.prepare(edit_job(model="gpt-image-1-mini"))
    assert prepared.reserve == 4

    clock.advance(hours=24)
    await lifecycle.retire(MINI, on_atlas, GONE)  # another job's call, meanwhile
    live = RecordingLive()
    with pytest.raises(NoResult) as ended:
        await run_prepared(service, prepared, live)

    assert "costs more than was set aside" in ended.value.text
    assert atlas.submit_count == wavespeed.submit_count == 0
    [row] = await storage.jobs.recent_jobs(1, 2)
    assert row.state == "failed"
    assert [r["kind"] for r in await storage.reports.ledger_rows(row.id)] == ["reserve", "release"]
    account = await storage.ledger.get_account(1, 2)
    assert (account.balance, account.held) == (1000, 0)


async def test_a_due_trials_refused_input_that_took_nothing_moves_the_edit_to_the_next_route(
    adapters: dict[str, Provider], atlas: FakeAtlas, wavespeed: FakeWaveSpeed, storage: Storage
):
    """The answers that retire routes by mistake are input failures worded like "gone" ("input image not
    found"). On its trial such a route answering a plain refused input, which took nothing, failed every
    edit that reached it first (a refused input is the member's, never sent elsewhere, and counts as the
    provider working, so its circuit never opened), though another route sells the model."""
    clock, events = Clock(), Events()
    router, lifecycle = routed(adapters, clock, storage, events)
    atlas.retire_route(ATLAS_MINI)
    await router.run(MINI, request(size="auto"))  # retired; served by wavespeed
    atlas.gone_routes.clear()
    clock.advance(hours=24)
    assert lifecycle.trial_due(next(r for r in MINI.routes if r.provider == "atlascloud"))

    atlas.fail_always(Fault.INPUT_NOT_FOUND)
    for _ in range(3):
        served = await router.run(MINI, request(size="auto"))
        assert served.route.provider == "wavespeed"
        assert served.refused_by == ("atlascloud",)


async def test_diagnose_names_a_dead_models_retired_route_that_is_also_disabled_and_why():
    """A dead model's retired route was left out of /diagnose when it was also disabled at start-up, so
    the operator saw only "retired on every configured service" and not what keeps the route dead."""
    clock = Clock()
    cat = catalog(
        model("m", qualities=["low"], price=0.01, routes=[route("wavespeed")]),
        model("solo", qualities=["low"], price=0.01, routes=[route("atlascloud", model="solo-id")]),
    )
    lifecycle = ModelLifecycle(
        cat,
        {"atlascloud", "wavespeed"},
        clock.day,
        now=clock,
        gone_retry_hours=24,
        disabled={("atlascloud", "solo-id"): "the atlascloud adapter cannot send a mask"},
    )
    solo = cat.get("solo")
    await lifecycle.retire(solo, solo.routes[0], GONE)
    texts = [n.text for n in lifecycle.notices()]
    assert any("solo on atlascloud" in t and "disabled" in t for t in texts), texts
