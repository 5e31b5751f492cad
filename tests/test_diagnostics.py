"""`/diagnose`: missing permissions named one by one, provider checks, database and catalog status."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.catalog import Catalog, load_catalog
from bot.concurrency import LimitState
from bot.lifecycle import ModelLifecycle, discover_once
from bot.providers.atlascloud import AtlasCloudProvider
from bot.providers.base import EditRequest, EditResult, ProviderHealth
from bot.providers.errors import ModelGone, ServiceUnavailable
from bot.providers.oneminai import OneMinAIProvider
from bot.providers.openai import OpenAIProvider
from bot.providers.segmind import SegmindProvider
from bot.providers.wavespeed import WaveSpeedProvider
from bot.services.diagnostics import DiagnosticsService, missing_permissions
from bot.storage import Storage
from bot.storage.connection import latest_schema_version
from cogs.diagnose import COLOUR_OK, _provider_line
from tests.catalogs import ModelSpec, model, route
from tests.catalogs import catalog as build_catalog
from tests.fakes.atlascloud_server import FakeAtlas
from tests.fakes.discord import DEFAULT_BOT_PERMISSIONS, FakeDiscord, FakeDiscordUsageError, Permission
from tests.fakes.openai_server import FakeOpenAI, Fault
from tests.fakes.segmind_server import FakeSegmind
from tests.harness import TEST_CATALOG, running_bot

TODAY = dt.date(2026, 11, 21)
ALL_NEEDED = (
    "View Channel",
    "Send Messages",
    "Send Messages in Threads",
    "Create Public Threads",
    "Attach Files",
    "Embed Links",
    "Read Message History",
)


class PlainProvider:
    """An adapter without the optional `check`."""

    name = "plain"

    async def edit(self, request: EditRequest) -> EditResult:
        raise NotImplementedError


class BrokenCheckProvider(PlainProvider):
    name = "broken"

    async def check(self) -> ProviderHealth:
        raise RuntimeError("bug in the adapter")


class SilentProvider(PlainProvider):
    """A check that never answers (a black-holed host)."""

    name = "silent"

    def __init__(self) -> None:
        self.never = asyncio.Event()

    async def check(self) -> ProviderHealth:
        await self.never.wait()
        raise AssertionError("unreachable")


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def service(
    storage: Storage, providers: dict, *, catalog: Catalog = TEST_CATALOG, **kw: Any
) -> DiagnosticsService:
    """The checks as production wires them: the lifecycle of a bot with `providers`, on TODAY."""
    lifecycle = ModelLifecycle(catalog, frozenset(providers), lambda: TODAY)
    return DiagnosticsService(storage=storage, providers=providers, lifecycle=lifecycle, **kw)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- permissions --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bits", "missing"),
    [
        (DEFAULT_BOT_PERMISSIONS, ()),
        (
            DEFAULT_BOT_PERMISSIONS & ~Permission.ATTACH_FILES & ~Permission.EMBED_LINKS,
            ("Attach Files", "Embed Links"),
        ),
        (DEFAULT_BOT_PERMISSIONS & ~Permission.SEND_MESSAGES_IN_THREADS, ("Send Messages in Threads",)),
        (0, ALL_NEEDED),
        (int(Permission.ADMINISTRATOR), ()),
        (int(Permission.VIEW_CHANNEL | Permission.READ_MESSAGE_HISTORY), ALL_NEEDED[1:6]),
    ],
)
def test_missing_permissions_are_named_one_by_one(bits: int, missing: tuple[str, ...]) -> None:
    assert missing_permissions(int(bits)) == missing


# -- providers ----------------------------------------------------------------------------------------


async def test_openai_check_reports_reachable_and_key_accepted(
    storage: Storage, openai: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    provider = OpenAIProvider(session, openai.api_key, openai.base_url)
    [status] = await service(storage, {"openai": provider}).check_providers()
    assert [(r.method, r.path) for r in openai.requests] == [("GET", "/v1/models")]
    assert openai.post_count == 0  # nothing billable
    assert (status.name, status.ok, status.reachable, status.authenticated) == ("openai", True, True, True)
    assert status.detail == "API key accepted"
    assert status.seconds is not None


async def test_openai_check_reports_a_refused_key_without_echoing_it(
    storage: Storage, openai: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    provider = OpenAIProvider(session, "sk-wrong-key-123456", openai.base_url)
    [status] = await service(storage, {"openai": provider}).check_providers()
    assert (status.ok, status.reachable, status.authenticated) == (False, True, False)
    assert status.detail == "API key refused (HTTP 401 invalid_api_key)"


async def test_openai_check_reports_an_unreachable_service(
    storage: Storage, session: aiohttp.ClientSession
) -> None:
    provider = OpenAIProvider(session, "sk-x", f"http://127.0.0.1:{closed_port()}/v1")
    [status] = await service(storage, {"openai": provider}).check_providers()
    assert (status.ok, status.reachable, status.authenticated) == (False, False, None)
    assert status.detail.startswith("unreachable (")


async def test_reseller_checks_say_what_they_prove_and_the_others_offer_none(
    storage: Storage, session: aiohttp.ClientSession
) -> None:
    nowhere = f"http://127.0.0.1:{closed_port()}"
    async with FakeAtlas() as atlas, FakeSegmind() as segmind:
        providers = {
            "atlascloud": AtlasCloudProvider(session, atlas.api_key, atlas.base_url),
            "segmind": SegmindProvider(session, "SG_0000000000000000", segmind.base_url),
            "wavespeed": WaveSpeedProvider(session, "ws-key", f"{nowhere}/api/v3"),
            "oneminai": OneMinAIProvider(session, "1min-key", f"{nowhere}/api"),
        }
        statuses = {s.name: s for s in await service(storage, providers).check_providers()}
        assert atlas.submit_count == 0 and segmind.post_count == 0  # nothing billable
    atlas_status = statuses["atlascloud"]
    assert (atlas_status.ok, atlas_status.reachable, atlas_status.authenticated) == (True, True, None)
    assert "API key not checked" in atlas_status.detail
    assert (statuses["segmind"].ok, statuses["segmind"].authenticated) == (False, False)
    assert statuses["segmind"].detail == "API key refused (HTTP 401 unauthorized)"
    for name in ("wavespeed", "oneminai"):
        assert (statuses[name].ok, statuses[name].detail) == (None, "no check available for this provider")


async def test_providers_without_a_check_broken_checks_and_silent_ones_are_reported(storage: Storage) -> None:
    providers = {"plain": PlainProvider(), "broken": BrokenCheckProvider(), "silent": SilentProvider()}
    statuses = {s.name: s for s in await service(storage, providers, provider_timeout=0.05).check_providers()}
    assert (statuses["plain"].ok, statuses["plain"].detail) == (None, "no check available for this provider")
    assert (statuses["broken"].ok, statuses["broken"].detail) == (False, "check failed (RuntimeError)")
    assert (statuses["silent"].ok, statuses["silent"].reachable) == (False, False)
    assert statuses["silent"].detail == "no answer within 0 s"


# -- database and catalog -----------------------------------------------------------------------------


async def test_database_status_shows_schema_version_and_writability(storage: Storage) -> None:
    status = await service(storage, {}).check_database()
    assert (status.schema_version, status.latest_version) == (
        latest_schema_version(),
        latest_schema_version(),
    )
    assert status.writable and status.ok
    await storage.close()
    closed = await service(storage, {}).check_database()
    assert not closed.writable and not closed.ok


def test_catalog_warnings_list_models_near_shutdown_and_retired(storage: Storage) -> None:
    def retiring(model_id: str, shutdown: str, **fields: str) -> ModelSpec:
        return model(model_id, qualities=["high"], price=0.1, shutdown=shutdown, **fields)

    catalog = build_catalog(
        retiring("soon", "2026-12-01"),
        retiring("gone", "2026-11-01", replacement="later"),
        retiring("later", "2027-06-01"),
    )
    openai_only = DiagnosticsService(
        storage=storage, providers={}, lifecycle=ModelLifecycle(catalog, frozenset({"openai"}), lambda: TODAY)
    )
    assert openai_only.model_warnings() == ("soon on openai retires in 10 days (2026-12-01)",)
    # Dead on its date with a live replacement: planned, so information, not a warning.
    assert openai_only.model_notes() == ("gone retired on 2026-11-01; edits go to later",)


async def test_a_model_gone_before_its_date_is_still_a_warning_and_one_without_a_replacement_a_note(
    storage: Storage,
) -> None:
    """Without a replacement set, a model retired on its date has its edits moved to the next live
    model (`fallbacks`), as planned: information naming it. Gone before its date is not planned."""
    catalog = build_catalog(
        model("early", qualities=["high"], price=0.1, shutdown="2027-01-01", replacement="new"),
        model("orphan", qualities=["high"], price=0.1, shutdown="2026-11-01"),
        model("new", qualities=["high"], price=0.1),
    )
    lifecycle = ModelLifecycle(catalog, frozenset({"openai"}), lambda: TODAY)
    early = catalog.get("early")
    # The provider says "gone" six weeks before the catalog's date: not what anyone planned.
    gone = ModelGone("404", provider="openai", status=404, code="model_not_found")
    await lifecycle.retire(early, early.routes[0], gone)
    diagnostics = DiagnosticsService(storage=storage, providers={}, lifecycle=lifecycle)
    # The operator also reads which route a "model gone" answer retired, why, and how to bring it back.
    assert diagnostics.model_warnings() == (
        "early is retired on every configured service (edits go to new)",
        'early on openai answered "model gone" and is retired (ModelGone status=404 code=model_not_found, '
        "2026-11-21 00:00 UTC); not tried again, or `/owner revive model:early provider:openai` "
        "brings it back",
    )
    assert diagnostics.model_warnings(operator=False) == (
        "early is retired on every configured service (edits go to new)",
    )
    assert diagnostics.model_notes() == ("orphan retired on 2026-11-01; edits go to new",)


async def test_someone_other_than_the_operator_sees_only_lines_about_whole_models(storage: Storage) -> None:
    """Which providers sell a model, and whether the operator's keys and model lists work, is the
    operator's business (as the image services' checks are): other admins see models retired."""
    catalog = build_catalog(
        model("soon", qualities=["high"], price=0.1, routes=[route("openai", shutdown="2026-12-01")]),
        model("gone", qualities=["high"], price=0.1, shutdown="2026-11-01"),
        model("kept", qualities=["high"], price=0.1, routes=["openai", "atlascloud"]),
    )
    lifecycle = ModelLifecycle(catalog, frozenset({"openai", "atlascloud"}), lambda: TODAY)
    kept = catalog.get("kept")
    gone = ModelGone("404", provider="atlascloud", status=404, code="model_not_found")
    await lifecycle.retire(kept, kept.routes[1], gone)

    async def refused() -> list[object]:
        raise ServiceUnavailable("HTTP 401 invalid_api_key", provider="openai", status=401)

    await discover_once(lifecycle, "openai", refused)
    diagnostics = DiagnosticsService(storage=storage, providers={}, lifecycle=lifecycle)

    admin = await diagnostics.diagnose(0, show_providers=False)
    # The model as a whole retires soon (its one route does): said without naming the provider.
    assert admin.catalog_warnings == ("soon retires in 10 days (2026-12-01); edits then go to kept",)
    operator = (await diagnostics.diagnose(0, show_providers=True)).catalog_warnings
    assert operator[0] == "soon on openai retires in 10 days (2026-12-01)"
    assert not [line for line in operator if "edits then go to" in line]  # the route line says it
    assert any("kept on atlascloud answered" in line for line in operator)
    assert operator[-1].startswith("could not read openai's model list (the service refused the key")


async def test_each_provider_shows_the_concurrency_limit_in_force(storage: Storage) -> None:
    limits = {"plain": LimitState("plain", limit=5, ceiling=64, in_flight=5, paused_for=2.5, refused_at=6)}

    diagnosis = await service(storage, {"plain": PlainProvider()}, concurrency=lambda: limits).diagnose(None)

    [status] = diagnosis.providers
    assert status.concurrency == limits["plain"]
    assert _provider_line(status).endswith(" · 5 at once (ceiling 64; 429 at 6; paused 3 s)")


async def test_diagnosis_combines_every_check(storage: Storage) -> None:
    diagnosis = await service(storage, {"plain": PlainProvider()}).diagnose(int(Permission.VIEW_CHANNEL))
    assert diagnosis.missing_permissions == ALL_NEEDED[1:]
    assert [p.name for p in diagnosis.providers] == ["plain"]
    assert diagnosis.database.ok
    # "plain" sells no catalog model: what /healthz reports as "no live model".
    assert diagnosis.catalog_warnings == (NO_MODEL_CAN_EDIT,)
    assert (await service(storage, {}).diagnose(None)).missing_permissions is None


class CountingProvider:
    name = "counting"

    def __init__(self) -> None:
        self.calls = 0

    async def check(self) -> ProviderHealth:
        self.calls += 1
        await asyncio.sleep(0.01)
        return ProviderHealth(reachable=True, authenticated=True, detail="API key accepted", ok=True)


async def test_provider_checks_are_throttled_however_often_diagnose_runs(storage: Storage) -> None:
    now = [1000.0]
    provider = CountingProvider()
    diagnostics = service(storage, {"counting": provider}, check_interval=60.0, monotonic=lambda: now[0])
    runs = await asyncio.gather(*(diagnostics.diagnose(0) for _ in range(5)))  # five servers at once
    again = await diagnostics.diagnose(0)
    assert provider.calls == 1
    assert all(d.providers == runs[0].providers for d in [*runs, again])
    now[0] += 61
    await diagnostics.diagnose(0)
    assert provider.calls == 2


async def test_provider_status_is_not_checked_for_someone_who_may_not_see_it(storage: Storage) -> None:
    provider = CountingProvider()
    diagnosis = await service(storage, {"counting": provider}).diagnose(0, show_providers=False)
    assert diagnosis.providers is None and provider.calls == 0


# -- the command, end to end --------------------------------------------------------------------------


async def test_diagnose_shows_an_admin_what_is_missing_in_the_channel(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
) -> None:
    without = DEFAULT_BOT_PERMISSIONS & ~Permission.ATTACH_FILES & ~Permission.EMBED_LINKS
    operator = {"OWNER_IDS": str(fake_discord.owner.id)}
    async with running_bot(fake_discord, openai, tmp_path, bot_permissions=without, env=operator) as world:
        [schema] = [c for c in fake_discord.synced_commands(world.guild) if c["name"] == "diagnose"]
        assert int(schema["default_member_permissions"]) == Permission.MANAGE_GUILD
        with pytest.raises(FakeDiscordUsageError):
            await fake_discord.slash(world.user, "diagnose", channel=world.channel)  # not an admin

        interaction = await fake_discord.slash(world.owner, "diagnose", channel=world.channel)
        [reply] = await fake_discord.wait_until(lambda: [m for m in interaction.followups if m.embeds])
    assert reply.ephemeral
    fields = {f["name"]: f["value"] for f in reply.embeds[0]["fields"]}
    assert fields["Bot permissions here"] == "❌ Attach Files\n❌ Embed Links"
    assert fields["Image services"].startswith("✅ **openai**: API key accepted")
    # OpenAI's starting limit under MAX_CONCURRENT_JOBS, the default ceiling.
    assert fields["Image services"].endswith(" · 32 at once (ceiling 64)")
    assert fields["Database"] == f"✅ schema {latest_schema_version()} of {latest_schema_version()}, writable"
    assert fields["Models"] == "✅ No model retires within 30 days."


async def test_diagnose_shows_provider_status_to_the_operator_only(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
) -> None:
    """The server's owner manages the server, not the bot: the operator (OWNER_IDS) is someone else."""
    env = {"OWNER_IDS": "4242"}
    async with running_bot(fake_discord, openai, tmp_path, env=env) as world:
        before = len(openai.requests)  # start-up reads the model list; /diagnose must add nothing
        interaction = await fake_discord.slash(world.owner, "diagnose", channel=world.channel)
        [reply] = await fake_discord.wait_until(lambda: [m for m in interaction.followups if m.embeds])
        asked = list(openai.requests[before:])
    fields = {f["name"]: f["value"] for f in reply.embeds[0]["fields"]}
    assert "operator only" in fields["Image services"] and "openai" not in fields["Image services"]
    assert asked == []  # nobody's keys were used for it


async def test_diagnose_is_green_on_a_fresh_install_whose_catalog_keeps_shut_down_models(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
) -> None:
    """The packaged catalog keeps gpt-image-1, -1-mini and -1.5 (shut down) so old picks move on:
    retired on their dates with a live replacement is expected, shown as information."""
    operator = {"OWNER_IDS": str(fake_discord.owner.id)}
    today = lambda: dt.date(2026, 12, 7)  # noqa: E731
    async with running_bot(
        fake_discord, openai, tmp_path, catalog=load_catalog(), today=today, env=operator
    ) as world:
        interaction = await fake_discord.slash(world.owner, "diagnose", channel=world.channel)
        [reply] = await fake_discord.wait_until(lambda: [m for m in interaction.followups if m.embeds])
    embed = reply.embeds[0]
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert fields["Models"].splitlines() == [
        "✅ No model retires within 30 days.",
        "ℹ️ gpt-image-1 retired on 2026-10-23; edits go to gpt-image-2",
        "ℹ️ gpt-image-1-mini retired on 2026-12-01; edits go to gpt-image-2.6-flare",
        "ℹ️ gpt-image-1.5 retired on 2026-12-01; edits go to gpt-image-2.6-flare",
    ]
    assert embed["color"] == COLOUR_OK.value


async def test_diagnose_shows_a_failed_model_list_to_the_operator_only(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
) -> None:
    openai.fail_always(Fault.MODELS_ERROR)  # the operator's OpenAI model list cannot be read
    async with running_bot(fake_discord, openai, tmp_path, env={"OWNER_IDS": "4242"}) as world:
        interaction = await fake_discord.slash(world.owner, "diagnose", channel=world.channel)
        [reply] = await fake_discord.wait_until(lambda: [m for m in interaction.followups if m.embeds])
        operator_sees = world.services.diagnostics.model_warnings()
    fields = {f["name"]: f["value"] for f in reply.embeds[0]["fields"]}
    assert any("could not read openai's model list" in line for line in operator_sees)
    assert fields["Models"] == "✅ No model retires within 30 days."
    assert reply.embeds[0]["color"] == COLOUR_OK.value


NO_MODEL_CAN_EDIT = "no model can edit: every catalog model is shut down or sold by no service here"


async def test_no_model_that_can_edit_is_a_warning_any_admin_sees(storage: Storage) -> None:
    """/healthz said "no live model" and members were refused and sent to /diagnose, which showed
    "No model retires within 30 days". Said to every admin, without naming the operator's services."""
    catalog = build_catalog(model("only", qualities=["high"], price=0.1))  # sold on openai only
    lifecycle = ModelLifecycle(catalog, frozenset({"segmind"}), lambda: TODAY)
    assert lifecycle.live_model_problem() == "no live model"
    diagnostics = DiagnosticsService(storage=storage, providers={}, lifecycle=lifecycle)
    assert (await diagnostics.diagnose(0, show_providers=False)).catalog_warnings == (NO_MODEL_CAN_EDIT,)
    assert diagnostics.model_warnings() == (NO_MODEL_CAN_EDIT,)


async def test_a_whole_model_retiring_soon_is_said_to_admins_who_do_not_see_its_routes(
    storage: Storage,
) -> None:
    """A model shutting down in 10 days on every route was told only in per-route lines, which name
    the operator's providers and are hidden from other admins: they read "nothing retires"."""
    catalog = build_catalog(
        model("soon", qualities=["high"], price=0.1, shutdown="2026-12-01", replacement="later"),
        model("later", qualities=["high"], price=0.1),
        model(
            "sold twice",
            qualities=["high"],
            price=0.1,
            routes=[route("openai", shutdown="2026-12-01"), "atlascloud"],
        ),
    )
    lifecycle = ModelLifecycle(catalog, frozenset({"openai", "atlascloud"}), lambda: TODAY)
    diagnostics = DiagnosticsService(storage=storage, providers={}, lifecycle=lifecycle)
    admin = await diagnostics.diagnose(0, show_providers=False)
    # Only the model whose every route ends; one still sold elsewhere after the date is not retiring.
    assert admin.catalog_warnings == ("soon retires in 10 days (2026-12-01); edits then go to later",)


@pytest.mark.parametrize("only", ["openai", "atlascloud", "wavespeed", "segmind", "oneminai"])
async def test_a_fresh_install_with_any_one_providers_key_shows_no_warning(
    storage: Storage, only: str
) -> None:
    """The packaged catalog keeps the shut-down 1.x line. With only a reseller's key, 1-mini's
    replacement (2.6 flare) is sold by no configured service, and it was called "retired on every
    configured service (no replacement set)" though its edits go to the default."""
    lifecycle = ModelLifecycle(load_catalog(), frozenset({only}), lambda: dt.date(2026, 12, 7))
    diagnostics = DiagnosticsService(storage=storage, providers={}, lifecycle=lifecycle)
    assert lifecycle.live_model_problem() is None
    assert diagnostics.model_warnings() == ()
    assert diagnostics.model_notes()  # the 1.x models, each saying where its edits go
