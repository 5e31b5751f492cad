"""Helpers the tests share: fixtures for the fake provider servers, settings as an operator writes them,
and the database backends the storage tests run on.

tests/conftest.py declares the fixtures most tests use (`openai`, `wavespeed`, `atlas`, `storage`); a
module that needs a fake under another name or with other options declares it in one line with `serving`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.app import Services, build_providers, build_services
from bot.catalog import Catalog
from bot.config import PROVIDER_ENV, Settings, load_settings
from bot.providers.base import Provider
from bot.services.edits import EditService
from bot.services.policy import PolicyService
from bot.storage import Storage

MIGRATIONS = Path(__file__).parent.parent / "bot" / "storage" / "migrations"

TOKEN = "t" * 20  # a Discord token only the fake Discord would accept; services never send it

# A PostgreSQL server the tests may create and drop schemas in, e.g.
# postgresql://postgres@127.0.0.1:5432/test (.ci/run sets it when a server answers there).
TEST_DATABASE_URL = os.environ.get("RETOUCH_TEST_DATABASE_URL", "").strip()
NO_POSTGRES = (
    "PostgreSQL backend not tested: set RETOUCH_TEST_DATABASE_URL "
    "(e.g. postgresql://postgres@127.0.0.1:5432/test) to run it"
)
BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param(
        "postgresql", id="postgresql", marks=pytest.mark.skipif(not TEST_DATABASE_URL, reason=NO_POSTGRES)
    ),
]


@contextlib.asynccontextmanager
async def storages(url: str, count: int, **options: Any) -> AsyncIterator[list[Storage]]:
    """`count` Storages on the database at `url`, each with its own connections (its own pool on
    PostgreSQL), as separate bot processes have; all closed at the end. `options` go to `Storage.open`."""
    opened = [await Storage.open(url, **options) for _ in range(count)]
    try:
        yield opened
    finally:
        for storage in opened:
            await storage.close()


def serving(factory: Callable[..., Any], **options: Any) -> Any:
    """A fixture yielding a started `factory(**options)` fake server, closed when the test ends.

    Assign it to the fixture's name at module level: `fake = serving(FakeSegmind)`.
    """

    async def server() -> AsyncIterator[Any]:
        async with factory(**options) as fake:
            yield fake

    server.__doc__ = f"A started {getattr(factory, '__name__', 'fake server')} on 127.0.0.1."
    return pytest.fixture(server)


def provider_env(name: str, fake: Any) -> dict[str, str]:
    """The environment that points provider `name` (openai, atlascloud, ...) at `fake`."""
    prefix, _ = PROVIDER_ENV[name]
    env = {f"{prefix}_API_KEY": fake.api_key, f"{prefix}_BASE_URL": fake.base_url}
    if name == "segmind":
        env["SEGMIND_UPLOAD_URL"] = fake.upload_url
    return env


def settings_for(data_dir: Path, openai: Any = None, **env: str) -> Settings:
    """Settings for a test: a Discord token, `data_dir`, the fake `openai` if given, then `env`."""
    base = {"DISCORD_TOKEN": TOKEN, "DATA_DIR": str(data_dir)}
    if openai is not None:
        base.update(provider_env("openai", openai))
    return load_settings({**base, **env})


def wired_services(
    settings: Settings,
    catalog: Catalog,
    storage: Storage,
    providers: dict[str, Provider],
    *,
    approve: Iterable[int] = (),
    moderation: str = "off",
    today: Callable[[], dt.date] | None = None,
) -> Services:
    """Every service as production wires them (`bot.app.build_services`), for tests that drive a
    service without Discord.

    `approve`: the servers the operator approved (as ALLOWED_GUILD_IDS would). `moderation`: the
    safety check's level, off unless a test is about it (when on, the fake OpenAI is asked too).
    `today`: the calendar shutdown dates are compared with (the real one when None).
    """
    settings = dataclasses.replace(
        settings, allowed_guild_ids=settings.allowed_guild_ids | frozenset(approve), moderation=moderation
    )
    calendar = {} if today is None else {"today": today}
    return build_services(settings, catalog, storage, providers, **calendar)


def edit_service(
    settings: Settings,
    catalog: Catalog,
    storage: Storage,
    providers: dict[str, Provider],
    *,
    approve: Iterable[int],
    moderation: str = "off",
    today: Callable[[], dt.date] | None = None,
) -> EditService:
    """The job service as production wires it (lifecycle, server rules, access, observers, the safety
    check); the options are `wired_services`'s."""
    return wired_services(
        settings, catalog, storage, providers, approve=approve, moderation=moderation, today=today
    ).edits


def policy_service(
    settings: Settings, catalog: Catalog, storage: Storage, session: aiohttp.ClientSession
) -> PolicyService:
    """The policy service as production wires it: the lifecycle of the providers `settings` has keys
    for (which models are live, the default), the access gate and the audit hooks. The providers are
    built on `session` and never called; the calendar is `storage`'s clock; the servers approved are
    `settings`'."""
    providers = build_providers(settings, session, catalog)
    return wired_services(settings, catalog, storage, providers, today=lambda: storage.now().date()).policy


@contextlib.asynccontextmanager
async def upgraded(
    path: Path, migration: int, fill: Callable[[sqlite3.Connection], None]
) -> AsyncIterator[Storage]:
    """A SQLite file as the releases before `migration` left it (their schema, with what `fill`
    writes), then opened and brought up to date, as an upgrade does."""
    db = sqlite3.connect(path)
    for file in sorted(MIGRATIONS.glob("*.sql")):
        number = int(file.name[:4])
        if number < migration:
            db.executescript(f"BEGIN;\n{file.read_text('utf-8')}\nPRAGMA user_version = {number};\nCOMMIT;")
    fill(db)
    db.commit()
    db.close()
    storage = await Storage.open(path)
    try:
        assert await storage.migrate() >= migration
        yield storage
    finally:
        await storage.close()
