"""Resuming submit-then-poll jobs (`ResumableProvider`): Atlas Cloud and WaveSpeed against their fakes.

The provider's job id is reported before the first poll, and a later process (a new adapter on a new
HTTP session) can follow the same job to its result without submitting it again.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from PIL import Image

from bot.providers.atlascloud import AtlasCloudProvider
from bot.providers.base import EditRequest, ResumableProvider
from bot.providers.errors import ProviderJobFailed, ProviderTimeout, ServerError
from bot.providers.openai import OpenAIProvider
from bot.providers.wavespeed import WaveSpeedProvider
from tests.fakes.atlascloud_server import FakeAtlas
from tests.fakes.atlascloud_server import Fault as AtlasFault
from tests.fakes.wavespeed_server import FakeWaveSpeed
from tests.fakes.wavespeed_server import Fault as WaveFault
from tests.providers.helpers import FAST, FAST_POLLING, photo

MINI = "openai/gpt-image-1-mini/edit"

FakeServer = FakeAtlas | FakeWaveSpeed
Adapter = AtlasCloudProvider | WaveSpeedProvider


@pytest.fixture(params=["atlascloud", "wavespeed"])
async def server(request: pytest.FixtureRequest) -> AsyncIterator[FakeServer]:
    fake: FakeServer = FakeAtlas() if request.param == "atlascloud" else FakeWaveSpeed()
    async with fake:
        yield fake


def adapter(fake: FakeServer, session: aiohttp.ClientSession) -> Adapter:
    kw: dict[str, Any] = {"policy": FAST, "call_timeout": 5.0, "io_timeout": 5.0, **FAST_POLLING}
    if isinstance(fake, FakeAtlas):
        return AtlasCloudProvider(session, fake.api_key, fake.base_url, **kw)
    return WaveSpeedProvider(session, fake.api_key, fake.base_url, **kw)


def edit_request(fake: FakeServer, seconds: float = 20.0) -> EditRequest:
    # WaveSpeed's mini edit takes no size field (only "auto"); Atlas's takes concrete sizes only.
    size = "1024x1024" if isinstance(fake, FakeAtlas) else "auto"
    return EditRequest(
        images=(photo(),),
        prompt="a pencil sketch",
        model=MINI,
        size=size,
        deadline=time.monotonic() + seconds,
    )


def provider_ids(fake: FakeServer) -> list[str]:
    return list(fake.predictions if isinstance(fake, FakeAtlas) else fake.tasks)


class Accepted:
    """An `on_submitted` callback that records ids (and can fail, like a database write)."""

    def __init__(self, fake: FakeServer, *, fail: bool = False) -> None:
        self.fake = fake
        self.fail = fail
        self.ids: list[str] = []
        self.polls_before: list[int] = []
        self.event = asyncio.Event()

    async def __call__(self, job_id: str) -> None:
        self.ids.append(job_id)
        self.polls_before.append(self.fake.count("poll"))
        self.event.set()
        if self.fail:
            raise RuntimeError("the database is gone")


async def die_after_submit(fake: FakeServer, session: aiohttp.ClientSession) -> str:
    """Start an edit and kill it once the provider accepted it (a process dying mid-poll)."""
    accepted = Accepted(fake)
    edit = asyncio.create_task(adapter(fake, session).edit(edit_request(fake), on_submitted=accepted))
    await asyncio.wait_for(accepted.event.wait(), 10)
    edit.cancel()
    await asyncio.gather(edit, return_exceptions=True)
    return accepted.ids[0]


def test_the_submit_then_poll_adapters_are_resumable_and_openai_is_not() -> None:
    assert issubclass(AtlasCloudProvider, ResumableProvider)
    assert issubclass(WaveSpeedProvider, ResumableProvider)
    assert not issubclass(OpenAIProvider, ResumableProvider)


async def test_the_job_id_is_reported_before_the_first_poll(
    server: FakeServer, session: aiohttp.ClientSession
):
    accepted = Accepted(server)
    result = await adapter(server, session).edit(edit_request(server), on_submitted=accepted)
    assert accepted.ids == provider_ids(server) and accepted.polls_before == [0]
    assert result.request_id == accepted.ids[0] and result.images


def naming_the_job(fake: FakeServer) -> AtlasFault | WaveFault:
    """The fake's fault for a 5xx submit answer whose body names the job it created."""
    if isinstance(fake, FakeAtlas):
        return AtlasFault.SERVER_ERROR_NAMING_JOB
    return WaveFault.SERVER_ERROR_NAMING_TASK


async def test_a_5xx_submit_answer_that_names_the_created_job_is_accepted_and_not_followed(
    server: FakeServer, session: aiohttp.ClientSession
):
    """The job may exist at the provider (it may run and bill): never offered to another provider as
    if nothing had been created. Nor followed: an error answer's id may be stale or another
    request's, and polling it could deliver, and charge the member for, some other job's image."""
    server.fail_next(naming_the_job(server))
    accepted = Accepted(server)

    with pytest.raises(ServerError) as info:
        await adapter(server, session).edit(edit_request(server), on_submitted=accepted)

    assert info.value.accepted and not info.value.retryable_elsewhere
    assert info.value.job_id in provider_ids(server)
    assert accepted.ids == [] and server.count("poll") == 0
    assert server.submit_count == 1


@pytest.mark.parametrize(
    "job_id",
    [
        "pred\x00abc",  # PostgreSQL refuses a NUL in text: the id could not be recorded
        "pred_a,pred_b",  # read back from the row as two ids
        "pred abc",
        "../balance",  # polled, a path of its own
        "pred_abc\n",
    ],
)
async def test_a_job_id_that_could_not_be_recorded_or_polled_is_an_accepted_answer_without_one(
    server: FakeServer, session: aiohttp.ClientSession, job_id: str
):
    """As for a 2xx naming no job: the provider took it (it may bill), so it goes nowhere else and the
    member is not charged; nothing is recorded or polled."""
    server.next_ids.append(job_id)
    accepted = Accepted(server)

    with pytest.raises(ServerError, match="unusable") as info:
        await adapter(server, session).edit(edit_request(server), on_submitted=accepted)

    assert info.value.accepted and not info.value.retryable_elsewhere
    assert accepted.ids == [] and server.count("poll") == 0
    assert server.submit_count == 1


@pytest.mark.parametrize("job_id", ["pred_abc123", "0b7c1f0e-5a43-4c2b-9d7e-3f1a2b4c5d6e", "4f9a2c" * 5])
async def test_job_ids_as_the_providers_make_them_are_recorded_and_followed(
    server: FakeServer, session: aiohttp.ClientSession, job_id: str
):
    server.next_ids.append(job_id)
    accepted = Accepted(server)
    result = await adapter(server, session).edit(edit_request(server), on_submitted=accepted)
    assert accepted.ids == [job_id] and result.request_id == job_id


async def test_a_new_process_resumes_the_job_without_submitting_it_again(
    server: FakeServer, session: aiohttp.ClientSession
):
    server.hold_results()
    job_id = await die_after_submit(server, session)
    server.release_results()
    async with aiohttp.ClientSession() as later:
        result = await adapter(server, later).resume(job_id, edit_request(server))
    assert result.request_id == job_id
    assert Image.open(io.BytesIO(result.images[0].data)).size == (1024, 1024)
    assert server.submit_count == 1


async def test_a_resumed_job_that_failed_reports_an_accepted_failure(
    server: FakeServer, session: aiohttp.ClientSession
):
    server.fail_next(AtlasFault.JOB_FAILED if isinstance(server, FakeAtlas) else WaveFault.JOB_FAILED)
    server.hold_results()
    job_id = await die_after_submit(server, session)
    server.release_results()
    with pytest.raises(ProviderJobFailed) as info:
        await adapter(server, session).resume(job_id, edit_request(server))
    assert info.value.accepted and info.value.request_id == job_id


async def test_a_failing_id_callback_ends_the_edit_and_resume_stops_at_the_deadline(
    server: FakeServer, session: aiohttp.ClientSession
):
    server.hold_results()
    accepted = Accepted(server, fail=True)
    with pytest.raises(RuntimeError):
        await adapter(server, session).edit(edit_request(server), on_submitted=accepted)
    assert server.count("poll") == 0  # no polling for a job whose id could not be recorded
    with pytest.raises(ProviderTimeout) as info:
        await adapter(server, session).resume(accepted.ids[0], edit_request(server, seconds=0.2))
    assert info.value.accepted
    assert server.submit_count == 1
