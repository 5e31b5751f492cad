"""The job engine below Discord: real SQLite, real adapters, fake OpenAI and WaveSpeed over sockets.

Queue limits, cancel and the watchdog, delivery fall-backs, and recovery from every state a stopped
process can leave a job in (the SIGKILL tests in test_restart.py do the same with the real process).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import io
import json
import os
import sqlite3
import threading
import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

from bot import messages
from bot.concurrency import FeedbackThrottle
from bot.config import MAX_DAYS, MAX_HOURS, MAX_SECONDS
from bot.errors import InsufficientCredits, InvalidOptions, ShuttingDown
from bot.jobs import core as core_module
from bot.jobs import engine as engine_module
from bot.jobs import running as running_module
from bot.jobs.core import IntakeTurns
from bot.jobs.files import JobFiles
from bot.jobs.model import (
    CancelAnswer,
    Delivered,
    DeliveryFailed,
    EditOutcome,
    JobInfo,
    JobSpec,
    JobStatus,
    NotAllowed,
    result_filename,
)
from bot.jobs.recovery import ORPHAN_GRACE_SECONDS
from bot.messages import CANCELLED_AT_PROVIDER, DELIVERY_DELAYED, SUSPENDED_AT_PROVIDER
from bot.observability.metrics import Metrics
from bot.providers import openai as openai_module
from bot.providers.base import DOWNLOAD_GRACE_SECONDS, EditRequest
from bot.providers.http import RetryPolicy
from bot.providers.openai import OpenAIProvider
from bot.providers.wavespeed import WaveSpeedProvider
from bot.services.edits import EditJob, EditOptions, EditService, Upload
from bot.storage import Storage
from bot.storage.jobs import Jobs
from tests.durable import CATALOG, PHOTO, assert_books_balance
from tests.fakes.openai_server import FakeOpenAI, Fault
from tests.fakes.wavespeed_server import FakeWaveSpeed
from tests.fakes.wavespeed_server import Fault as WaveSpeedFault
from tests.fixtures import edit_service, provider_env, settings_for
from tests.live import NoResult, RecordingLive, SlowPost, run_to_end
from tests.test_ops import samples, value

GUILD, ALICE, BOB = 1, 2, 3
FAST = RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.02, max_retry_after=1.0)


class Clock:
    """The storage clock: deadlines and retention are read from it, so tests can jump ahead."""

    def __init__(self) -> None:
        self.now = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


class Recorder:
    """A Delivery and LiveJob factory that records everything and can be told to fail."""

    def __init__(self) -> None:
        self.delivered: list[tuple[str, EditOutcome]] = []
        self.notices: list[tuple[str, str]] = []
        self.charged: dict[str, int] = {}  # what each notice said the job cost
        self.fail = False
        self.found: dict[str, Delivered] = {}

    async def deliver(self, job: JobInfo, outcome: EditOutcome) -> Delivered:
        if self.fail:
            raise DeliveryFailed("channel and DMs are closed")
        self.delivered.append((job.job_id, outcome))
        return Delivered("channel", 10, 20)

    async def notify(self, job: JobInfo, text: str, *, charged: int) -> bool:
        self.notices.append((job.job_id, text))
        self.charged[job.job_id] = charged
        return True

    async def find(self, job: JobInfo) -> Delivered | None:
        return self.found.get(job.job_id)


class Live(RecordingLive):
    """A recording live route whose delivery always fails (a spent token, or with `uncertain` a timeout
    after which the message may exist), so results go through the engine's Delivery."""

    def __init__(self, *, uncertain: bool = False) -> None:
        super().__init__(
            refuse=DeliveryFailed("timed out" if uncertain else "token spent", uncertain=uncertain)
        )


def job(user: int = ALICE, model: str = "gpt-image-1.5") -> EditJob:
    async def read() -> bytes:
        return PHOTO

    return EditJob(
        guild_id=GUILD,
        user_id=user,
        channel_id=7,
        uploads=[Upload("image", "photo.png", len(PHOTO), read)],
        options=EditOptions("make it a watercolour", model=model),
        upload_limit=10 * 1024 * 1024,
    )


Factory = Callable[..., Any]


@contextlib.asynccontextmanager
async def engine_processes(
    openai: FakeOpenAI, wavespeed: FakeWaveSpeed, data_dir: Path, clock: Clock, database: str | None = None
) -> AsyncIterator[Factory]:
    """`await build(**env)`: an EditService (one "process") on the shared `database` (default: the SQLite
    file in `data_dir`) and data folder, with a recording Delivery; all drained and closed at the end."""
    opened: list[tuple[Storage, EditService]] = []
    async with aiohttp.ClientSession() as session:

        async def build(**env: str) -> tuple[EditService, Recorder]:
            env = {**provider_env("wavespeed", wavespeed), "STARTING_CREDITS": "1000", **env}
            settings = settings_for(data_dir, openai, **env)
            storage = await Storage.open(database or settings.database_path, clock=clock)
            providers = {
                "openai": OpenAIProvider(
                    session, openai.api_key, openai.base_url, policy=FAST, call_timeout=5
                ),
                "wavespeed": WaveSpeedProvider(
                    session,
                    wavespeed.api_key,
                    wavespeed.base_url,
                    policy=FAST,
                    poll_interval=0.01,
                    max_poll_interval=0.02,
                ),
            }
            service = edit_service(settings, CATALOG, storage, providers, approve=[GUILD])
            recorder = Recorder()
            service.engine.attach_delivery(recorder)
            opened.append((storage, service))
            return service, recorder

        build.clock = clock  # type: ignore[attr-defined]
        try:
            yield build
        finally:
            for storage, service in opened:
                await service.drain(0)
                await storage.close()


@pytest.fixture
async def make(openai: FakeOpenAI, wavespeed: FakeWaveSpeed, tmp_path: Path) -> AsyncIterator[Factory]:
    """Build an EditService (one "process") on the shared database file and data folder."""
    async with engine_processes(openai, wavespeed, tmp_path, Clock()) as build:
        yield build


async def until(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:  # noqa: ASYNC109
    """Poll a condition the engine changes, with a deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (value := predicate()):
        if loop.time() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.01)
    return value


async def state(service: EditService, job_id: str) -> str:
    row = await service.storage.jobs.get_job(job_id)
    assert row is not None
    return row.state


async def wait_state(service: EditService, job_id: str, wanted: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while await state(service, job_id) != wanted:
        assert loop.time() < deadline, f"job {job_id} never reached {wanted}"
        await asyncio.sleep(0.01)


async def kinds(service: EditService, job_id: str) -> list[str]:
    return [r["kind"] for r in await service.storage.reports.ledger_rows(job_id)]


async def submit(service: EditService, live: Live | None = None, **kw: Any) -> str:
    prepared = await service.prepare(job(**kw))
    return (await service.submit(prepared, live=live)).job_id


# -- admission ----------------------------------------------------------------------------------------


async def test_a_model_notice_is_used_up_only_by_an_accepted_job_and_shown_with_its_result(make):
    """A submission refused for credits leaves the one-time notice for the next job; the accepted
    job shows it with its result and takes it, so the job after that does not repeat it."""
    service, recorder = await make(STARTING_CREDITS="1")
    settings = service.storage.settings
    await settings.update_user_settings(ALICE, {"model": "gone"})
    await settings.move_stored_model("gone", None, "Your default moved.")
    with pytest.raises(InsufficientCredits):
        await submit(service)

    await service.storage.ledger.grant(GUILD, ALICE, 1000, actor_id=None, reason="test", starting_credits=1)
    job_id = await submit(service)
    await wait_state(service, job_id, "delivered")
    [(_, outcome)] = recorder.delivered
    assert "Your default moved." in outcome.notices
    later = await service.prepare(job())
    assert "Your default moved." not in later.notices


# -- the queue --------------------------------------------------------------------------------------


async def test_queue_position_and_eta_come_from_recent_run_times(make: Factory, openai: FakeOpenAI):
    service, _ = await make(MAX_CONCURRENT_JOBS="1")
    first = await submit(service)
    await wait_state(service, first, "delivered")
    assert service.engine.eta(1) is not None and service.engine.eta(1) < 60
    openai.fail_always(Fault.HANG)
    running = await submit(service)
    await until(lambda: openai.post_count == 2)
    live = Live()
    prepared = await service.prepare(job(user=BOB))
    ticket = await service.submit(prepared, live=live)
    assert ticket.position == 1 and ticket.eta_seconds is not None
    await until(lambda: live.statuses)
    assert live.statuses[0].text.startswith("Queued — position 1 in line. Your result should be ready in")
    assert live.statuses[0].cancellable
    assert await state(service, ticket.job_id) == "reserved"
    # The running edit's call is out at the provider: its requester's cancel is charged (issue 11).
    said = await service.cancel(running, actor_id=ALICE, can_manage=False)
    assert said.cancelled and said.charged > 0 and not said.pending
    assert said.text.startswith("Cancelled. The image service had already started this edit")
    openai.clear_faults()
    await wait_state(service, ticket.job_id, "delivered")


async def test_a_user_runs_at_most_max_jobs_per_user_while_others_are_not_held_up(
    make: Factory, openai: FakeOpenAI
):
    service, _ = await make(MAX_JOBS_PER_USER="1")
    openai.fail_always(Fault.HANG)
    mine = await submit(service)
    await until(lambda: openai.post_count == 1)
    second = await submit(service)
    bobs = await submit(service, user=BOB)
    await until(lambda: openai.post_count == 2)  # bob's job started beside alice's first
    assert await state(service, second) == "reserved"
    assert service.engine.queued == 1 and service.engine.in_flight == 2
    for job_id in (mine, bobs, second):
        await service.cancel(job_id, actor_id=0, can_manage=True)
    assert_books_balance(service.settings.data_dir)


async def test_a_members_burst_does_not_hold_up_another_members_single_job(make: Factory, openai: FakeOpenAI):
    service, _ = await make(MAX_CONCURRENT_JOBS="1", MAX_JOBS_PER_USER="10")
    openai.fail_always(Fault.HANG)
    burst = [await submit(service) for _ in range(5)]  # one runs, four wait
    await until(lambda: openai.post_count == 1)
    ticket = await service.submit(await service.prepare(job(user=BOB)))
    assert ticket.position == 1  # ahead of the four Alice queued before it

    openai.clear_faults()
    await service.cancel(burst[0], actor_id=ALICE, can_manage=False)
    for job_id in (ticket.job_id, *burst[1:]):
        await wait_state(service, job_id, "delivered")
    users = [r.fields["user"] for r in openai.requests if r.method == "POST"]
    alice = users[0]
    assert users[1] != alice  # Bob's job was the next to reach the provider
    assert users[2:] == [alice] * 4


async def test_queue_moves_do_not_re_edit_every_waiting_jobs_message_each_time(
    make: Factory, openai: FakeOpenAI
):
    service, _ = await make(MAX_CONCURRENT_JOBS="1", MAX_JOBS_PER_USER="20")
    openai.fail_always(Fault.HANG)
    running = await submit(service)
    await until(lambda: openai.post_count == 1)
    lives = [Live() for _ in range(8)]
    waiting = [await submit(service, live=live) for live in lives]
    await until(lambda: all(live.statuses for live in lives))

    for job_id in waiting[:4]:  # each cancel moves every job behind it up one place
        await service.cancel(job_id, actor_id=ALICE, can_manage=False)
    for _ in range(50):  # let any update the moves started reach the progress messages
        await asyncio.sleep(0)

    assert [len(live.statuses) for live in lives[4:]] == [1, 1, 1, 1]  # only the first line, within 5 s
    assert [service.engine._position(j) for j in waiting[4:]] == [1, 2, 3, 4]
    # A job queued now still sees its place at once (the others' moves wait their turn).
    late = Live()
    await submit(service, live=late)
    await until(lambda: late.statuses, timeout=2)
    assert late.statuses[0].text.startswith("Queued — position 5 in line.")
    await service.cancel(running, actor_id=ALICE, can_manage=False)


async def test_a_waiting_jobs_estimate_follows_the_run_times_though_its_place_stays(
    make: Factory, openai: FakeOpenAI
):
    """Alice's second edit waits at place 1 (one edit at a time each) while Bob's quick edits finish:
    its line's estimate drops with the median run time, though its place never moved."""
    service, _ = await make(MAX_CONCURRENT_JOBS="2", MAX_JOBS_PER_USER="1")
    engine = service.engine
    engine.queue_feedback = FeedbackThrottle(min_interval=0.0)  # each change is shown at once
    engine._durations.clear()
    engine._durations.append(600.0)  # ten minutes a run so far
    openai.fail_always(Fault.HANG)
    running = await submit(service)
    await until(lambda: openai.post_count == 1)
    live = Live()
    waiting = await submit(service, live=live)
    first = await until(lambda: live.statuses and live.statuses[0])
    assert first.text == "Queued — position 1 in line. Your result should be ready in about 20 min."
    openai.clear_faults()
    for _ in range(2):  # the median is now one of Bob's runs
        await wait_state(service, await submit(service, user=BOB), "delivered")
    now = "Queued — position 1 in line. Your result should be ready in less than a minute."
    await until(lambda: live.statuses[-1].text == now)
    assert {status.position for status in live.statuses} == {1}
    for job_id in (waiting, running):
        await service.cancel(job_id, actor_id=ALICE, can_manage=False)


async def test_a_provider_concurrency_limit_holds_calls_back_until_a_slot_frees(
    make: Factory, wavespeed: FakeWaveSpeed
):
    service, recorder = await make(WAVESPEED_MAX_CONCURRENT="1")
    wavespeed.hold_results()
    first = await submit(service, model="ws-mini")
    await wait_state(service, first, "submitted")
    second = await submit(service, model="ws-mini", user=BOB)
    await wait_state(service, second, "submitting")  # it left the queue but waits for the provider
    assert wavespeed.submit_count == 1
    wavespeed.release_results()
    await wait_state(service, second, "delivered")
    assert wavespeed.submit_count == 2 and len(recorder.delivered) == 2


async def test_only_the_requester_or_a_moderator_may_cancel(make: Factory, openai: FakeOpenAI):
    service, _ = await make()
    openai.fail_always(Fault.HANG)
    job_id = await submit(service)
    with pytest.raises(NotAllowed):
        await service.cancel(job_id, actor_id=BOB, can_manage=False)
    assert await service.cancel(job_id, actor_id=BOB, can_manage=True) == CancelAnswer(
        "Cancelled — you were not charged.", cancelled=True
    )
    assert await kinds(service, job_id) == ["reserve", "release"]
    assert await service.cancel(job_id, actor_id=ALICE, can_manage=False) == CancelAnswer(
        "This edit has already ended."
    )


async def test_a_cancel_that_comes_as_the_job_fails_on_its_own_answers_with_the_failure(
    make: Factory, monkeypatch: pytest.MonkeyPatch
):
    """A cancel silences the job's own ending (the cancel's answer speaks instead). A job that failed
    on its own meanwhile used to end in silence, its member told only that it "has already ended"."""
    service, _ = await make()
    write = service.engine.files.write
    storing, go_on = threading.Event(), threading.Event()

    def slow_full_disk(job_id: str, files: dict[str, bytes]) -> None:
        if not any(name.startswith("result-") for name in files):
            return write(job_id, files)
        storing.set()
        go_on.wait(10)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(service.engine.files, "write", slow_full_disk)
    live = Live()
    job_id = await submit(service, live)
    await asyncio.to_thread(storing.wait, 10)
    cancelling = asyncio.create_task(service.cancel(job_id, actor_id=ALICE, can_manage=False))
    await until(lambda: service.engine._jobs[job_id].quiet)
    go_on.set()
    answer = await cancelling

    assert answer.text.startswith("Something went wrong") and "not charged" in answer.text
    assert not answer.cancelled and await state(service, job_id) == "failed"
    assert live.final == [None]  # its buttons go; the answer is what tells the member
    assert await kinds(service, job_id) == ["reserve", "release"]


async def test_a_job_whose_inherited_model_left_the_catalog_runs_on_the_default(make: Factory):
    """What Edit again and Retry build for a job whose model the member did not pick, once the
    operator's catalog dropped it: the default model, with a note, not an unknown-model refusal."""
    service, _ = await make()
    options = EditOptions("again", model="gpt-image-9-removed", model_is_default=True)
    prepared = await service.prepare(replace(job(), options=options))
    assert prepared.model.id == service.lifecycle.default_model().id
    assert any(
        "gpt-image-9-removed" in note for note in (*prepared.notices, prepared.resolution.notice or "")
    )
    with pytest.raises(InvalidOptions, match="gpt-image-9-removed"):  # typed, it is still unknown
        await service.prepare(replace(job(), options=EditOptions("p", model="gpt-image-9-removed")))

    # As for a new edit, the member's defaults then meet the server's rules: its models, and a default
    # quality the model lacks fitted to one it offers (not refused).
    await service.storage.settings.update_user_settings(ALICE, {"quality": "xhigh"})
    fitted = await service.prepare(replace(job(), options=options))
    assert (fitted.model.id, fitted.chosen.quality) == ("gpt-image-1.5", "high")
    await service.storage.settings.update_guild_policy(GUILD, {"models": "ws-mini"}, actor_id=BOB)
    allowed = await service.prepare(replace(job(), options=options))
    assert allowed.model.id == "ws-mini"

    # A Retry carries the earlier job's quality too: fitted to the model it now runs on, like a
    # default, not refused as if the member had typed it for that model.
    await service.storage.settings.update_guild_policy(GUILD, {"models": None}, actor_id=BOB)
    retried = replace(options, quality="xhigh")
    fitted = await service.prepare(replace(job(), options=retried))
    assert (fitted.model.id, fitted.chosen.quality) == ("gpt-image-1.5", "high")
    with pytest.raises(InvalidOptions, match="xhigh"):  # typed for a model named, it is refused
        await service.prepare(
            replace(job(), options=EditOptions("p", model="gpt-image-1.5", quality="xhigh"))
        )


# -- the watchdog -----------------------------------------------------------------------------------


async def test_watchdog_cancels_a_job_past_its_deadline_releases_it_and_tells_the_user(
    make: Factory, openai: FakeOpenAI
):
    service, recorder = await make()
    openai.fail_always(Fault.HANG)
    job_id = await submit(service)
    await wait_state(service, job_id, "submitting")
    assert await service.engine.watchdog_tick() == 0  # not overdue yet
    make.clock.advance(service.settings.job_timeout_seconds + 31)
    assert await service.engine.watchdog_tick() == 1
    await wait_state(service, job_id, "cancelled")
    row = await service.storage.jobs.get_job(job_id)
    assert row is not None and row.error_code == "timeout"
    assert await kinds(service, job_id) == ["reserve", "release"]
    # The member is told after the release commits (a busy machine may take a moment).
    [(told, text)] = await until(lambda: recorder.notices)
    assert told == job_id and "took too long" in text and "not charged" in text


async def test_a_job_whose_result_is_downloading_at_its_deadline_is_delivered_not_timed_out(
    make: Factory, wavespeed: FakeWaveSpeed, monkeypatch: pytest.MonkeyPatch
):
    """The task completed just before the deadline, and its result was still downloading when the
    job's check came round: the job ended as a timeout (the member refunded, the image made and paid
    for, thrown away). A finished job's download gets `DOWNLOAD_GRACE_SECONDS` past the deadline."""
    monkeypatch.setattr(running_module, "PROGRESS_TICK_SECONDS", 0.05)
    service, recorder = await make()
    engine = service.engine
    monkeypatch.setattr(engine, "settings", replace(engine.settings, job_timeout_seconds=3.0))
    adapter = engine.router.providers["wavespeed"]
    asked: list[EditRequest] = []
    edit = adapter.edit

    async def recording(request: EditRequest, **kw: Any) -> Any:
        asked.append(request)
        return await edit(request, **kw)

    monkeypatch.setattr(adapter, "edit", recording)
    wavespeed.url_outputs = True
    wavespeed.hold_outputs()
    job_id = await submit(service, model="ws-mini")

    await until(lambda: wavespeed.count("file") == 1)  # the task completed: its result is being fetched
    await until(lambda: time.monotonic() > asked[0].deadline + 4 * running_module.PROGRESS_TICK_SECONDS)
    assert await state(service, job_id) == "submitted"  # checked past its deadline, still running
    wavespeed.release_outputs()

    await wait_state(service, job_id, "delivered")
    assert len(recorder.delivered) == 1 and await kinds(service, job_id) == ["reserve", "capture"]


def deadline_watch(monkeypatch: pytest.MonkeyPatch, service: EditService, provider: str) -> list[EditRequest]:
    """A job deadline of 3 s checked every 0.05 s, and the requests `provider`'s adapter is given."""
    monkeypatch.setattr(running_module, "PROGRESS_TICK_SECONDS", 0.05)
    engine = service.engine
    monkeypatch.setattr(engine, "settings", replace(engine.settings, job_timeout_seconds=3.0))
    adapter = engine.router.providers[provider]
    asked: list[EditRequest] = []
    edit = adapter.edit

    async def recording(request: EditRequest, **kw: Any) -> Any:
        asked.append(request)
        return await edit(request, **kw)

    monkeypatch.setattr(adapter, "edit", recording)
    return asked


async def past_the_deadline(asked: list[EditRequest]) -> None:
    """Until the job's own check has come round several times past its deadline."""
    await until(lambda: asked)
    await until(lambda: time.monotonic() > asked[0].deadline + 4 * running_module.PROGRESS_TICK_SECONDS)


class HeldSlots:
    """A ceiling's fleet-wide slots (on PostgreSQL, advisory locks: tests/test_fleet_slots.py) whose give,
    a database round trip, lasts until `go_on` is set."""

    def __init__(self) -> None:
        self.held: set[int] = set()
        self.giving, self.go_on = asyncio.Event(), asyncio.Event()

    async def take(
        self, provider: str, ceiling: int, first: int | None = None, *, within: float | None = None
    ) -> int:
        slot = min(set(range(ceiling)) - self.held)
        self.held.add(slot)
        return slot

    async def give(self, provider: str, slot: int) -> None:
        self.giving.set()
        await self.go_on.wait()
        self.held.discard(slot)


async def test_a_result_in_hand_past_the_deadline_is_delivered_while_its_fleet_slot_goes_back(
    make: Factory, openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
):
    """OpenAI's answer came in within its grace past the deadline; the call then handed its fleet-wide
    slot back (a database round trip on PostgreSQL) inside the job's deadline-checked call, and the
    job's check landing then ended it as a timeout, the paid image thrown away. The slot goes back
    without holding the result up; it stays taken until it is back, so the ceiling holds."""
    service, recorder = await make()
    asked = deadline_watch(monkeypatch, service, "openai")
    limiter = service.engine.router.limiter
    slots = HeldSlots()
    limiter.fleet_slots = slots
    openai.hold_answers()
    job_id = await submit(service)

    await until(lambda: openai.answers_held == 1)  # the 200 is in, its body still arriving
    await past_the_deadline(asked)
    openai.release_answers()
    await until(slots.giving.is_set)  # the result is in hand, past the deadline; its slot is going back

    await wait_state(service, job_id, "delivered")
    assert len(recorder.delivered) == 1 and await kinds(service, job_id) == ["reserve", "capture"]
    assert slots.held == {0}  # not back yet: still counted against the ceiling
    slots.go_on.set()
    await limiter.returned()
    assert not slots.held


@pytest.mark.parametrize(
    "sibling",
    [WaveSpeedFault.NEVER_FINISHES, WaveSpeedFault.OUTPUT_NSFW],
    ids=["unfinished at the deadline", "refused"],
)
async def test_a_finished_image_downloading_while_its_sibling_call_ends_is_delivered_and_charged_alone(
    make: Factory, wavespeed: FakeWaveSpeed, monkeypatch: pytest.MonkeyPatch, sibling: WaveSpeedFault
):
    """A two-image job on a route without `n` is two calls. One's task never finished by the deadline
    (or was refused: its output flagged) while the other's finished image was still downloading,
    inside its grace past the deadline: the download finishes, the member gets that image and pays
    for it alone, and is told; the failed call the provider took is counted against the budgets."""
    service, recorder = await make()
    asked = deadline_watch(monkeypatch, service, "wavespeed")
    wavespeed.url_outputs = True
    wavespeed.hold_outputs()
    wavespeed.fail_next(sibling)
    job_id = await submit_ws_mini(service, 2)

    await until(lambda: wavespeed.count("file") == 1)  # one task completed: its image is being fetched
    await past_the_deadline(asked)
    assert await state(service, job_id) == "submitted"  # the sibling has ended; this call goes on
    wavespeed.release_outputs()

    await wait_state(service, job_id, "delivered")
    [(_, outcome)] = recorder.delivered
    assert len(outcome.files) == 1
    assert (outcome.charged, outcome.absorbed) == (20, 20)  # ws-mini: $0.02 an image, one a call
    assert outcome.notices == ("Only 1 of the 2 images could be made; you were charged for 1.",)
    rows = await service.storage.reports.ledger_rows(job_id)
    assert [(r["kind"], r["amount"]) for r in rows if r["kind"] != "reserve"] == [("capture", 20)]
    assert_books_balance(service.settings.data_dir)


async def test_an_openai_answer_checked_past_the_deadline_is_delivered_not_timed_out(
    make: Factory, openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
):
    """OpenAI answered (and billed) just before the deadline; its image was still being checked
    (decoded whole, in a worker thread) when the job's check came round past the deadline: the job
    ended as a timeout and the member was refunded for an image made and paid for. Checking an answer
    that arrived is fetching a finished result, with its grace past the deadline."""
    service, recorder = await make()
    asked = deadline_watch(monkeypatch, service, "openai")
    checking, go_on = asyncio.Event(), asyncio.Event()
    check = openai_module.usable_image_format

    async def slow_check(data: bytes) -> str | None:
        checking.set()
        await go_on.wait()  # a large image decoded on a busy machine
        return await check(data)

    monkeypatch.setattr(openai_module, "usable_image_format", slow_check)
    job_id = await submit(service)

    await until(checking.is_set)  # the answer arrived: its image is being checked
    await past_the_deadline(asked)
    assert await state(service, job_id) == "submitting"  # a synchronous call: still at the provider
    go_on.set()

    await wait_state(service, job_id, "delivered")
    assert len(recorder.delivered) == 1 and await kinds(service, job_id) == ["reserve", "capture"]
    assert openai.post_count == 1


@pytest.mark.parametrize("slow", ["write", "read"])
async def test_a_jobs_provider_deadline_counts_from_its_start_though_the_start_was_slow(
    make: Factory, monkeypatch: pytest.MonkeyPatch, slow: str
):
    """The watchdog's deadline is stamped from the job's start; the provider's was counted only once
    the start was written and the files read: a slow write (a busy database) or read (a network volume)
    put it, and a finished result's download grace with it, past the watchdog's, which then ended a
    paid download."""
    service, _ = await make()
    engine = service.engine
    asked: list[tuple[float, EditRequest]] = []
    request_for = engine._request

    async def recording(job_id: str, *args: Any) -> EditRequest:
        started = engine._jobs[job_id].run_start  # monotonic, as the start was stamped
        asked.append((started, await request_for(job_id, *args)))
        return asked[-1][1]

    update_job, read = engine.storage.jobs.update_job, engine.files.read

    async def slow_update(*args: Any, **kw: Any) -> None:
        if "started_at" in kw:
            await asyncio.sleep(1.0)  # the start's write waits on a busy database
        await update_job(*args, **kw)

    def slow_read(*args: Any, **kw: Any) -> bytes:
        time.sleep(1.0)  # the inputs read back from a slow volume
        return read(*args, **kw)

    monkeypatch.setattr(engine, "_request", recording)
    if slow == "write":
        monkeypatch.setattr(engine.storage.jobs, "update_job", slow_update)
    else:
        monkeypatch.setattr(engine.files, "read", slow_read)
    job_id = await submit(service)
    await wait_state(service, job_id, "delivered")

    [(started, request)] = asked
    assert request.deadline <= started + engine.settings.job_timeout_seconds + 0.5


async def test_a_resumed_jobs_provider_deadline_counts_from_the_watchdogs_stamp(
    make: Factory, wavespeed: FakeWaveSpeed, monkeypatch: pytest.MonkeyPatch
):
    """A job resumed after a restart: the watchdog's deadline is stamped as the resume begins, the
    provider's was counted after that write and the files' read, and so ran past it by their time."""
    service, _ = await make(WAVESPEED_MAX_CONCURRENT="1")
    wavespeed.hold_results()
    job_id = await submit_ws_mini(service, 1)
    await wait_state(service, job_id, "submitted")

    later, _ = await make(WAVESPEED_MAX_CONCURRENT="1")  # the first process died; this one starts
    engine = later.engine
    entered: list[float] = []
    asked: list[EditRequest] = []
    update_job, read, window, request_for = (
        engine.storage.jobs.update_job,
        engine.files.read,
        engine._resume_window,
        engine._request,
    )

    async def timed_window(*args: Any) -> float:
        entered.append(time.monotonic())
        return await window(*args)

    async def slow_update(*args: Any, **kw: Any) -> None:
        if "deadline_at" in kw:
            await asyncio.sleep(1.5)  # a busy database
        await update_job(*args, **kw)

    def slow_read(*args: Any, **kw: Any) -> bytes:
        time.sleep(1.5)
        return read(*args, **kw)

    async def recording(*args: Any) -> EditRequest:
        asked.append(await request_for(*args))
        return asked[-1]

    monkeypatch.setattr(engine, "_resume_window", timed_window)
    monkeypatch.setattr(engine.storage.jobs, "update_job", slow_update)
    monkeypatch.setattr(engine.files, "read", slow_read)
    monkeypatch.setattr(engine, "_request", recording)
    await engine.recover()
    await until(lambda: asked)
    wavespeed.release_results()
    await wait_state(later, job_id, "delivered")

    [request] = asked
    assert request.deadline <= entered[0] + engine.settings.job_timeout_seconds + 0.5


def test_only_a_finished_jobs_download_runs_past_the_deadline_and_within_the_watchdogs_grace():
    late = EditRequest(images=(), prompt="p", model="m", deadline=time.monotonic() - 1)
    spent = replace(late, deadline=time.monotonic() - DOWNLOAD_GRACE_SECONDS - 1)

    assert late.overdue() and spent.overdue()  # not finished: never past the deadline
    with late.fetching_result() as until_at:
        assert not late.overdue() and until_at == late.deadline + DOWNLOAD_GRACE_SECONDS
    assert late.overdue()
    with spent.fetching_result():
        assert spent.overdue()  # the grace is spent too
    # The job's own check (at a progress tick) ends a download before the watchdog steps in.
    tick, watchdog = running_module.PROGRESS_TICK_SECONDS, running_module.DEADLINE_GRACE_SECONDS
    assert DOWNLOAD_GRACE_SECONDS + tick < watchdog


async def test_watchdog_cancels_a_job_that_waited_too_long_in_the_queue(make: Factory, openai: FakeOpenAI):
    service, recorder = await make(MAX_CONCURRENT_JOBS="1", QUEUE_TIMEOUT_SECONDS="60")
    openai.fail_always(Fault.HANG)
    await submit(service)
    waiting = await submit(service, user=BOB)
    make.clock.advance(61)
    await service.engine.watchdog_tick()
    assert await state(service, waiting) == "cancelled"
    assert any("waited too long in the queue" in text for _, text in recorder.notices)
    assert await kinds(service, waiting) == ["reserve", "release"]


@pytest.mark.parametrize("by", ["cancel", "watchdog"])
async def test_a_queued_jobs_end_is_made_though_the_task_that_ended_it_is_cancelled(
    make: Factory, openai: FakeOpenAI, by: str
):
    """A queued job's release is being written (a locked database's retries) when the task that took it
    out of the queue is cancelled: a member's Cancel click, whose interaction ends with the process, or
    the watchdog's round, which a stop cancels. The release is still made. Cut off, the job was neither
    queued nor settled, its credits held, and the next start queued it again, ran it and charged it."""
    service, _ = await make(MAX_CONCURRENT_JOBS="1", QUEUE_TIMEOUT_SECONDS="60")
    openai.fail_always(Fault.HANG)
    await submit(service)
    await until(lambda: openai.post_count == 1)
    waiting = await submit(service, user=BOB)
    ledger = service.storage.ledger
    settle, writing, go = ledger.settle_released, asyncio.Event(), asyncio.Event()

    async def locked_for_a_while(job_id: str, *args: Any, **kw: Any) -> Any:
        if job_id == waiting:
            writing.set()
            await go.wait()
        return await settle(job_id, *args, **kw)

    ledger.settle_released = locked_for_a_while  # type: ignore[method-assign]
    if by == "cancel":
        ending = asyncio.create_task(service.cancel(waiting, actor_id=BOB, can_manage=False))
    else:
        make.clock.advance(61)
        ending = asyncio.create_task(service.engine.watchdog_tick())
    await asyncio.wait_for(writing.wait(), 10)
    ending.cancel()  # the process is stopping
    await asyncio.gather(ending, return_exceptions=True)
    go.set()
    await service.drain(0)
    assert await state(service, waiting) == "cancelled"
    assert await kinds(service, waiting) == ["reserve", "release"]
    account = await service.storage.ledger.get_account(GUILD, BOB)
    assert account is not None and account.held == 0


class HeldProgress(RecordingLive):
    """A progress message whose "editing" line is held up (Discord rate-limiting its edits) until `go`
    is set: the job's task waits there, so a cancel is seen only once the edit goes through."""

    def __init__(self) -> None:
        super().__init__()
        self.held = asyncio.Event()
        self.go = asyncio.Event()

    async def update(self, status: JobStatus) -> None:
        if status.stage == "running" and not self.go.is_set():
            self.held.set()
            await self.go.wait()
        await super().update(status)


async def test_a_members_cancel_stays_a_cancel_when_the_watchdog_finds_the_job_overdue_before_it_stops(
    make: Factory, openai: FakeOpenAI
):
    """The watchdog leaves a job that is already stopping alone. A requester's cancel not yet taken up
    by the job's task when the job's deadline passes still ends as that cancel: charged, since the
    provider had the call, and told so, not turned into a timeout ("took too long", not charged)."""
    service, _ = await make()
    openai.fail_always(Fault.HANG)
    live = HeldProgress()
    job_id = await submit(service, live)
    await until(lambda: openai.post_count == 1)  # the call is out: the provider bills it
    await asyncio.wait_for(live.held.wait(), 10)
    running = service.engine._jobs[job_id]
    cancelling = asyncio.create_task(
        service.engine.cancel(job_id, actor_id=ALICE, can_manage=False, quiet=False)
    )
    await until(running.abort.is_set)
    make.clock.advance(service.settings.job_timeout_seconds + 31)
    stopped = await service.engine.watchdog_tick()
    live.go.set()
    told = CANCELLED_AT_PROVIDER.format(charged=20)
    assert await cancelling == CancelAnswer(told, cancelled=True, charged=20)
    assert live.final == [told]
    row = await service.storage.jobs.get_job(job_id)
    assert row is not None and (row.state, row.error_code) == ("cancelled", "cancelled_at_provider")
    assert await kinds(service, job_id) == ["reserve", "capture"]
    assert stopped == 0


# -- delivery ---------------------------------------------------------------------------------------


async def test_a_spent_token_falls_back_to_the_delivery_and_captures_once(make: Factory):
    service, recorder = await make()
    live = Live()
    job_id = await submit(service, live)
    await wait_state(service, job_id, "delivered")
    await until(lambda: live.final)  # the member is told after the capture is recorded
    [(delivered, outcome)] = recorder.delivered
    assert delivered == job_id and live.final[-1] == f"Done — {outcome.charged} credits charged, 990 left."
    row = await service.storage.jobs.get_job(job_id)
    assert row is not None and (row.delivered_via, row.result_channel_id, row.result_message_id) == (
        "channel",
        10,
        20,
    )
    assert await kinds(service, job_id) == ["reserve", "capture"]
    # Delivered results are not kept; the inputs are (for Retry) until they expire.
    folder = service.engine.files.folder(job_id)
    assert sorted(p.name for p in folder.iterdir()) == ["input-1.png"]


async def test_a_live_delivery_that_may_have_landed_is_looked_for_before_posting_again(make: Factory):
    service, _ = await make()

    class Landed(Recorder):
        async def find(self, job: JobInfo) -> Delivered | None:
            return Delivered("interaction", 7, 42)  # the timed-out followup did reach Discord

    landed = Landed()
    service.engine.attach_delivery(landed)
    job_id = await submit(service, Live(uncertain=True))
    await wait_state(service, job_id, "delivered")
    assert landed.delivered == []  # nothing posted a second time
    row = await service.storage.jobs.get_job(job_id)
    assert row is not None and (row.delivered_via, row.result_message_id) == ("interaction", 42)


async def test_an_undeliverable_result_is_released_kept_for_a_while_and_reported(make: Factory):
    service, recorder = await make()
    recorder.fail = True
    with pytest.raises(NoResult) as info:
        await run_to_end(service, job(), RecordingLive(refuse=ConnectionError("discord is down")))
    [row] = await service.storage.jobs.recent_jobs(GUILD, ALICE)
    assert (row.state, row.error_code) == ("failed", "undeliverable")
    assert info.value.ref == row.error_ref and "not charged" in info.value.text
    assert await kinds(service, row.id) == ["reserve", "release"]
    assert (service.engine.files.folder(row.id) / "result-1.png").is_file()
    assert row.files_expire_at is not None and row.files_expire_at > make.clock().isoformat()
    # Free to the member, but the provider was paid: it counts against the server's and bot's budgets.
    spend = await service.storage.reports.spend_by_guild(make.clock() - dt.timedelta(days=1))
    assert spend[GUILD] == (10, 0)


async def test_a_call_cut_off_by_its_requesters_cancel_is_charged_and_counts_against_the_budgets(
    make: Factory, openai: FakeOpenAI
):
    service, _ = await make()
    metrics = Metrics()
    service.engine.observers.append(metrics)
    openai.fail_always(Fault.HANG)
    job_id = await submit(service)
    await until(lambda: openai.post_count == 1)  # the request reached the provider, which bills it
    said = await service.cancel(job_id, actor_id=ALICE, can_manage=False)
    assert said == CancelAnswer(
        "Cancelled. The image service had already started this edit and charges for it, "
        "so 20 credits were charged.",
        cancelled=True,
        charged=20,
    )
    assert await kinds(service, job_id) == ["reserve", "capture"]
    row = await service.storage.jobs.get_job(job_id)
    assert row is not None and row.spec is None  # the prompt goes with the images
    assert not service.engine.files.folder(job_id).exists()
    spend = await service.storage.reports.spend_by_guild(make.clock() - dt.timedelta(days=1))
    assert spend[GUILD] == (20, 0)  # the route's price for the job's options ($0.02, auto size)
    # The operator's /metrics counts the charge too, as it does a delivered edit's.
    page = samples(metrics.render().decode())
    assert value(page, "retouch_credits_spent_total", provider="openai", model="gpt-image-1.5") == 20


async def test_a_charged_cancel_told_without_a_progress_message_says_what_it_cost(
    make: Factory, openai: FakeOpenAI
):
    """With no progress message to show it on (its token spent, or a restart), the member is told
    through the Delivery, with the charge: where the reason cannot be shown (DMs closed), the
    channel's line still says truthfully what the cancel cost."""
    service, recorder = await make()
    openai.fail_always(Fault.HANG)
    job_id = await submit(service)
    await until(lambda: openai.post_count == 1)
    await service.engine.cancel(job_id, actor_id=ALICE, can_manage=False, quiet=False)
    assert recorder.notices == [(job_id, CANCELLED_AT_PROVIDER.format(charged=20))]
    assert recorder.charged == {job_id: 20}


async def test_a_cancel_is_charged_while_one_of_several_calls_is_out_though_another_was_refused(
    make: Factory, openai: FakeOpenAI
):
    """Two images on a route without `n` are two calls at once: one refused unworked (401) does not
    take back the other, still at the provider and billed."""
    service, _ = await make()
    openai.fail_next(Fault.HANG)
    openai.fail_next(Fault.UNAUTHORIZED)
    prepared = await service.prepare(
        replace(job(), options=EditOptions("two", model="gpt-image-1.5", count=2))
    )
    job_id = (await service.submit(prepared)).job_id
    await until(lambda: openai.post_count == 2)
    await until(lambda: any(r.status == 401 for r in openai.requests))
    said = await service.cancel(job_id, actor_id=ALICE, can_manage=False)
    assert said.cancelled and said.charged > 0
    assert await kinds(service, job_id) == ["reserve", "capture"]


async def test_a_moderators_stop_of_a_sent_call_is_free_to_the_member_but_counts_against_the_budgets(
    make: Factory, openai: FakeOpenAI
):
    service, _ = await make()
    openai.fail_always(Fault.HANG)
    job_id = await submit(service)
    await until(lambda: openai.post_count == 1)
    said = await service.cancel(job_id, actor_id=BOB, can_manage=True)
    assert said == CancelAnswer("Cancelled — you were not charged.", cancelled=True)
    assert await kinds(service, job_id) == ["reserve", "release"]
    spend = await service.storage.reports.spend_by_guild(make.clock() - dt.timedelta(days=1))
    assert spend[GUILD] == (20, 0)  # not the member's: absorbed by the server's and the bot's budgets


async def test_a_cancel_whose_charge_finds_the_hold_already_released_ends_as_a_free_cancel(
    make: Factory, openai: FakeOpenAI
):
    """A requester's cancel once the provider has the job is charged; a hold that was already released
    (settled the other way) cannot be charged. The job must still end as a cancel: recorded, nothing
    charged, and the member told so on their progress message. Otherwise the conflict escapes the
    job's task and the job stays live, its credits accounted as neither held nor charged."""
    service, _ = await make()
    ledger = service.storage.ledger
    charge = ledger.settle_cancelled_at_provider

    async def released_first(job_id: str, *args: Any, **kw: Any) -> Any:
        await ledger.release(job_id, reason="settled elsewhere")
        return await charge(job_id, *args, **kw)

    ledger.settle_cancelled_at_provider = released_first  # type: ignore[method-assign]
    openai.fail_always(Fault.HANG)
    live = RecordingLive()
    job_id = await submit(service, live)
    await until(lambda: openai.post_count == 1)  # at the provider: this cancel would be charged
    said = await service.engine.cancel(job_id, actor_id=ALICE, can_manage=False, quiet=False)
    assert said == CancelAnswer("Cancelled — you were not charged.", cancelled=True)
    assert live.final == ["Cancelled — you were not charged."]
    row = await service.storage.jobs.get_job(job_id)
    assert row is not None and (row.state, row.captured) == ("cancelled", None)
    assert await kinds(service, job_id) == ["reserve", "release"]
    assert (await storage_account(service)).held == 0
    assert_books_balance(service.settings.data_dir)


def release_locked_for(service: EditService, locked_job: str) -> None:
    """The database refuses every release of `locked_job` (locked); other jobs' go through."""
    settle_released = service.storage.ledger.settle_released

    async def locked(job_id: str, *args: Any, **kwargs: Any) -> Any:
        if job_id == locked_job:
            raise sqlite3.OperationalError("database is locked")
        return await settle_released(job_id, *args, **kwargs)

    service.storage.ledger.settle_released = locked  # type: ignore[method-assign]


def answer_lost_on_last_try(settle: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """`settle` as a database that refuses it twice (locked) and then commits it on the third try
    (the last `SETTLE_RETRY_PAUSES` allows here) but loses the answer."""
    tries = [0]

    async def wrapped(*args: Any, **kwargs: Any) -> Any:
        tries[0] += 1
        if tries[0] < 3:
            raise sqlite3.OperationalError("database is locked")
        await settle(*args, **kwargs)
        raise ConnectionResetError("the answer is lost")

    return wrapped


@pytest.mark.parametrize("quiet", [False, True])
async def test_a_cancel_whose_charge_cannot_be_recorded_is_owed_and_made_by_the_watchdog(
    make: Factory, openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch, quiet: bool
):
    """The database keeps refusing the cancel's charge: the member is told the charged cancel it is,
    and the watchdog records that very charge once the database answers. An error escaping the job's
    end had left the hold with no task to settle it until the next start, and the member unanswered."""
    monkeypatch.setattr(core_module, "SETTLE_RETRY_PAUSES", (0.0, 0.0))
    service, _ = await make()
    ledger = service.storage.ledger
    charge, tries = ledger.settle_cancelled_at_provider, [0]

    async def locked(*args: Any, **kwargs: Any) -> Any:
        tries[0] += 1
        if tries[0] <= 3:
            raise sqlite3.OperationalError("database is locked")
        return await charge(*args, **kwargs)

    ledger.settle_cancelled_at_provider = locked  # type: ignore[method-assign]
    openai.fail_always(Fault.HANG)
    live = RecordingLive()
    job_id = await submit(service, live)
    await until(lambda: openai.post_count == 1)  # at the provider: this cancel is charged
    said = await service.engine.cancel(job_id, actor_id=ALICE, can_manage=False, quiet=quiet)
    told = CANCELLED_AT_PROVIDER.format(charged=said.charged)
    assert said == CancelAnswer(told, cancelled=True, charged=said.charged) and said.charged > 0
    assert live.final == ([None] if quiet else [told]) and tries[0] == 3
    assert await kinds(service, job_id) == ["reserve"]  # owed
    await service.engine.watchdog_tick()
    row = await service.storage.jobs.get_job(job_id)
    assert row is not None and (row.state, row.captured) == ("cancelled", said.charged)
    assert await kinds(service, job_id) == ["reserve", "capture"]
    assert (await storage_account(service)).held == 0
    assert_books_balance(service.settings.data_dir)


@pytest.mark.parametrize("quiet", [False, True])
async def test_a_cancel_on_a_route_that_costs_nothing_is_a_free_cancel(
    make: Factory, openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch, quiet: bool
):
    """A provider's price of $0 charges nothing: the member reads a free cancel, not "0 credits were
    charged" (nor both, from the answer and the progress message)."""
    service, _ = await make()

    async def free(job: object) -> int:
        return 0

    monkeypatch.setattr(service.engine, "_provider_price", free)
    openai.fail_always(Fault.HANG)
    live = RecordingLive()
    job_id = await submit(service, live)
    await until(lambda: openai.post_count == 1)
    said = await service.engine.cancel(job_id, actor_id=ALICE, can_manage=False, quiet=quiet)
    assert said == CancelAnswer(messages.CANCELLED, cancelled=True)
    assert live.final == ([None] if quiet else [messages.CANCELLED])
    assert await kinds(service, job_id) == ["reserve", "release"]


async def test_a_cancel_whose_charge_was_made_but_its_answer_lost_is_told_as_the_charged_cancel_it_is(
    make: Factory, openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
):
    """The last try of the charge commits and its answer is lost: the job reads back as charged, so the
    member is told the cancel cost what it cost (not "posted and charged", nor "not charged")."""
    monkeypatch.setattr(core_module, "SETTLE_RETRY_PAUSES", (0.0, 0.0))
    service, _ = await make()
    ledger = service.storage.ledger
    ledger.settle_cancelled_at_provider = answer_lost_on_last_try(ledger.settle_cancelled_at_provider)  # type: ignore[method-assign]
    openai.fail_always(Fault.HANG)
    live = RecordingLive()
    job_id = await submit(service, live)
    await until(lambda: openai.post_count == 1)
    await service.engine.cancel(job_id, actor_id=ALICE, can_manage=False, quiet=False)
    row = await service.storage.jobs.get_job(job_id)
    assert row is not None and row.state == "cancelled" and row.captured
    assert live.final == [CANCELLED_AT_PROVIDER.format(charged=row.captured)]
    assert await kinds(service, job_id) == ["reserve", "capture"]
    assert_books_balance(service.settings.data_dir)


@pytest.mark.parametrize("locked", ["once", "throughout"])
async def test_a_cancel_whose_price_cannot_be_read_still_ends_the_job(
    make: Factory, wavespeed: FakeWaveSpeed, monkeypatch: pytest.MonkeyPatch, locked: str
):
    """The database refuses the read that prices a requester's cancel of a job its provider accepted.
    Read again, it is charged as usual; still refused, the cancel is released as a free one, made by the
    watchdog once the database answers. The error escaped the job's end (and the member's Cancel): the
    row stayed `submitted` with its hold, and the next start resumed, delivered and charged it."""
    monkeypatch.setattr(core_module, "SETTLE_RETRY_PAUSES", (0.0, 0.0))
    service, _ = await make()
    engine = service.engine
    wavespeed.hold_results()
    job_id = await submit(service, model="ws-mini")
    await wait_state(service, job_id, "submitted")
    get_job, refused = service.storage.jobs.get_job, [0]

    async def locked_while_it_ends(wanted: str) -> Any:
        running = engine._jobs.get(wanted)
        ending = running is not None and running.abort.is_set()  # its end's reads, not the cancel's own
        if ending and (locked == "throughout" or not refused[0]):
            refused[0] += 1
            raise sqlite3.OperationalError("database is locked")
        return await get_job(wanted)

    service.storage.jobs.get_job = locked_while_it_ends  # type: ignore[method-assign]
    said = await service.cancel(job_id, actor_id=ALICE, can_manage=False)
    await until(lambda: service.engine.in_flight == 0)
    service.storage.jobs.get_job = get_job  # type: ignore[method-assign]
    if locked == "once":
        assert said.cancelled and said.charged > 0
        assert await kinds(service, job_id) == ["reserve", "capture"]
    else:
        assert said == CancelAnswer(messages.CANCELLED, cancelled=True)
        assert await kinds(service, job_id) == ["reserve"]  # owed
        await engine.watchdog_tick()
        assert await kinds(service, job_id) == ["reserve", "release"]
    assert await state(service, job_id) == "cancelled"
    assert (await storage_account(service)).held == 0
    assert_books_balance(service.settings.data_dir)


async def test_a_release_still_owed_when_the_process_stops_is_released_by_the_next_not_run(
    make: Factory, openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
):
    """A queued job timed out and its release kept failing, through the stop's last try: its member was
    told it ended, not charged. The next start must release it, not queue it, run it and charge it."""
    monkeypatch.setattr(core_module, "SETTLE_RETRY_PAUSES", (0.0,))
    service, recorder = await make(MAX_CONCURRENT_JOBS="1", QUEUE_TIMEOUT_SECONDS="60")
    openai.fail_always(Fault.HANG)
    await submit(service)
    waiting = await submit(service, user=BOB)
    release_locked_for(service, waiting)
    make.clock.advance(61)
    await service.engine.watchdog_tick()
    [told] = [text for job_id, text in recorder.notices if job_id == waiting]
    assert "not charged" in told
    await service.drain(0)
    assert await state(service, waiting) == "reserved"  # still held: the release is still owed

    openai.clear_faults()
    later, told_later = await make()
    counts = await later.engine.recover()
    assert counts["requeued"] == 0
    await wait_state(later, waiting, "cancelled")
    assert await kinds(later, waiting) == ["reserve", "release"]
    assert openai.post_count == 1  # the first job's call only
    # Settled as it ended, silently: the member was told once, not a second, different story.
    row = await later.storage.jobs.get_job(waiting)
    assert row is not None and row.error_code not in ("restart_before_start", "restart_outcome_unknown")
    assert [text for job_id, text in told_later.notices if job_id == waiting] == []
    assert waiting not in later.engine.files.job_ids()


@pytest.mark.parametrize("note", ["written", "unwritable"])
async def test_an_owed_jobs_folder_always_holds_its_inputs_or_its_note_never_neither(
    make: Factory, openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch, note: str
):
    """The note of how the job ended is written before its inputs go, so whoever recovers the row in
    between finds one or the other. A note that cannot be written leaves no inputs either: the row is
    then released (with the restart message), never run again."""
    monkeypatch.setattr(core_module, "SETTLE_RETRY_PAUSES", (0.0,))
    service, _ = await make(MAX_CONCURRENT_JOBS="1", QUEUE_TIMEOUT_SECONDS="60")
    openai.fail_always(Fault.HANG)
    await submit(service)
    waiting = await submit(service, user=BOB)
    files, write = service.engine.files, service.engine.files.write
    inputs_when_noted: list[list[str]] = []

    def noting(job_id: str, named: dict[str, bytes]) -> None:
        if "ended.json" in named:
            inputs_when_noted.append(sorted(p.name for p in files.folder(job_id).iterdir()))
            if note == "unwritable":
                raise OSError("disk full")
        write(job_id, named)

    monkeypatch.setattr(files, "write", noting)
    release_locked_for(service, waiting)
    make.clock.advance(61)
    await service.engine.watchdog_tick()
    [present] = inputs_when_noted
    assert present and "ended.json" not in present  # the inputs were still there
    left = sorted(p.name for p in files.folder(waiting).iterdir()) if files.folder(waiting).exists() else []
    assert left == (["ended.json"] if note == "written" else [])
    await service.drain(0)

    openai.clear_faults()
    later, _ = await make()
    counts = await later.engine.recover()
    assert counts["requeued"] == 0 and counts["released"] == 1
    assert await kinds(later, waiting) == ["reserve", "release"]


async def test_an_owed_release_that_fails_again_at_the_next_start_stays_owed_not_quarantined(
    make: Factory, openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
):
    """The next start's first try at the owed release fails too: the job stays owed there (the
    watchdog makes it), instead of being quarantined, which told its member a second story."""
    monkeypatch.setattr(core_module, "SETTLE_RETRY_PAUSES", (0.0,))
    service, _ = await make(MAX_CONCURRENT_JOBS="1", QUEUE_TIMEOUT_SECONDS="60")
    openai.fail_always(Fault.HANG)
    await submit(service)
    waiting = await submit(service, user=BOB)
    settle_released, failures = service.storage.ledger.settle_released, [2]

    async def failing(job_id: str, *args: Any, **kwargs: Any) -> Any:
        if job_id == waiting and failures[0] > 0:
            failures[0] -= 1
            raise sqlite3.OperationalError("database is locked")
        return await settle_released(job_id, *args, **kwargs)

    service.storage.ledger.settle_released = failing  # type: ignore[method-assign]
    make.clock.advance(61)
    await service.engine.watchdog_tick()  # both of this process's tries fail: owed
    failures[0] = 10**6
    await service.drain(0)
    openai.clear_faults()

    later, told_later = await make()
    failures[0] = 1  # the next start's first try fails too
    later.storage.ledger.settle_released = failing  # type: ignore[method-assign]
    await later.engine.recover()
    assert await state(later, waiting) == "reserved" and waiting in later.engine._owed
    await later.engine.watchdog_tick()
    row = await later.storage.jobs.get_job(waiting)
    assert row is not None and row.state == "cancelled" and row.error_code != "quarantined"
    assert await kinds(later, waiting) == ["reserve", "release"]
    assert [text for job_id, text in told_later.notices if job_id == waiting] == []


async def test_a_stored_result_whose_release_was_owed_at_the_stop_is_not_posted_by_the_next_start(
    make: Factory, openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
):
    """The job's result was stored, then its delivery failed and so did its release, through the stop:
    its member was told it failed. The next start settles it as it ended, silently, instead of posting
    the result (and charging it) or telling the member a second failure."""
    monkeypatch.setattr(core_module, "SETTLE_RETRY_PAUSES", (0.0,))
    service, told = await make()
    engine, settle_released = service.engine, service.storage.ledger.settle_released

    async def locked(*args: Any, **kwargs: Any) -> Any:
        raise sqlite3.OperationalError("database is locked")

    async def deliver_fails(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the delivery step broke before posting")

    service.storage.ledger.settle_released = locked  # type: ignore[method-assign]
    monkeypatch.setattr(engine, "_deliver", deliver_fails)
    job_id = await submit(service)
    await until(lambda: job_id in engine._owed and engine.in_flight == 0)
    assert await state(service, job_id) == "completed" and len(told.notices) == 1
    await service.drain(0)
    service.storage.ledger.settle_released = settle_released  # type: ignore[method-assign]

    later, told_later = await make()
    counts = await later.engine.recover()
    assert counts["released"] == 1 and counts["delivering"] == 0
    assert await state(later, job_id) == "failed"
    assert await kinds(later, job_id) == ["reserve", "release"]
    assert told_later.notices == []


async def test_a_release_owed_when_the_process_stops_is_made_by_the_stop_once_the_database_answers(
    make: Factory, openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
):
    """The stop tries what is still owed once more: made then, the credits are free before the next
    start (which may be long in coming) and nothing is left to recover."""
    monkeypatch.setattr(core_module, "SETTLE_RETRY_PAUSES", (0.0,))
    service, _ = await make(MAX_CONCURRENT_JOBS="1", QUEUE_TIMEOUT_SECONDS="60")
    openai.fail_always(Fault.HANG)
    await submit(service)
    waiting = await submit(service, user=BOB)
    settle_released, locked = service.storage.ledger.settle_released, [True]

    async def while_locked(job_id: str, *args: Any, **kwargs: Any) -> Any:
        if job_id == waiting and locked[0]:
            raise sqlite3.OperationalError("database is locked")
        return await settle_released(job_id, *args, **kwargs)

    service.storage.ledger.settle_released = while_locked  # type: ignore[method-assign]
    make.clock.advance(61)
    await service.engine.watchdog_tick()  # the release fails: owed
    assert await state(service, waiting) == "reserved"
    locked[0] = False
    await service.drain(0)
    assert await state(service, waiting) == "cancelled"
    assert await kinds(service, waiting) == ["reserve", "release"]


async def test_a_job_slow_to_stop_is_answered_as_pending_and_its_end_is_told_on_its_progress_message(
    make: Factory, openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
):
    # No wait at all: the job's task cannot have ended by the time the cancel looks, as when a provider
    # is slow to let go. Before, the answer was "This edit has already ended" and nobody said how it did.
    monkeypatch.setattr(engine_module, "CANCEL_WAIT_SECONDS", 0.0)
    service, _ = await make()
    openai.fail_always(Fault.HANG)
    live = RecordingLive()
    job_id = await submit(service, live)
    await until(lambda: openai.post_count == 1)
    said = await service.cancel(job_id, actor_id=BOB, can_manage=True)
    assert said == CancelAnswer(messages.CANCELLING_SLOWLY, pending=True)
    await wait_state(service, job_id, "cancelled")
    # Quiet no more: the job's own end tells the member, on the message the caller left alone.
    await until(lambda: live.final == ["Cancelled — you were not charged."])
    assert await kinds(service, job_id) == ["reserve", "release"]


async def test_a_cancel_while_waiting_for_the_providers_limit_is_free(make: Factory, openai: FakeOpenAI):
    service, _ = await make(OPENAI_MAX_CONCURRENT="1")
    openai.fail_always(Fault.HANG)
    first = await submit(service)
    await until(lambda: openai.post_count == 1)
    second = await submit(service, user=BOB)
    await until(lambda: service.engine.in_flight == 2)  # admitted, waiting for the provider's slot
    said = await service.cancel(second, actor_id=BOB, can_manage=False)
    assert said == CancelAnswer("Cancelled — you were not charged.", cancelled=True)
    assert await kinds(service, second) == ["reserve", "release"]
    assert openai.post_count == 1  # the second call never left
    await service.cancel(first, actor_id=ALICE, can_manage=False)


@pytest.mark.parametrize("ending", ["cancelled", "stopped", "timed out", "shut down"])
async def test_a_call_still_waiting_for_the_providers_limit_counts_nothing_against_the_budgets(
    make: Factory, openai: FakeOpenAI, ending: str
):
    """A job whose route is picked but whose call waits for the provider's slot reached nobody: however
    it ends, no provider spend is recorded for it. Counted as billed, a free cancel charged the server's
    and the bot's budgets the provider's full price for a call never sent."""
    service, _ = await make(OPENAI_MAX_CONCURRENT="1")
    openai.fail_always(Fault.HANG)
    first = await submit(service)
    await until(lambda: openai.post_count == 1)
    second = await submit(service, user=BOB)
    await wait_state(service, second, "submitting")  # its route is picked; the call waits for the slot
    if ending == "cancelled":
        await service.cancel(second, actor_id=BOB, can_manage=False)
    elif ending == "stopped":
        await service.cancel(second, actor_id=ALICE, can_manage=True)
    elif ending == "timed out":
        make.clock.advance(service.settings.job_timeout_seconds + 31)
        await service.engine.watchdog_tick()
    else:
        await service.drain(0)
    await wait_state(service, second, "cancelled")
    assert openai.post_count == 1  # the second call never left
    assert await kinds(service, second) == ["reserve", "release"]
    if ending in ("timed out", "shut down"):  # the call that was out is cut off too, and counted
        await wait_state(service, first, "cancelled")
    absorbed = [job_id for (job_id,) in await service.storage.db.all("SELECT job_id FROM absorbed_spend")]
    assert second not in absorbed
    assert (first in absorbed) == (ending in ("timed out", "shut down"))


class FailingCheck:
    """`check_sending` (the fenced write before each paid call leaves) failing for the calls numbered in
    `fail` (1 = the first) as a locked SQLite file fails."""

    def __init__(self, service: EditService, fail: Callable[[int], bool], before: Callable[[], Any]) -> None:
        self.calls = 0
        self._fail, self._before = fail, before
        self._check = service.storage.jobs.check_sending
        service.storage.jobs.check_sending = self  # type: ignore[method-assign]

    async def __call__(self, job_id: str, owner: str, out: int) -> None:
        self.calls += 1
        if self._fail(self.calls):
            await until(self._before)
            raise sqlite3.OperationalError("database is locked")
        await self._check(job_id, owner, out)


async def test_a_failed_read_before_a_paid_call_is_tried_again_and_the_edit_goes_on(
    make: Factory, openai: FakeOpenAI
):
    """The check that this process still holds the job, as its call leaves, met a locked database once:
    it used to fail the edit ("something went wrong") where nothing was wrong with it."""
    service, recorder = await make()
    check = FailingCheck(service, lambda n: n == 1, lambda: True)
    job_id = await submit(service)
    await wait_state(service, job_id, "delivered")
    assert check.calls == 2 and openai.post_count == 1 and recorder.notices == []
    assert await kinds(service, job_id) == ["reserve", "capture"]


async def test_an_edit_that_fails_after_one_of_its_calls_left_counts_that_call_against_the_budgets(
    make: Factory, wavespeed: FakeWaveSpeed
):
    """Two images as two calls: the first is at WaveSpeed when the second's check keeps failing. The
    member pays nothing, but WaveSpeed bills the call that left: the budgets count it."""
    service, _ = await make()
    FailingCheck(service, lambda n: n >= 2, lambda: wavespeed.submit_count == 1)
    prepared = await service.prepare(job(model="ws-mini"))
    prepared = replace(prepared, chosen=replace(prepared.chosen, count=2), reserve=40)
    job_id = (await service.submit(prepared)).job_id
    await wait_state(service, job_id, "failed")
    assert wavespeed.submit_count == 1
    assert await kinds(service, job_id) == ["reserve", "release"]
    absorbed = await service.storage.db.all("SELECT job_id, credits FROM absorbed_spend")
    assert [(row[0], row[1] > 0) for row in absorbed] == [(job_id, True)]


async def test_retry_takes_the_server_and_roles_of_the_click_never_the_stored_ones(make: Factory):
    service, _ = await make()
    first = await submit(service)
    await wait_state(service, first, "delivered")
    where = {"user_id": ALICE, "channel_id": 7, "upload_limit": 10 * 1024 * 1024}
    with pytest.raises(InvalidOptions) as elsewhere:
        await service.retry_job(first, guild_id=0, role_ids=(), **where)  # from DMs
    assert elsewhere.value.code == "retry_elsewhere"
    again = await service.retry_job(first, guild_id=GUILD, role_ids=(55,), **where)
    assert (again.guild_id, again.role_ids) == (GUILD, (55,))


# -- shutdown and recovery --------------------------------------------------------------------------


async def test_drain_keeps_durable_jobs_and_the_next_process_finishes_them(
    make: Factory, openai: FakeOpenAI, wavespeed: FakeWaveSpeed
):
    service, _ = await make(MAX_CONCURRENT_JOBS="2")
    wavespeed.hold_results()
    openai.fail_always(Fault.HANG)
    at_provider = await submit(service, model="ws-mini")
    await wait_state(service, at_provider, "submitted")
    sync_call = await submit(service)
    await until(lambda: openai.post_count == 1)
    live = Live()
    waiting = await submit(service, live, user=BOB)

    assert await service.drain(0.05) == 1  # only the synchronous call is aborted (and refunded)
    assert [await state(service, j) for j in (at_provider, sync_call, waiting)] == [
        "submitted",
        "cancelled",
        "reserved",
    ]
    assert "keeps its place in the queue" in (live.final[-1] or "")

    openai.clear_faults()
    wavespeed.release_results()
    later, recorder = await make()
    counts = await later.engine.recover()
    assert counts["resumed"] == 1 and counts["requeued"] == 1
    await wait_state(later, at_provider, "delivered")
    await wait_state(later, waiting, "delivered")
    assert wavespeed.submit_count == 1  # resumed, never submitted twice
    assert {job_id for job_id, _ in recorder.delivered} == {at_provider, waiting}
    assert_books_balance(later.settings.data_dir)


async def store_job(
    service: EditService, job_id: str, job_spec: JobSpec, blobs: dict[str, bytes], **row: Any
) -> None:
    """Alice's job as a stopped process left it: its files on disk and its row (`queued`, unless `row`
    says otherwise; `row` may also give the stored `spec` text)."""
    service.engine.files.write(job_id, blobs)
    await service.storage.jobs.create_job(
        job_id,
        **{
            "guild_id": GUILD,
            "user_id": ALICE,
            "channel_id": 7,
            "model": job_spec.model,
            "quality": "auto",
            "size": "auto",
            "count": 1,
            "spec": job_spec.to_json(),
            **row,
        },
    )


def written_long_ago(files: JobFiles, job_id: str) -> None:
    """Date a job's folder back past the sweep's grace for folders without a row (file system time:
    moving the storage clock does not age a folder)."""
    then = files.fs_now() - ORPHAN_GRACE_SECONDS - 60
    os.utime(files.folder(job_id), (then, then))


async def test_recovery_settles_every_state_a_stopped_process_can_leave(make: Factory):
    service, _ = await make()
    storage, files = service.storage, service.engine.files
    prepared = await service.prepare(job())
    spec, blobs = await service._spec(prepared)
    ids = {}
    for name in ("queued", "reserved", "submitting", "completed", "ended", "gone"):
        job_id = f"{len(ids):016x}"
        ids[name] = job_id
        await store_job(service, job_id, spec, blobs, files_expire_at="2026-11-22T12:00:00.000+00:00")
        if name != "queued":
            await storage.ledger.reserve(job_id, GUILD, ALICE, prepared.reserve, starting_credits=1000)
    await storage.jobs.set_job_state(ids["submitting"], "submitting", provider="openai")
    files.write(ids["completed"], {"result-1.png": PHOTO})
    result = {"disk": "result-1.png", "filename": "r.png", "format": "png"}
    record = {"files": [result], "provider": "openai", "quality": "low", "size": "1024x1024", "charged": 7}
    await storage.jobs.set_job_state(ids["completed"], "completed", result=json.dumps(record))
    await storage.jobs.update_job(ids["completed"], delivery_attempted_at="2026-11-21T12:00:00.000+00:00")
    # A job that ended without settling (an older version's crash window), and a hold with no job.
    await storage.jobs.set_job_state(ids["ended"], "failed", error_code="x")
    await storage.db.write_one("DELETE FROM jobs WHERE id = ?", (ids["gone"],))
    written_long_ago(files, ids["gone"])
    await service.drain(0)

    later, recorder = await make()
    recorder.found[ids["completed"]] = Delivered("interaction", 7, 99)  # it had landed before the crash
    counts = await later.engine.recover()
    assert counts == {
        "requeued": 1,
        "resumed": 0,
        "delivering": 1,
        "released": 2,
        "quarantined": 0,
        "cancelled": 0,
        "orphan_holds": 2,
        "swept": 1,
    }
    await wait_state(later, ids["reserved"], "delivered")
    await wait_state(later, ids["completed"], "delivered")
    assert await kinds(later, ids["completed"]) == ["reserve", "capture"]
    assert [job_id for job_id, _ in recorder.delivered] == [ids["reserved"]]  # no second post
    for name in ("queued", "submitting"):
        assert await state(later, ids[name]) == "cancelled"
    assert await kinds(later, ids["submitting"]) == ["reserve", "release"]
    # The call that was out may have been billed: free to the member, counted against the budgets
    # (its price on OpenAI, as when a running process cuts such a call off), the queued one not.
    absorbed = await later.storage.db.all("SELECT job_id, credits FROM absorbed_spend")
    assert [tuple(r) for r in absorbed] == [(ids["submitting"], prepared.reserve)]
    told = dict(await until(lambda: len(recorder.notices) == 2 and recorder.notices))
    assert "before your edit could start" in told[ids["queued"]]
    assert "result was lost" in told[ids["submitting"]]
    assert (await storage_account(later)).held == 0
    assert_books_balance(later.settings.data_dir)


async def test_a_delivered_job_is_reported_charged_what_the_ledger_captured_not_what_its_record_says(
    make: Factory,
):
    """The capture never takes more than the job holds, and what a delivered job is then reported as
    charged (the operator's credits spent, the log) is that capture. A stored result whose record
    claims more than the hold (a row written by another build) is posted after a restart, captured at
    the hold, and counted at the hold: the metrics never show credits the ledger did not take."""
    service, _ = await make()
    prepared = await service.prepare(job())
    spec, blobs = await service._spec(prepared)
    job_id, held = "00000000000000c1", 7
    await store_job(service, job_id, spec, {**blobs, "result-1.png": PHOTO})
    await service.storage.ledger.reserve(job_id, GUILD, ALICE, held, starting_credits=1000)
    result = {"disk": "result-1.png", "filename": result_filename(job_id, 1, "png"), "format": "png"}
    record = {"files": [result], "provider": "openai", "quality": "low", "size": "1024x1024", "charged": 20}
    await service.storage.jobs.set_job_state(
        job_id, "completed", provider="openai", result=json.dumps(record)
    )
    await service.drain(0)

    later, recorder = await make()
    metrics = Metrics()
    later.engine.observers.append(metrics)
    assert (await later.engine.recover())["delivering"] == 1
    await wait_state(later, job_id, "delivered")
    assert [j for j, _ in recorder.delivered] == [job_id]
    row = await later.storage.jobs.get_job(job_id)
    assert row is not None and row.captured == held
    assert await kinds(later, job_id) == ["reserve", "capture"]

    def spent() -> float | None:
        page = samples(metrics.render().decode())
        return value(page, "retouch_credits_spent_total", provider="openai", model=spec.model)

    assert await until(spent) == held
    assert (await storage_account(later)).balance == 1000 - held
    assert_books_balance(later.settings.data_dir)


async def test_an_unreadable_job_row_is_quarantined_and_does_not_stop_recovery(make: Factory):
    service, _ = await make()
    storage = service.storage
    prepared = await service.prepare(job())
    spec, blobs = await service._spec(prepared)
    ids = {}
    for name, text in (("bad spec", "{not json"), ("bad result", spec.to_json()), ("good", spec.to_json())):
        job_id = f"{len(ids) + 1:016x}"
        ids[name] = job_id
        await store_job(
            service, job_id, spec, blobs, spec=text, files_expire_at="2026-11-22T12:00:00.000+00:00"
        )
        await storage.ledger.reserve(job_id, GUILD, ALICE, prepared.reserve, starting_credits=1000)
    await storage.jobs.set_job_state(ids["bad result"], "completed", result='{"files": 3}')
    await service.drain(0)

    later, recorder = await make()
    outcomes = Outcomes()
    later.engine.observers.append(outcomes)
    counts = await later.engine.recover()
    assert (counts["quarantined"], counts["requeued"]) == (2, 1)
    assert outcomes.ended[ids["bad spec"]] == ("failed", 0)  # reported to metrics and the audit channel
    await wait_state(later, ids["good"], "delivered")
    for name in ("bad spec", "bad result"):
        row = await later.storage.jobs.get_job(ids[name])
        assert row is not None and (row.state, row.error_code) == ("failed", "quarantined")
        assert await kinds(later, ids[name]) == ["reserve", "release"]
    told = dict(await until(lambda: len(recorder.notices) == 2 and recorder.notices))
    assert all("not charged" in text for text in told.values())
    assert_books_balance(later.settings.data_dir)


async def storage_account(service: EditService) -> Any:
    account = await service.storage.ledger.get_account(GUILD, ALICE)
    assert account is not None
    return account


async def test_the_sweep_deletes_expired_and_orphaned_folders_only(make: Factory):
    service, _ = await make(INPUT_RETENTION_HOURS="1")
    done = await submit(service)
    await wait_state(service, done, "delivered")
    service.engine.files.write("ffffffffffffffff", {"input-1.png": PHOTO})  # no job row
    written_long_ago(service.engine.files, "ffffffffffffffff")
    assert await service.engine.sweep() == 1
    assert service.engine.files.folder(done).is_dir()
    make.clock.advance(3601)
    assert await service.engine.sweep() == 1
    assert service.engine.files.job_ids() == []
    row = await service.storage.jobs.get_job(done)
    assert row is not None and row.spec is None  # the prompt goes with the images


async def test_the_sweep_leaves_a_fresh_folder_without_a_row_to_the_process_writing_it(make: Factory):
    # Processes sharing DATA_DIR: another one's `submit` has written the job's files, not yet its row.
    service, _ = await make()
    files = service.engine.files
    fresh, old = "eeeeeeeeeeeeeeee", "ffffffffffffffff"
    files.write(fresh, {"input-1.png": PHOTO})
    files.write(old, {"input-1.png": PHOTO})
    written_long_ago(files, old)
    assert await service.engine.sweep() == 1
    assert files.job_ids() == [fresh]
    make.clock.advance(ORPHAN_GRACE_SECONDS * 24)  # the storage clock says nothing about a folder's age
    assert await service.engine.sweep() == 0
    assert files.job_ids() == [fresh]


async def test_a_job_suspended_at_shutdown_tells_its_progress_message(
    make: Factory, wavespeed: FakeWaveSpeed
):
    service, _ = await make()
    wavespeed.hold_results()
    waiter = asyncio.create_task(run_to_end(service, job(model="ws-mini"), Live()))
    await until(lambda: service.engine.in_flight == 1)
    [row] = await service.storage.jobs.recent_jobs(GUILD, ALICE)
    await wait_state(service, row.id, "submitted")
    await service.drain(0)
    with pytest.raises(NoResult) as info:
        await waiter
    assert info.value.text == SUSPENDED_AT_PROVIDER


async def test_an_emulated_count_resumes_every_accepted_call_and_charges_per_image(
    make: Factory, wavespeed: FakeWaveSpeed
):
    service, _ = await make()
    wavespeed.hold_results()
    prepared = await service.prepare(job(model="ws-mini"))
    prepared = replace(prepared, chosen=replace(prepared.chosen, count=2), reserve=40)
    job_id = (await service.submit(prepared)).job_id
    await until(lambda: wavespeed.submit_count == 2)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while len((row := await service.storage.jobs.get_job(job_id)).provider_job_ids) < 2:  # type: ignore[union-attr]
        assert loop.time() < deadline
        await asyncio.sleep(0.01)
    assert set(row.provider_job_ids) == set(wavespeed.tasks)  # type: ignore[union-attr]
    await service.drain(0)
    wavespeed.release_results()

    later, recorder = await make()
    await later.engine.recover()
    await wait_state(later, job_id, "delivered")
    [(_, outcome)] = recorder.delivered
    assert len(outcome.files) == 2 and outcome.charged == 40  # $0.02 per image delivered
    assert wavespeed.submit_count == 2


class Flaky(Recorder):
    """A Delivery that fails `failures` times with a passing error (Discord 5xx, network), then works."""

    def __init__(self, failures: int, error: Exception | None = None) -> None:
        super().__init__()
        self.failures = failures
        self.tries = 0
        self.error = error or DeliveryFailed("503 from Discord", uncertain=True, transient=True)

    async def deliver(self, job: JobInfo, outcome: EditOutcome) -> Delivered:
        self.tries += 1
        if self.tries <= self.failures:
            raise self.error
        return await super().deliver(job, outcome)


@pytest.mark.parametrize(
    "error",
    [
        DeliveryFailed("503", uncertain=True, transient=True),
        aiohttp.ServerDisconnectedError(),
        TimeoutError(),
    ],
    ids=["5xx", "disconnect", "timeout"],
)
async def test_a_passing_delivery_failure_is_retried_from_the_stored_result_and_charged_once(
    make: Factory, error: Exception
):
    service, _ = await make()
    flaky = Flaky(2, error)
    service.engine.attach_delivery(flaky)
    service.engine.delivery_retry_first = 0.01
    live = Live()
    job_id = await submit(service, live)
    await wait_state(service, job_id, "delivered")
    assert flaky.tries == 3 and [j for j, _ in flaky.delivered] == [job_id]
    assert await kinds(service, job_id) == ["reserve", "capture"]
    assert any(text and "Discord is not taking it right now" in text for text in live.final)
    assert not any(text and "not charged" in text for text in live.final)


async def test_a_retried_delivery_that_had_landed_is_not_posted_again(make: Factory):
    service, _ = await make()

    class LandedLate(Flaky):
        async def find(self, job: JobInfo) -> Delivered | None:
            return Delivered("channel", 10, 99)  # the 503'd post had reached the channel after all

    landed = LandedLate(1)
    service.engine.attach_delivery(landed)
    service.engine.delivery_retry_first = 0.01
    job_id = await submit(service, Live())
    await wait_state(service, job_id, "delivered")
    assert landed.tries == 1 and landed.delivered == []
    row = await service.storage.jobs.get_job(job_id)
    assert row is not None and row.result_message_id == 99


async def test_delivery_is_not_retried_while_discord_cannot_say_whether_it_landed(make: Factory):
    service, _ = await make()

    class Blind(Flaky):
        looks = 0

        async def find(self, job: JobInfo) -> Delivered | None:
            self.looks += 1
            if self.looks == 1:
                raise aiohttp.ClientConnectionError()
            return None

    blind = Blind(1)
    service.engine.attach_delivery(blind)
    service.engine.delivery_retry_first = 0.01
    job_id = await submit(service, Live())
    await wait_state(service, job_id, "delivered")
    # try 1 failed; try 2 could not look, so it posted nothing; try 3 looked, then posted.
    assert (blind.looks, blind.tries, len(blind.delivered)) == (2, 2, 1)


def put_off_deliveries(service: EditService) -> dict[str, Any]:
    """The jobs whose delivery `service` puts off from now on (by id), for `redeliver_now`."""
    engine = service.engine
    engine.delivery_retry_first = 3600.0  # their timers fire when the test says, not by themselves
    put_off: dict[str, Any] = {}
    real = engine._deliver_later

    async def deliver_later(job: Any, row: Any) -> bool:
        put_off[job.id] = job
        return await real(job, row)

    engine._deliver_later = deliver_later  # type: ignore[method-assign]
    return put_off


def redeliver_now(service: EditService, job: Any) -> None:
    """What a put-off delivery's timer does when it fires."""
    service.engine._redeliveries[job.id].cancel()
    service.engine._redeliver(job)


@pytest.mark.parametrize("ended", ["delivered", "failed", "cancelled"])
async def test_a_redelivery_that_finds_its_job_ended_posts_nothing_and_calls_no_provider(
    make: Factory, openai: FakeOpenAI, ended: str
):
    """A put-off delivery whose job ended meanwhile (another run of it here delivered it: a takeover of
    its own lapsed lease) leaves it as it ended: no post, no settlement, no provider call."""
    service, _ = await make()
    flaky = Flaky(1)
    service.engine.attach_delivery(flaky)
    put_off = put_off_deliveries(service)
    job_id = await submit(service)
    await until(lambda: job_id in put_off and job_id not in service.engine._jobs)
    owner = service.engine.owner
    if ended == "delivered":
        await service.storage.ledger.settle_delivered(
            job_id, 7, via="channel", channel_id=1, message_id=2, owner=owner
        )
    else:
        await service.storage.ledger.settle_released(job_id, ended, error_code="x", owner=owner)
    kinds_before = await kinds(service, job_id)
    redeliver_now(service, put_off[job_id])
    await asyncio.wait_for(service.engine._idle.wait(), 10)
    assert (flaky.tries, flaky.delivered, openai.post_count) == (1, [], 1)
    assert await state(service, job_id) == ended
    assert await kinds(service, job_id) == kinds_before
    assert_books_balance(service.settings.data_dir)


async def test_a_result_still_undeliverable_after_the_retention_window_is_released(make: Factory):
    service, _ = await make(RESULT_RETENTION_HOURS="1")
    flaky = Flaky(10**6)
    service.engine.attach_delivery(flaky)
    service.engine.delivery_retry_first = 0.01
    job_id = await submit(service, Live())
    await until(lambda: flaky.tries >= 2)
    make.clock.advance(3600)
    await wait_state(service, job_id, "failed")
    row = await service.storage.jobs.get_job(job_id)
    assert row is not None and row.error_code == "undeliverable"
    assert await kinds(service, job_id) == ["reserve", "release"]


async def test_a_delivery_put_off_at_shutdown_is_made_by_the_next_process(make: Factory):
    service, _ = await make()
    flaky = Flaky(10**6)
    service.engine.attach_delivery(flaky)
    service.engine.delivery_retry_first = 60.0
    live = Live()  # its token is spent
    job_id = await submit(service, live)
    await until(lambda: flaky.tries == 1)
    await until(lambda: live.final)
    await service.drain(0)
    assert await state(service, job_id) == "completed"
    assert live.final == [DELIVERY_DELAYED]  # the member is told the result is coming, not left hanging
    later, recorder = await make()
    await later.engine.start()
    await wait_state(later, job_id, "delivered")
    assert [j for j, _ in recorder.delivered] == [job_id]
    assert await kinds(later, job_id) == ["reserve", "capture"]


class SlowToPost(RecordingLive):
    """A progress message whose result upload takes longer than the stop waits (a large file, Discord
    retrying its 5xx)."""

    def __init__(self) -> None:
        super().__init__()
        self.posting = asyncio.Event()

    async def deliver(self, outcome: EditOutcome) -> Delivered:
        self.posting.set()
        await asyncio.sleep(3600)
        raise AssertionError("never posted")


async def test_a_result_still_being_posted_when_the_process_ends_is_posted_by_the_next_start(make: Factory):
    """The stop waits for a result being posted only so long; then the database closes and the job's
    task is cancelled. The stored result used to be deleted there, and the next start released the
    paid job as "something went wrong"."""
    service, _ = await make()
    live = SlowToPost()
    job_id = await submit(service, live)
    await asyncio.wait_for(live.posting.wait(), 10)
    await service.drain(0)  # what the bot's stop does; it then closes the database
    [task] = [t for t in asyncio.all_tasks() if t.get_name() == f"retouch-job-{job_id}"]
    await service.storage.close()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)

    later, recorder = await make()
    await later.engine.start()
    await wait_state(later, job_id, "delivered")
    assert [j for j, _ in recorder.delivered] == [job_id]
    assert await kinds(later, job_id) == ["reserve", "capture"]


async def test_the_stop_waits_within_its_grace_for_a_result_being_posted(make: Factory):
    """A job past its provider is posting its paid result when the bot is told to stop: the drain
    waits for it (up to the grace), so the member gets the result now and it is charged before the
    process goes, rather than the upload being cut off and the result left for the next start."""
    service, _ = await make()
    live = SlowPost()
    job_id = await submit(service, live)
    await asyncio.wait_for(live.posting.wait(), 10)
    draining = asyncio.create_task(service.drain(60))
    done, _ = await asyncio.wait({draining}, timeout=0.2)
    assert not done  # still waiting for the upload
    live.go.set()
    assert await draining == 0  # nothing aborted, nothing refunded
    assert await state(service, job_id) == "delivered"
    assert len(live.delivered) == 1
    assert await kinds(service, job_id) == ["reserve", "capture"]


async def test_a_result_being_posted_when_the_grace_runs_out_is_neither_aborted_nor_refunded(make: Factory):
    """When the grace ends, only jobs still at a provider are stopped and counted as refunded. A job
    posting its paid result is left to finish (the stop does not hold the process for it either):
    the drain says nothing was aborted, and the result is still posted and charged."""
    service, _ = await make()
    live = SlowPost()
    job_id = await submit(service, live)
    await asyncio.wait_for(live.posting.wait(), 10)
    assert await service.drain(0) == 0
    assert await state(service, job_id) == "completed"
    live.go.set()
    await wait_state(service, job_id, "delivered")
    assert len(live.delivered) == 1
    assert await kinds(service, job_id) == ["reserve", "capture"]


async def test_a_paid_result_that_cannot_be_stored_counts_against_the_budgets(
    make: Factory, openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
):
    """The provider made (and billed) the image, but it could not be kept (a full disk here): free to
    the member, and the server's and the bot's budgets count what the provider charged."""
    service, _ = await make()
    write = service.engine.files.write

    def full_disk(job_id: str, files: dict[str, bytes]) -> None:
        if any(name.startswith("result-") for name in files):  # the inputs were written before
            raise OSError(28, "No space left on device")
        write(job_id, files)

    stored = await submit(service)  # the same job, stored and posted: what it is charged
    await wait_state(service, stored, "delivered")
    charge = await service.storage.reports.spend_by_guild(make.clock() - dt.timedelta(days=1))
    monkeypatch.setattr(service.engine.files, "write", full_disk)
    job_id = await submit(service)
    await wait_state(service, job_id, "failed")
    assert openai.post_count == 2
    assert await kinds(service, job_id) == ["reserve", "release"]
    spend = await service.storage.reports.spend_by_guild(make.clock() - dt.timedelta(days=1))
    assert charge[GUILD][0] > 0
    assert spend[GUILD] == (2 * charge[GUILD][0], 0)  # its charge too, absorbed


@pytest.mark.parametrize("fault", [Fault.UNUSABLE_IMAGE, Fault.TRUNCATED_IMAGE])
async def test_an_image_that_comes_back_unusable_is_not_the_members_but_counts_against_the_budgets(
    make: Factory, openai: FakeOpenAI, fault: Fault
):
    """OpenAI bills an `n` call for every image; one whose data is no image, or is cut off behind an
    intact signature, is dropped. The member pays for the one they got, as the notice says; the rest
    counts against the server's and the bot's budgets."""
    service, recorder = await make()
    two = job()
    two = replace(two, options=replace(two.options, count=2))
    whole = (await service.submit(await service.prepare(two))).job_id
    await wait_state(service, whole, "delivered")
    openai.fail_next(fault)
    part = (await service.submit(await service.prepare(two))).job_id
    await wait_state(service, part, "delivered")

    outcomes = dict(recorder.delivered)
    assert (len(outcomes[whole].files), len(outcomes[part].files)) == (2, 1)
    with Image.open(io.BytesIO(outcomes[part].files[0].data)) as delivered:
        delivered.load()  # the image that decodes whole, not the broken one
    assert outcomes[part].notices == ("Only 1 of the 2 images could be made; you were charged for 1.",)
    billed = outcomes[whole].charged  # the same call, both images usable
    assert 0 < outcomes[part].charged < billed
    assert outcomes[part].charged + outcomes[part].absorbed == billed
    rows = await service.storage.reports.ledger_rows(part)
    assert [r["amount"] for r in rows if r["kind"] == "capture"] == [outcomes[part].charged]
    spend = await service.storage.reports.spend_by_guild(make.clock() - dt.timedelta(days=1))
    assert spend[GUILD] == (2 * billed, 0)  # the provider billed both calls in full
    assert_books_balance(service.settings.data_dir)


async def stored_partly_unusable(make: Factory, openai: FakeOpenAI) -> tuple[str, int]:
    """A two-image job whose second image came back unusable, stored but not yet delivered when its
    process stopped; and what the provider billed for such a call (both images)."""
    service, _ = await make()
    two = job()
    two = replace(two, options=replace(two.options, count=2))
    whole = (await service.submit(await service.prepare(two))).job_id
    await wait_state(service, whole, "delivered")
    [billed] = [
        r["amount"] for r in await service.storage.reports.ledger_rows(whole) if r["kind"] == "capture"
    ]
    flaky = Flaky(10**6)
    service.engine.attach_delivery(flaky)
    service.engine.delivery_retry_first = 60.0
    openai.fail_next(Fault.UNUSABLE_IMAGE)
    part = (await service.submit(await service.prepare(two), live=Live())).job_id
    await until(lambda: flaky.tries == 1)
    await service.drain(0)
    assert await state(service, part) == "completed"
    return part, billed


async def test_a_partly_unusable_result_delivered_after_a_restart_keeps_its_absorbed_part(
    make: Factory, openai: FakeOpenAI
):
    """The next process delivers it: the member is charged for the image they got, and the rest
    still counts against the budgets."""
    part, billed = await stored_partly_unusable(make, openai)
    later, recorder = await make()
    await later.engine.start()
    await wait_state(later, part, "delivered")
    [(_, outcome)] = recorder.delivered
    assert (len(outcome.files), 0 < outcome.charged < billed) == (1, True)
    assert outcome.charged + outcome.absorbed == billed
    spend = await later.storage.reports.spend_by_guild(make.clock() - dt.timedelta(days=1))
    assert spend[GUILD] == (2 * billed, 0)
    assert_books_balance(later.settings.data_dir)


@pytest.mark.parametrize("loss", ["undeliverable", "files lost"])
async def test_a_partly_unusable_result_lost_after_a_restart_absorbs_the_whole_bill(
    make: Factory, openai: FakeOpenAI, loss: str
):
    """The next process cannot deliver it (nobody can be reached, or its stored files are gone): free
    to the member, and the whole bill (the image made for them and the unusable one) counts against
    the budgets."""
    part, billed = await stored_partly_unusable(make, openai)
    later, recorder = await make()
    if loss == "files lost":
        for path in later.engine.files.folder(part).glob("result-*"):
            path.unlink()
    else:
        recorder.fail = True
    await later.engine.start()
    await wait_state(later, part, "failed")
    assert await kinds(later, part) == ["reserve", "release"]
    [(credits,)] = await later.storage.db.all("SELECT credits FROM absorbed_spend WHERE job_id = ?", (part,))
    assert credits == billed
    assert_books_balance(later.settings.data_dir)


async def test_a_job_the_provider_took_and_then_failed_is_free_but_counts_against_the_budgets(
    make: Factory, wavespeed: FakeWaveSpeed
):
    """WaveSpeed ran the task and reports it failed: it may have billed it, so the member pays nothing
    and the server's and the bot's budgets count the route's price."""
    service, _ = await make()
    wavespeed.fail_next(WaveSpeedFault.JOB_FAILED)
    job_id = await submit(service, model="ws-mini")
    await wait_state(service, job_id, "failed")
    assert await kinds(service, job_id) == ["reserve", "release"]
    assert (await storage_account(service)).held == 0
    [(credits,)] = await service.storage.db.all(
        "SELECT credits FROM absorbed_spend WHERE job_id = ?", (job_id,)
    )
    assert credits == 20  # ws-mini's flat $0.02
    spend = await service.storage.reports.spend_by_guild(make.clock() - dt.timedelta(days=1))
    assert spend[GUILD] == (20, 0)


async def test_a_result_the_providers_safety_filter_blanked_is_not_posted_nor_charged(
    make: Factory, wavespeed: FakeWaveSpeed
):
    """WaveSpeed completed the task but flagged its output (and blanked it): nothing is posted, the
    member pays nothing and is told the safety system refused it, and the budgets count the price."""
    service, recorder = await make()
    wavespeed.fail_next(WaveSpeedFault.OUTPUT_NSFW)
    live = Live()
    job_id = await submit(service, live, model="ws-mini")
    await wait_state(service, job_id, "failed")
    assert recorder.delivered == []
    assert await kinds(service, job_id) == ["reserve", "release"]
    [(credits,)] = await service.storage.db.all(
        "SELECT credits FROM absorbed_spend WHERE job_id = ?", (job_id,)
    )
    assert credits == 20  # ws-mini's flat $0.02
    await until(lambda: live.final)
    assert live.final[-1] is not None and live.final[-1].startswith(messages.PROVIDER_REFUSED)


class Outcomes:
    """A JobObserver that keeps how each job ended."""

    def __init__(self) -> None:
        self.ended: dict[str, tuple[str, int]] = {}

    def job_finished(self, job_id: str, state: str, *, charged: int, **_: object) -> None:
        self.ended[job_id] = (state, charged)


async def test_a_cleanup_error_after_the_charge_does_not_turn_a_delivered_job_into_a_failed_one(
    make: Factory,
):
    service, recorder = await make()
    outcomes = Outcomes()
    service.engine.observers.append(outcomes)

    def broken_delete(job_id: str, names: list[str]) -> None:
        raise PermissionError(13, "read-only file system")

    service.engine.files.delete = broken_delete  # type: ignore[method-assign]
    live = Live()
    job_id = await submit(service, live)
    await wait_state(service, job_id, "delivered")
    await until(lambda: job_id in outcomes.ended)
    [(_, outcome)] = recorder.delivered
    assert outcomes.ended[job_id] == ("delivered", outcome.charged)
    # The last line comes after the (failed) clean-up: waited for, not read before it is written.
    assert (await until(lambda: live.final))[-1] == f"Done — {outcome.charged} credits charged, 990 left."
    assert await kinds(service, job_id) == ["reserve", "capture"]


@pytest.mark.parametrize("failures", [1, 9])
async def test_a_posted_result_whose_capture_fails_is_charged_later_never_refunded(
    make: Factory, monkeypatch: pytest.MonkeyPatch, failures: int
):
    """The capture's transaction fails (a locked SQLite file, a connection lost before COMMIT) after
    the result was posted: tried again at once, and, still failing, left `completed` for a later
    delivery round, which finds the post and captures it. Never released as "not charged"."""
    monkeypatch.setattr(core_module, "SETTLE_RETRY_PAUSES", (0.0, 0.0))
    service, recorder = await make()
    service.engine.delivery_retry_first = 0.01
    outcomes = Outcomes()
    service.engine.observers.append(outcomes)
    real = service.storage.ledger.settle_delivered
    calls: list[str] = []

    async def locked(*args: Any, **kw: Any) -> Any:
        calls.append(args[0])
        if len(calls) <= failures:
            raise sqlite3.OperationalError("database is locked")  # nothing committed
        return await real(*args, **kw)

    service.storage.ledger.settle_delivered = locked  # type: ignore[method-assign]
    deliver = recorder.deliver

    async def deliver_and_keep(job: JobInfo, outcome: EditOutcome) -> Delivered:
        recorder.found[job.job_id] = where = await deliver(job, outcome)  # a later round finds it
        return where

    recorder.deliver = deliver_and_keep  # type: ignore[method-assign]
    live = Live()
    job_id = await submit(service, live)
    await until(lambda: job_id in outcomes.ended)
    assert outcomes.ended[job_id][0] == "delivered"
    assert len(recorder.delivered) == 1  # posted once
    assert await kinds(service, job_id) == ["reserve", "capture"]
    assert_books_balance(service.settings.data_dir)
    # The progress message ends on what happened, never "not charged" nor left on "Uploading…".
    charged = outcomes.ended[job_id][1]
    expected = messages.done(charged, 1000 - charged) if failures == 1 else messages.POSTED_CHARGE_PENDING
    assert await until(lambda: live.final) == [expected]


@pytest.mark.parametrize("balance_readable", [True, False])
async def test_a_capture_that_committed_unseen_is_told_as_charged_even_if_the_database_fails_again(
    make: Factory, openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch, balance_readable: bool
):
    """The posted result's capture commits on its last try and its answer is lost; read back, the job
    is delivered. The member is told it is done and what it cost, as any delivery is, whatever the
    database does next: a release tried first (refused once it answers, made owed while it does not)
    had them told "not charged". A balance that cannot be read then is left out, not the message."""
    monkeypatch.setattr(core_module, "SETTLE_RETRY_PAUSES", (0.0, 0.0))
    service, _ = await make()
    ledger = service.storage.ledger
    settle, read = answer_lost_on_last_try(ledger.settle_delivered), ledger.get_account
    settled: list[bool] = []

    async def locked(*args: Any, **kwargs: Any) -> Any:
        raise sqlite3.OperationalError("database is locked")

    async def settle_then_lock(*args: Any, **kwargs: Any) -> Any:
        settled.append(True)
        return await settle(*args, **kwargs)

    async def account(*args: Any, **kwargs: Any) -> Any:
        return await (locked if settled and not balance_readable else read)(*args, **kwargs)

    ledger.settle_delivered = settle_then_lock  # type: ignore[method-assign]
    ledger.settle_released = locked  # type: ignore[method-assign]
    ledger.get_account = account  # type: ignore[method-assign]
    live = Live()
    job_id = await submit(service, live)
    [told] = await until(lambda: live.final)
    row = await service.storage.jobs.get_job(job_id)
    assert row is not None and row.state == "delivered" and row.captured
    charged = int(row.captured)
    assert told == (
        messages.done(charged, 1000 - charged) if balance_readable else messages.done_charged(charged)
    )
    assert job_id not in service.engine._owed
    assert await kinds(service, job_id) == ["reserve", "capture"]


async def test_a_release_whose_transaction_fails_once_is_tried_again_and_frees_the_hold(
    make: Factory, openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
):
    """A failed job's release hits a locked database once: tried again at once, so the member's credits
    are not left held (and "not charged" not said) until the next start."""
    monkeypatch.setattr(core_module, "SETTLE_RETRY_PAUSES", (0.0,))
    service, _ = await make()
    real = service.storage.ledger.settle_released
    calls: list[str] = []

    async def locked_once(*args: Any, **kw: Any) -> Any:
        calls.append(args[0])
        if len(calls) == 1:
            raise sqlite3.OperationalError("database is locked")
        return await real(*args, **kw)

    service.storage.ledger.settle_released = locked_once  # type: ignore[method-assign]
    openai.fail_next(Fault.MODERATION_BLOCKED)
    live = Live()
    job_id = await submit(service, live)
    await wait_state(service, job_id, "failed")
    assert len(calls) == 2
    assert await kinds(service, job_id) == ["reserve", "release"]
    assert (await storage_account(service)).held == 0


@pytest.mark.parametrize("lost", ["before its commit", "after its commit"])
async def test_a_release_still_failing_after_its_retries_is_made_by_a_watchdog_round_exactly_once(
    make: Factory, openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch, lost: str
):
    """A failed job's release keeps failing past its retries, and the member has been told they were
    not charged: a later watchdog round makes that release (not only the next start, since the job
    has no task left here for the watchdog to find), without telling them again. Once only: a try
    that committed and lost its answer (`after its commit`) is found released, never released twice."""
    monkeypatch.setattr(core_module, "SETTLE_RETRY_PAUSES", (0.0,))
    service, recorder = await make()
    real = service.storage.ledger.settle_released
    failing = True

    async def flaky(*args: Any, **kw: Any) -> Any:
        if not failing:
            return await real(*args, **kw)
        if lost == "after its commit":
            await real(*args, **kw)
            raise ConnectionResetError("the answer is lost")
        raise sqlite3.OperationalError("database is locked")  # nothing committed

    service.storage.ledger.settle_released = flaky  # type: ignore[method-assign]
    openai.fail_next(Fault.MODERATION_BLOCKED)
    job_id = await submit(service)  # no progress message: the member is told through the Delivery
    [(_, told)] = await until(lambda: recorder.notices)
    assert "not charged" in told
    await until(lambda: service.engine.in_flight == 0)  # its task has ended
    reserved = (await service.storage.reports.ledger_rows(job_id))[0]["amount"]
    held = 0 if lost == "after its commit" else reserved  # still held: the bug this pins
    assert reserved > 0 and (await storage_account(service)).held == held

    assert await service.engine.watchdog_tick() == 0  # the release fails in this round too
    assert (await storage_account(service)).held == held
    failing = False
    await service.engine.watchdog_tick()
    assert await kinds(service, job_id) == ["reserve", "release"]
    assert (await storage_account(service)).held == 0
    assert await state(service, job_id) == "failed"
    row = await service.storage.jobs.get_job(job_id)
    assert row is not None and row.spec is None  # the prompt went with the images
    assert not service.engine.files.folder(job_id).exists()

    await service.engine.watchdog_tick()  # nothing is owed any more
    assert await kinds(service, job_id) == ["reserve", "release"]
    assert len(recorder.notices) == 1  # told once, when the job ended
    assert_books_balance(service.settings.data_dir)


async def test_an_error_after_the_charge_is_recorded_never_says_not_charged(
    make: Factory, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(core_module, "SETTLE_RETRY_PAUSES", (0.0,))
    service, _ = await make()
    outcomes = Outcomes()
    service.engine.observers.append(outcomes)
    storage = service.storage
    real = storage.ledger.settle_delivered

    async def settle_then_lose_the_reply(*args: Any, **kw: Any) -> Any:
        await real(*args, **kw)  # the capture is committed ...
        raise ConnectionResetError("... and then the reply is lost")

    storage.ledger.settle_delivered = settle_then_lose_the_reply  # type: ignore[method-assign]
    live = Live()
    job_id = await submit(service, live)
    await until(lambda: job_id in outcomes.ended)
    state_, charged = outcomes.ended[job_id]
    assert state_ == "delivered" and charged > 0
    assert await kinds(service, job_id) == ["reserve", "capture"]
    assert live.final == [messages.done(charged, 1000 - charged)]  # as any delivery is told


# -- retention ----------------------------------------------------------------------------------------


async def test_a_failed_jobs_prompt_and_options_go_with_its_images(make: Factory, openai: FakeOpenAI):
    service, _ = await make()
    openai.fail_next(Fault.MODERATION_BLOCKED)
    live = Live()
    job_id = await submit(service, live)
    await wait_state(service, job_id, "failed")
    await until(lambda: live.final)  # the member has been told: the job has ended
    row = await service.storage.jobs.get_job(job_id)
    assert row is not None and row.spec is None and row.result is None
    assert not service.engine.files.folder(job_id).exists()


async def test_the_sweep_clears_prompts_an_older_release_left_on_ended_jobs(
    make: Factory, openai: FakeOpenAI
):
    service, _ = await make()
    openai.fail_next(Fault.MODERATION_BLOCKED)
    job_id = await submit(service, Live())
    await wait_state(service, job_id, "failed")
    with sqlite3.connect(service.settings.database_path) as db:  # as the previous release left it
        db.execute('UPDATE jobs SET spec = \'{"prompt": "my address is"}\' WHERE id = ?', (job_id,))
    make.clock.advance(25 * 3600)  # past INPUT_RETENTION_HOURS
    await service.engine.sweep()
    row = await service.storage.jobs.get_job(job_id)
    assert row is not None and row.spec is None


async def test_history_older_than_job_history_days_is_pruned_and_the_books_still_add_up(
    make: Factory, tmp_path: Path
):
    service, _ = await make(JOB_HISTORY_DAYS="30")
    old = await submit(service)
    await wait_state(service, old, "delivered")
    await service.storage.ledger.grant(
        GUILD, ALICE, 50, actor_id=BOB, reason="for my friend Alice", starting_credits=0
    )
    make.clock.advance(31 * 86400)
    recent = await submit(service)
    await wait_state(service, recent, "delivered")
    # A budget period marked long ago (bot.storage.spend.MARK_RETENTION): its marks go with the sweep.
    since = (make.clock.now - dt.timedelta(days=70)).isoformat(timespec="milliseconds")
    await service.storage.db.write_one(
        "INSERT INTO spend_periods (since, captured_before, absorbed_before, marked_at) VALUES (?, 0, 0, ?)",
        (since, since),
    )
    await service.engine.sweep()
    periods = [r[0] for r in await service.storage.db.all("SELECT since FROM spend_periods ORDER BY since")]
    # The old one went; the two months this test's budget checks marked stay.
    assert periods == ["2026-11-01T00:00:00.000+00:00", "2026-12-01T00:00:00.000+00:00"]
    assert await service.storage.jobs.get_job(old) is None
    assert await service.storage.jobs.get_job(recent) is not None
    assert await kinds(service, old) == ["reserve", "capture"]  # the books keep every amount
    assert_books_balance(tmp_path)
    with sqlite3.connect(service.settings.database_path) as db:
        details = db.execute(
            "SELECT reason, actor_id FROM ledger WHERE kind = 'grant' AND amount = 50"
        ).fetchall()
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute("UPDATE ledger SET amount = amount + 1 WHERE kind = 'grant'")
    assert details == [(None, None)]


# -- memory: a queued job is file names, not bytes -------------------------------------------------------


def large_bytes(root: object, at_least: int = 4096) -> list[int]:
    """Sizes of the bytes objects of `at_least` bytes or more reachable from `root` (frames of running
    coroutines included), not following classes, modules, functions or the event loop, through which
    everything is reachable."""
    skip = (type, types.ModuleType, types.FunctionType, types.CodeType, asyncio.AbstractEventLoop, str)
    found, seen, stack = [], set(), [root]
    while stack:
        item = stack.pop()
        if id(item) in seen or isinstance(item, skip):
            continue
        seen.add(id(item))
        if isinstance(item, bytes | bytearray | memoryview):
            if len(item) >= at_least:
                found.append(len(item))
            continue
        stack.extend(gc.get_referents(item))
    return found


async def test_a_queued_job_holds_its_file_names_and_reads_the_bytes_from_disk_when_it_starts(
    make: Factory, openai: FakeOpenAI
):
    service, _ = await make(MAX_CONCURRENT_JOBS="1", MAX_JOBS_PER_USER="10")
    engine = service.engine
    openai.fail_always(Fault.HANG)
    running = await submit(service)
    await until(lambda: openai.post_count == 1)
    queued = [await submit(service, Live(), user=BOB) for _ in range(3)]
    assert engine.queued == 3
    stored = len(engine.files.read(running, "input-1.png"))  # PHOTO without its metadata
    # The running job has its input in memory (what the walk finds when there is something to find)...
    assert stored in large_bytes(engine._jobs[running])
    # ...a waiting one only the names of its files, whatever else it keeps (its progress message).
    for job_id in queued:
        assert large_bytes(engine._jobs[job_id]) == []
    # What is on disk when it starts is what is sent: swap the next one's stored input for a smaller
    # image of the same size and kind.
    with Image.open(io.BytesIO(PHOTO)) as image:
        swapped = io.BytesIO()
        image.convert("L").save(swapped, "PNG")
    engine.files.write(queued[0], {"input-1.png": swapped.getvalue()})
    openai.clear_faults()
    await service.cancel(running, actor_id=ALICE, can_manage=False)
    for job_id in queued:
        await wait_state(service, job_id, "delivered")
    sent = [r.images[0] for r in openai.requests if r.method == "POST"][1:]
    assert [(f.size, f.mode) for f in sent[:1]] == [(len(swapped.getvalue()), "L")]
    assert [f.size for f in sent[1:]] == [stored, stored]
    # Ended jobs leave nothing in the engine's memory (their inputs stay on disk for Retry).
    await until(lambda: engine.in_flight == 0)
    assert (engine._jobs, engine._waiting, engine._redeliveries) == ({}, [], {})
    assert all(engine.files.exists(job_id, ["input-1.png"]) for job_id in queued)


async def test_a_command_waiting_for_an_intake_turn_is_turned_away_once_the_engine_stops(make: Factory):
    service, _ = await make()
    engine = service.engine
    engine.intake_turns = IntakeTurns(1)
    holding, done = asyncio.Event(), asyncio.Event()

    async def first() -> None:
        async with engine.intake():
            holding.set()
            await done.wait()

    async def second() -> None:
        async with engine.intake():
            raise AssertionError("a turn after the shutdown began")

    held = asyncio.create_task(first())
    await holding.wait()
    waiting = asyncio.create_task(second())
    await until(lambda: engine.intake_turns.waiting == 1)
    await service.drain(0)
    done.set()
    await held
    with pytest.raises(ShuttingDown):
        await waiting  # before downloading anything
    assert (engine.intake_turns.inside, engine.intake_turns.waiting) == (0, 0)


# -- rules a mutation pass found untested: each test below fails if its rule is changed -----------


async def test_recovery_releases_what_it_cannot_resume_instead_of_queueing_or_polling_it(make: Factory):
    """A reserved job whose inputs are gone cannot run; a submitted job at a provider that cannot be
    followed after a restart, or with no provider job id to follow, cannot be polled; a stored result
    whose record is unusable cannot be delivered. Each is settled, never requeued or resumed."""
    service, _ = await make()
    storage, files = service.storage, service.engine.files
    prepared = await service.prepare(job())
    spec, blobs = await service._spec(prepared)
    ids = {}
    for name in ("reserved, no files", "submitted, not resumable", "submitted, no id", "bad record"):
        job_id = f"{len(ids) + 1:016x}"
        ids[name] = job_id
        await store_job(service, job_id, spec, blobs, files_expire_at="2026-11-22T12:00:00.000+00:00")
        await storage.ledger.reserve(job_id, GUILD, ALICE, prepared.reserve, starting_credits=1000)
    files.remove(ids["reserved, no files"])
    await storage.jobs.mark_submitted(ids["submitted, not resumable"], "openai", "resp_1")
    await storage.jobs.set_job_state(ids["submitted, no id"], "submitted", provider="wavespeed")
    record = {"files": [], "provider": "openai", "quality": "low", "size": "1024x1024", "charged": "7"}
    await storage.jobs.set_job_state(ids["bad record"], "completed", result=json.dumps(record))
    await service.drain(0)

    later, recorder = await make()
    counts = await later.engine.recover()
    assert (counts["requeued"], counts["resumed"], counts["delivering"]) == (0, 0, 0)
    assert (counts["released"], counts["quarantined"]) == (3, 1)
    codes = {}
    for name, job_id in ids.items():
        row = await later.storage.jobs.get_job(job_id)
        codes[name] = row.error_code
        assert await kinds(later, job_id) == ["reserve", "release"]
    assert codes == {
        "reserved, no files": "restart_before_start",
        "submitted, not resumable": "restart_outcome_unknown",
        "submitted, no id": "restart_outcome_unknown",
        "bad record": "quarantined",
    }
    told = dict(await until(lambda: len(recorder.notices) == 4 and recorder.notices))
    assert "before your edit could start" in told[ids["reserved, no files"]]
    assert_books_balance(later.settings.data_dir)


async def test_a_job_whose_one_provider_id_an_older_release_stored_with_a_comma_is_released_not_polled(
    make: Factory, wavespeed: FakeWaveSpeed
):
    """Releases before provider ids were checked recorded an id with a comma whole; the comma that
    joins a job's ids split it on resume into two ids the provider never gave, and both were polled.
    More ids than the job's images is no list of its calls: the job is released, never polled or sent
    again."""
    service, _ = await make()
    prepared = await service.prepare(job())
    spec, blobs = await service._spec(prepared)
    assert spec.count == 1
    job_id = "00000000000000c1"
    await store_job(service, job_id, spec, blobs, files_expire_at="2026-11-22T12:00:00.000+00:00")
    await service.storage.ledger.reserve(job_id, GUILD, ALICE, prepared.reserve, starting_credits=1000)
    await service.storage.jobs.mark_submitted(job_id, "wavespeed", "task-7,b")  # as an older release did
    await service.drain(0)

    later, _ = await make()
    counts = await later.engine.recover()
    assert (counts["resumed"], counts["released"]) == (0, 1)
    row = await later.storage.jobs.get_job(job_id)
    assert row is not None and row.error_code == "restart_outcome_unknown"
    assert wavespeed.requests == []  # no poll of "task-7" or "b", and no new submit
    assert await kinds(later, job_id) == ["reserve", "release"]


async def test_the_sweep_keeps_a_live_jobs_files_and_removes_an_ended_jobs_without_a_retention_date(
    make: Factory,
):
    """A live job's folder is kept whatever its date says (another process may run it, or its result
    waits to be posted again); an ended job's folder with no retention date has nothing to keep it."""
    service, _ = await make()
    prepared = await service.prepare(job())
    spec, blobs = await service._spec(prepared)
    live, ended = "0000000000000001", "0000000000000002"
    await store_job(service, live, spec, blobs, files_expire_at="2000-01-01T00:00:00.000+00:00")
    await store_job(service, ended, spec, blobs)
    await service.storage.jobs.set_job_state(ended, "failed", error_code="x")
    assert await service.engine.sweep() == 1
    assert service.engine.files.job_ids() == [live]


async def test_the_longest_durations_the_settings_allow_still_run_edits_and_the_sweep(make: Factory):
    """The ceilings in bot/config.py keep every date they make in range (larger values overflowed)."""
    service, _ = await make(
        JOB_HISTORY_DAYS=str(MAX_DAYS),
        INPUT_RETENTION_HOURS=str(MAX_HOURS),
        RESULT_RETENTION_HOURS=str(MAX_HOURS),
        QUEUE_TIMEOUT_SECONDS=str(MAX_SECONDS),
        JOB_TIMEOUT_SECONDS=str(MAX_SECONDS),
    )
    job_id = await submit(service)
    await wait_state(service, job_id, "delivered")
    await service.engine.sweep()


async def test_a_charged_cancel_of_an_emulated_count_charges_only_the_calls_that_left(
    make: Factory, wavespeed: FakeWaveSpeed
):
    """Four images on a route without `n` are four calls; with the provider's limit at one, three
    still wait for a slot when the member cancels. The provider bills the one it took: the cancel
    charges one image ($0.02), not four."""
    service, job_id = await one_of_four_calls_out(make, wavespeed)
    answer = await service.engine.cancel(job_id, actor_id=ALICE, can_manage=False, quiet=False)
    assert answer.charged == 20
    assert wavespeed.submit_count == 1
    row = await service.storage.jobs.get_job(job_id)
    assert row is not None and (row.state, row.error_code) == ("cancelled", "cancelled_at_provider")
    assert (await service.storage.ledger.get_account(GUILD, ALICE)).balance == 1000 - 20


async def one_of_four_calls_out(make: Factory, wavespeed: FakeWaveSpeed) -> tuple[EditService, str]:
    """A 4-image job on a route without `n`, one call out and three waiting for the provider's one
    slot."""
    service, _ = await make(WAVESPEED_MAX_CONCURRENT="1")
    wavespeed.hold_results()
    job_id = await submit_ws_mini(service, 4)
    await until(lambda: wavespeed.submit_count == 1)
    await wait_state(service, job_id, "submitted")
    return service, job_id


async def submit_ws_mini(service: EditService, count: int) -> str:
    """A job of `count` images on WaveSpeed's ws-mini ($0.02 each, one call per image), submitted."""
    prepared = await service.prepare(job(model="ws-mini"))
    prepared = replace(prepared, chosen=replace(prepared.chosen, count=count), reserve=20 * count)
    return (await service.submit(prepared)).job_id


async def test_a_cut_off_jobs_owed_release_made_after_a_restart_counts_the_calls_that_left(
    make: Factory, wavespeed: FakeWaveSpeed, monkeypatch: pytest.MonkeyPatch
):
    """The release of a job cut off with one call of four out kept failing, and the process stopped:
    the next start made it from the note, which did not say how many calls had left, and counted all
    four images against the budgets ($0.08) where the first process counted the one ($0.02)."""
    monkeypatch.setattr(core_module, "SETTLE_RETRY_PAUSES", (0.0,))
    service, job_id = await one_of_four_calls_out(make, wavespeed)
    release_locked_for(service, job_id)
    make.clock.advance(service.settings.job_timeout_seconds + 31)
    await service.engine.watchdog_tick()
    await until(lambda: job_id in service.engine._owed)
    await service.drain(0)
    later, _ = await make()
    await later.engine.recover()
    await wait_state(later, job_id, "cancelled")
    absorbed = await later.storage.db.all("SELECT job_id, credits FROM absorbed_spend")
    assert [tuple(row) for row in absorbed] == [(job_id, 20)]
    assert wavespeed.submit_count == 1


async def two_calls_out_one_unanswered(make: Factory, wavespeed: FakeWaveSpeed) -> tuple[EditService, str]:
    """A 2-image job on a route without `n`: both calls left; the provider took one (its id is stored)
    and has not answered the other's submit yet."""
    service, _ = await make(WAVESPEED_MAX_CONCURRENT="2")
    wavespeed.hold_results()
    wavespeed.fail_next(WaveSpeedFault.HANG)
    job_id = await submit_ws_mini(service, 2)
    await until(lambda: wavespeed.submit_count == 2)
    await wait_state(service, job_id, "submitted")
    return service, job_id


async def test_a_job_resumed_after_a_crash_and_cancelled_is_charged_every_call_that_had_left(
    make: Factory, wavespeed: FakeWaveSpeed
):
    """The next start knew only the one id the provider had given: the cancel was charged one image,
    though both calls had reached the provider (the live process charges both)."""
    _, job_id = await two_calls_out_one_unanswered(make, wavespeed)
    later, _ = await make(WAVESPEED_MAX_CONCURRENT="2")  # the first process died; this one starts
    await later.engine.recover()
    await until(lambda: job_id in later.engine._jobs)
    answer = await later.engine.cancel(job_id, actor_id=ALICE, can_manage=False, quiet=False)
    assert (answer.charged, wavespeed.submit_count) == (40, 2)


async def test_a_stopped_job_released_at_the_next_start_counts_the_calls_that_had_left(
    make: Factory, wavespeed: FakeWaveSpeed
):
    """One call of four out when the bot stopped; its files were gone at the next start, which released
    it: all four images were counted against the budgets ($0.08) where one had left ($0.02)."""
    service, job_id = await one_of_four_calls_out(make, wavespeed)
    await service.drain(0)
    await asyncio.to_thread(service.engine.files.remove, job_id)
    later, _ = await make(WAVESPEED_MAX_CONCURRENT="1")
    await later.engine.recover()
    await wait_state(later, job_id, "cancelled")
    absorbed = await later.storage.db.all("SELECT job_id, credits FROM absorbed_spend")
    assert [tuple(row) for row in absorbed] == [(job_id, 20)]


async def test_a_job_whose_call_never_left_is_queued_again_at_the_next_start_and_runs(
    make: Factory, wavespeed: FakeWaveSpeed
):
    """A job waiting for the provider's one slot (`submitting`, its call not sent) when the process died:
    the next start released it ("restarted mid-submit") and counted its full price against the budgets,
    though no provider had it. It is queued again and runs once the slot is free, sent once."""
    service, first = await one_of_four_calls_out(make, wavespeed)
    second = (await service.submit(await service.prepare(job(model="ws-mini")))).job_id
    await wait_state(service, second, "submitting")
    later, _ = await make(WAVESPEED_MAX_CONCURRENT="1")  # the first process died; this one starts
    counts = await later.engine.recover()
    assert counts["requeued"] == 1 and counts["released"] == 0
    assert first in later.engine._jobs  # the job the provider had is followed, not released
    await later.engine.cancel(first, actor_id=ALICE, can_manage=False, quiet=True)  # frees the slot
    wavespeed.release_results()
    await wait_state(later, second, "delivered")
    assert wavespeed.submit_count == 2  # the first job's one call, then the second's, once
    absorbed = dict(
        tuple(row) for row in await later.storage.db.all("SELECT job_id, credits FROM absorbed_spend")
    )
    assert second not in absorbed
    assert await kinds(later, second) == ["reserve", "capture"]


async def test_a_job_started_by_the_next_start_is_priced_by_its_calls_like_any_other(
    make: Factory, openai: FakeOpenAI, wavespeed: FakeWaveSpeed
):
    """A job still queued at a stop, run by the next start: its row had no count yet, so the job was
    priced as "not counted" for its whole run, and a cancel with one call of four out charged four."""
    service, _ = await make(MAX_CONCURRENT_JOBS="1")
    openai.fail_always(Fault.HANG)
    await submit(service)  # holds the one slot
    await until(lambda: openai.post_count == 1)
    waiting = await submit_ws_mini(service, 4)
    await service.drain(0.05)
    assert await state(service, waiting) == "reserved"
    openai.clear_faults()
    wavespeed.hold_results()
    later, _ = await make(WAVESPEED_MAX_CONCURRENT="1")
    assert (await later.engine.recover())["requeued"] == 1
    await wait_state(later, waiting, "submitted")
    answer = await later.engine.cancel(waiting, actor_id=ALICE, can_manage=False, quiet=False)
    assert (answer.charged, wavespeed.submit_count) == (20, 1)


async def test_a_call_sent_again_after_a_refusal_is_counted_once_on_the_row(
    make: Factory, wavespeed: FakeWaveSpeed
):
    """A 429 the provider did not take, then the same call sent again: the row counted two calls, and a
    cancel after the next start charged two images for the one the provider had."""
    service, _ = await make(WAVESPEED_MAX_CONCURRENT="1")
    wavespeed.hold_results()
    wavespeed.fail_next(WaveSpeedFault.RATE_LIMITED, retry_after=1.5)
    job_id = await submit_ws_mini(service, 4)
    await until(lambda: wavespeed.submit_count == 2)
    await wait_state(service, job_id, "submitted")
    later, _ = await make(WAVESPEED_MAX_CONCURRENT="1")  # the first process died; this one starts
    await later.engine.recover()
    await until(lambda: job_id in later.engine._jobs)
    answer = await later.engine.cancel(job_id, actor_id=ALICE, can_manage=False, quiet=False)
    row = await later.storage.jobs.get_job(job_id)
    assert row is not None and (row.calls_sent, answer.charged) == (1, 20)


async def test_a_count_written_again_after_its_answer_was_lost_counts_the_call_once(
    make: Factory, wavespeed: FakeWaveSpeed, monkeypatch: pytest.MonkeyPatch
):
    """The write that counts a call committed and its answer was lost; the retry counted it again."""
    monkeypatch.setattr(core_module, "SETTLE_RETRY_PAUSES", (0.0,))
    real, lost = Jobs.check_sending, [True]

    async def committed_unseen(self: Jobs, job_id: str, owner: str, out: int) -> None:
        await real(self, job_id, owner, out)
        if lost[0]:
            lost[0] = False
            raise sqlite3.OperationalError("disk I/O error")  # committed; its answer lost

    monkeypatch.setattr(Jobs, "check_sending", committed_unseen)
    service, job_id = await one_of_four_calls_out(make, wavespeed)
    row = await service.storage.jobs.get_job(job_id)
    assert row is not None and row.calls_sent == 1 and not lost[0]


async def test_a_resumed_job_delivered_counts_the_call_whose_id_never_came_against_the_budgets(
    make: Factory, wavespeed: FakeWaveSpeed
):
    """Two calls out, the provider's answer to one lost with the process: the next start can follow only
    the other. The member pays for the image that came back; the call that cannot be followed may have
    been made and billed, and counted nothing (a process that lived would have counted it)."""
    _, job_id = await two_calls_out_one_unanswered(make, wavespeed)
    later, recorder = await make(WAVESPEED_MAX_CONCURRENT="2")  # the first process died; this one starts
    await later.engine.recover()
    wavespeed.release_results()
    await wait_state(later, job_id, "delivered")
    [(_, outcome)] = recorder.delivered
    assert (len(outcome.files), outcome.charged) == (1, 20)
    absorbed = await later.storage.db.all("SELECT job_id, credits FROM absorbed_spend")
    assert [tuple(row) for row in absorbed] == [(job_id, 20)]
