"""Shared pytest fixtures (helpers to build more of them: tests/fixtures.py)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from bot.storage import Storage
from bot.storage.connection import utcnow
from tests.fakes.atlascloud_server import FakeAtlas
from tests.fakes.discord import FakeDiscord
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.wavespeed_server import FakeWaveSpeed
from tests.fixtures import serving


@pytest.fixture
async def fake_discord() -> AsyncIterator[FakeDiscord]:
    """A started local fake Discord (REST + gateway + CDN on 127.0.0.1).

    Point the bot at it with ``discord.http.Route.BASE = fake_discord.api_base`` and log in with
    ``fake_discord.token``. Close the bot before this fixture tears down (a bot fixture that depends
    on this one does that automatically). Teardown fails the test if the bot hit a route the fake does
    not implement, or if the fake itself crashed while handling a request.
    """
    fake = FakeDiscord()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()
    assert not fake.unknown, f"the bot called routes the fake Discord does not implement: {fake.unknown}"
    assert not fake.server_errors, f"the fake Discord failed while handling requests: {fake.server_errors}"


# The fake provider servers on 127.0.0.1. The resellers finish a job on its first poll, so end-to-end
# tests do not wait; the provider contract tests declare their own `fake` with the vendor's defaults.
openai = serving(FakeOpenAI)
wavespeed = serving(FakeWaveSpeed, polls_to_finish=1)
atlas = serving(FakeAtlas, polls_to_finish=1)


@pytest.fixture
def storage_clock() -> Callable[[], dt.datetime]:
    """The clock the `storage` fixture reads; a test module overrides this fixture to inject its own."""
    return utcnow


@pytest.fixture
async def storage(tmp_path: Path, storage_clock: Callable[[], dt.datetime]) -> AsyncIterator[Storage]:
    """A migrated database in a real SQLite file under the test's temporary folder."""
    s = await Storage.open(tmp_path / "retouch.sqlite3", clock=storage_clock)
    yield s
    await s.close()
