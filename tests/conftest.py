"""Shared pytest fixtures (helpers to build more of them: tests/fixtures.py).

Every test that takes `storage` (or `database_url`) runs once per database backend: SQLite, and
PostgreSQL when `RETOUCH_TEST_DATABASE_URL` names a server (otherwise that run is skipped, with the
reason). Those tests are the storage contract both backends keep. A test of one backend's own
machinery is marked `@pytest.mark.sqlite_only` and runs on SQLite alone.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from bot.storage import Storage
from bot.storage.connection import utcnow
from bot.storage.postgres import scratch_schema
from tests.fakes.atlascloud_server import FakeAtlas
from tests.fakes.discord import FakeDiscord
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.wavespeed_server import FakeWaveSpeed
from tests.fixtures import BACKENDS, NO_POSTGRES, TEST_DATABASE_URL, serving
from tests.harness import clear_of_midnight


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "database_url" in metafunc.fixturenames:
        only_sqlite = metafunc.definition.get_closest_marker("sqlite_only") is not None
        metafunc.parametrize("database_url", BACKENDS[:1] if only_sqlite else BACKENDS, indirect=True)


@pytest.fixture
async def fake_discord() -> AsyncIterator[FakeDiscord]:
    """A started local fake Discord (REST + gateway + CDN on 127.0.0.1).

    Point the bot at it with ``discord.http.Route.BASE = fake_discord.api_base`` and log in with
    ``fake_discord.token``. Close the bot before this fixture tears down (a bot fixture that depends
    on this one does that automatically). Teardown fails the test if the bot hit a route the fake does
    not implement, or if the fake itself crashed while handling a request.
    """
    await clear_of_midnight()  # see tests.harness: once a test, before any of its bots starts
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
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """Where this test's database lives: a SQLite file under the test's temporary folder, or a fresh
    PostgreSQL schema dropped after the test. A second `Storage.open(database_url)` stands in for
    another process on the same database."""
    if request.param == "sqlite":
        yield str(tmp_path / "retouch.sqlite3")
        return
    async with scratch_schema(TEST_DATABASE_URL) as url:
        yield url


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A fresh PostgreSQL schema for a test of that backend's own machinery (skipped without a server)."""
    if not TEST_DATABASE_URL:
        pytest.skip(NO_POSTGRES)
    async with scratch_schema(TEST_DATABASE_URL) as url:
        yield url


@pytest.fixture
async def storage(database_url: str, storage_clock: Callable[[], dt.datetime]) -> AsyncIterator[Storage]:
    """A migrated database (see `database_url`)."""
    s = await Storage.open(database_url, clock=storage_clock)
    yield s
    await s.close()
