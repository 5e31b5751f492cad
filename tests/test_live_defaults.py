"""A fresh install edits with no catalog edit: with the packaged catalog and only ONE provider key, the
default model is one that provider sells today, and an edit with every option left at its default
arrives — for each of the five providers, on today's date and years later.

The whole service stack runs (settings, adapters over real sockets, the packaged catalog, the job
engine, a SQLite file); only the provider is a local fake."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bot.app import build_providers, build_services, provider_session
from bot.catalog import load_catalog
from bot.services.edits import EditJob, EditOptions, Upload
from bot.storage import Storage
from tests.fakes.atlascloud_server import FakeAtlas
from tests.fakes.oneminai_server import FakeOneMin
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.segmind_server import FakeSegmind
from tests.fakes.wavespeed_server import FakeWaveSpeed
from tests.fixtures import provider_env, settings_for
from tests.live import RecordingLive, run_to_end

PHOTO = (Path(__file__).parent / "data" / "chelsea.png").read_bytes()


PROVIDERS: list[tuple[str, Callable[[], Any], str]] = [
    ("openai", FakeOpenAI, "gpt-image-2.6-flare"),
    ("atlascloud", FakeAtlas, "gpt-image-2"),
    ("wavespeed", FakeWaveSpeed, "gpt-image-2.6-flare"),
    ("segmind", FakeSegmind, "gpt-image-2"),
    ("oneminai", FakeOneMin, "gpt-image-2"),
]


@pytest.mark.parametrize(("name", "make_fake", "expected"), PROVIDERS, ids=[p[0] for p in PROVIDERS])
@pytest.mark.parametrize("today", [dt.date(2026, 12, 6), dt.date(2027, 3, 1), dt.date(2030, 6, 1)])
async def test_one_key_and_no_catalog_edit_is_enough_to_edit(
    name: str, make_fake: Callable[[], Any], expected: str, today: dt.date, tmp_path: Path
):
    async with make_fake() as fake:
        # The operator approved this server.
        settings = settings_for(tmp_path, METRICS_PORT="0", ALLOWED_GUILD_IDS="1", **provider_env(name, fake))
        catalog = load_catalog()  # the packaged one, unedited
        storage = await Storage.open(settings.database_path)
        try:
            async with provider_session(settings) as session:
                providers = build_providers(settings, session, catalog)
                assert list(providers) == [name]
                services = build_services(settings, catalog, storage, providers, today=lambda: today)
                await services.edits.start()
                live = RecordingLive()

                async def read() -> bytes:
                    return PHOTO

                job = EditJob(
                    guild_id=1,
                    user_id=2,
                    channel_id=3,
                    uploads=[Upload("image", "photo.png", len(PHOTO), read)],
                    options=EditOptions("make it a watercolour"),
                    upload_limit=25 * 1024 * 1024,
                )
                outcome = await run_to_end(services.edits, job, live)
                await services.edits.drain(1.0)
        finally:
            await storage.close()
    assert outcome.model_id == expected and outcome.provider == name
    assert live.ticket is not None
    assert [d.job_id for d in live.delivered] == [live.ticket.job_id] and outcome.files
    assert 0 < outcome.charged <= settings.starting_credits
