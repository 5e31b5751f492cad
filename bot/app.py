"""The application's services, built once from the resources the entry point owns. No Discord here."""

from __future__ import annotations

import datetime as dt
import logging
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from bot.capabilities import check_routes
from bot.catalog import Catalog, load_catalog
from bot.config import SEGMIND_UPLOAD_URL, Settings
from bot.lifecycle import ModelLifecycle
from bot.observability.audit import AuditLog
from bot.observability.metrics import Metrics
from bot.providers.atlascloud import AtlasCloudProvider
from bot.providers.base import Provider
from bot.providers.http import RetryPolicy
from bot.providers.netguard import GuardedConnector
from bot.providers.oneminai import OneMinAIProvider
from bot.providers.openai import OpenAIProvider
from bot.providers.segmind import SegmindProvider
from bot.providers.wavespeed import SYNC_SUBMIT_TIMEOUT as WAVESPEED_SYNC_SUBMIT_TIMEOUT
from bot.providers.wavespeed import WaveSpeedProvider
from bot.services.access import AccessService
from bot.services.admin import AllotmentChange, CreditChange
from bot.services.diagnostics import DiagnosticsService
from bot.services.edits import MAX_IMAGES_PER_EDIT, EditService
from bot.services.history import EditHistory
from bot.services.moderation import SafetyCheck
from bot.services.policy import PolicyService
from bot.services.routes import RouteService
from bot.sharding import FleetPlace, ShardCoordinator, ShardSharing, StaticShards
from bot.storage import Storage
from bot.storage.fleet_slots import FleetSlots
from bot.storage.postgres import PostgresDatabase
from bot.storage.shard_leases import ShardLeases

if TYPE_CHECKING:
    import asyncpg

log = logging.getLogger(__name__)

SALT_FILE = "install_salt"


def utc_today() -> dt.date:
    """The real calendar (tests pass their own)."""
    return dt.datetime.now(dt.UTC).date()


def utc_now() -> dt.datetime:
    """The real clock (tests pass their own)."""
    return dt.datetime.now(dt.UTC)


ASYNC_SUBMIT_TIMEOUT = 60.0  # an async provider's submit only queues the job
# Provider calls one running job can have open at once: an emulated `count` (at most
# MAX_IMAGES_PER_EDIT images) makes one call per image, all in parallel.
CALLS_PER_JOB = MAX_IMAGES_PER_EDIT
# Connections beyond the running jobs' calls: `/diagnose` checks and cancel calls after a deadline.
SPARE_PROVIDER_CONNECTIONS = 8


@dataclass
class Services:
    """Every service of one process, built once by `build_services` (the composition root)."""

    settings: Settings
    catalog: Catalog
    storage: Storage
    providers: dict[str, Provider]
    edits: EditService
    policy: PolicyService
    access: AccessService  # the policy service's (approved servers, the operator)
    history: EditHistory  # edit chains for Edit again, Undo and /history
    metrics: Metrics = field(default_factory=Metrics)
    audit: AuditLog = field(default_factory=AuditLog)
    diagnostics: DiagnosticsService = field(init=False)
    routes: RouteService = field(init=False)  # the operator's view of the model routes

    def __post_init__(self) -> None:
        self.diagnostics = DiagnosticsService(
            storage=self.storage,
            providers=self.providers,
            lifecycle=self.edits.lifecycle,
            concurrency=self.edits.router.concurrency,
        )
        self.routes = RouteService(access=self.access, lifecycle=self.edits.lifecycle)


def mask_conventions(catalog: Catalog, provider: str) -> dict[str, str]:
    """{provider model id: mask convention} from the catalog's routes for `provider` that name one; the
    others keep the adapter's own (1min.ai's inpainter reads white = edit, the rest alpha)."""
    return {
        route.model: route.mask_convention
        for model in catalog.models.values()
        for route in model.routes
        if route.provider == provider and route.mask_convention is not None
    }


def provider_connection_limit(settings: Settings) -> int:
    """How many connections the providers' shared HTTP session may open at once (all hosts together).

    Sized so every running job's calls get a connection: MAX_CONCURRENT_JOBS (and the per-provider
    `<PREFIX>_MAX_CONCURRENT`) is what queues work, not the pool. With aiohttp's default pool of 100,
    calls beyond 100 in flight waited for each other in waves of the provider's latency, and that wait
    counts against each call's connect timeout (aiohttp's `connect` includes waiting for the pool). No
    per-host cap: one provider may serve every job.
    """
    return settings.max_concurrent_jobs * CALLS_PER_JOB + SPARE_PROVIDER_CONNECTIONS


def provider_session(settings: Settings, **kwargs: Any) -> aiohttp.ClientSession:
    """The HTTP session every provider adapter shares (create it inside the running event loop).

    Its connector checks peer addresses, so result URLs from provider answers can be fetched safely.
    """
    connector = GuardedConnector(limit=provider_connection_limit(settings), limit_per_host=0)
    return aiohttp.ClientSession(connector=connector, **kwargs)


def build_providers(
    settings: Settings, session: aiohttp.ClientSession, catalog: Catalog | None = None
) -> dict[str, Provider]:
    """One adapter per configured provider, all sharing the process's HTTP session.

    Mask conventions come from the catalog's routes (the admin's `CATALOG_PATH` when `catalog` is
    not given), so an admin can flip a provider's mask polarity without a release.
    """
    if catalog is None:
        catalog = load_catalog(settings.catalog_path)
    # A refused paid call is sent again by the router's adaptive limiter, not inside the adapter.
    policy = RetryPolicy(retry_paid_429=False)
    sync_timeout = settings.provider_call_timeout_seconds  # a call that waits for the image
    submit_timeout = min(ASYNC_SUBMIT_TIMEOUT, sync_timeout)  # a call that only queues the job
    built: dict[str, Provider] = {}
    for p in settings.providers:
        key = p.api_key.reveal()
        masks = mask_conventions(catalog, p.name)
        if p.name == "openai":
            built[p.name] = OpenAIProvider(session, key, p.base_url, policy=policy, call_timeout=sync_timeout)
        elif p.name == "atlascloud":
            built[p.name] = AtlasCloudProvider(
                session, key, p.base_url, policy=policy, call_timeout=submit_timeout, mask_conventions=masks
            )
        elif p.name == "wavespeed":
            # A sync submit is answered when the image is made or WaveSpeed's own wait (about 90 s) ends;
            # one cut off before then was billed, and its task id, which only that answer carries, lost.
            sync_submit_timeout = max(sync_timeout, WAVESPEED_SYNC_SUBMIT_TIMEOUT)
            built[p.name] = WaveSpeedProvider(
                session,
                key,
                p.base_url,
                sync_mode=p.sync_mode,
                policy=policy,
                call_timeout=sync_submit_timeout if p.sync_mode else submit_timeout,
                mask_conventions=masks,
            )
        elif p.name == "segmind":
            built[p.name] = SegmindProvider(
                session,
                key,
                p.base_url,
                upload_url=p.upload_url or SEGMIND_UPLOAD_URL,
                policy=policy,
                call_timeout=sync_timeout,
                mask_conventions=masks,
            )
        elif p.name == "oneminai":
            built[p.name] = OneMinAIProvider(
                session, key, p.base_url, policy=policy, call_timeout=sync_timeout, mask_conventions=masks
            )
    return built


def shard_sharing(
    settings: Settings,
    pool: asyncpg.Pool | None,
    *,
    owner: str | None = None,
    on_fleet: Callable[[FleetPlace], None] | None = None,
    listen: Callable[[str, Callable[[str], None]], None] | None = None,
) -> ShardSharing | None:
    """Which gateway shards this process serves. With PostgreSQL (`pool`), its share among every process
    on that database, under the name `owner` (the job engine's, so one name says which process holds a
    shard or a job), telling `on_fleet` how many processes are alive, and this one's place among them,
    after every round and (with `listen`, the database's `listen`) as soon as another joins or leaves,
    and running a round as soon as another frees shards or asks for some;
    otherwise all of them: SHARD_COUNT's, or when it is 0 (None here) Discord's
    recommended count, as discord.py picks it."""
    if pool is not None:
        lease = settings.shard_lease_seconds
        store = ShardLeases(pool, lease=dt.timedelta(seconds=lease), listen=listen)
        return ShardCoordinator(
            store,
            lease_seconds=lease,
            shard_count=settings.shard_count or None,
            owner=owner,
            on_fleet=on_fleet,
            hear_changes=store.hear_changes,
        )
    return StaticShards(settings.shard_count) if settings.shard_count else None


def split_with_fleet(services: Services) -> Callable[[FleetPlace], None]:
    """What `on_fleet` tells (`shard_sharing`): with `place.processes` live processes calling the
    providers with the same accounts, each takes its part of their ceilings (PROVIDER_MAX_CONCURRENT and
    the like; the remainder by `place.rank`), and of a dead process's jobs, which it takes over only while
    its clock agrees with the fleet's (`place.clock_apart`), and never from a live process whose clock
    does not (`place.clocks_apart`)."""
    limiter, engine = services.edits.router.limiter, services.edits.engine

    def share(place: FleetPlace) -> None:
        limiter.share_with(place.processes, place.rank)
        engine.share_with(place.processes)
        engine.hear_clock(place.clock_apart, place.clocks_apart)

    return share


async def start_services(services: Services, sharing: ShardSharing | None, *, recommended: int) -> None:
    """Start the job engine (recovery, lease rounds), once this process has joined the fleet: from its
    first job on it takes only its part of each provider's ceiling, and the others count it.
    `recommended`: Discord's recommended shard count (for a fleet that has none yet)."""
    if sharing is not None:
        if sharing.shared:  # the others' clocks are heard when it joins, or at its first round after
            services.edits.engine.expect_clock()
        await sharing.join(recommended=recommended)
    await services.edits.start()


def load_or_create_salt(data_dir: Path) -> bytes:
    """A per-install random salt so provider-side user ids cannot be mapped back to Discord ids.

    Created readable by the bot's user only, and atomically: written to a private temporary file,
    synced, then linked into place, so a crash never leaves a short salt and two processes starting
    together end up with the same one (the second link fails and it reads the first's).
    """
    path = data_dir / SALT_FILE
    if path.exists():
        return path.read_bytes()
    data_dir.mkdir(parents=True, exist_ok=True)
    salt = secrets.token_bytes(32)
    tmp = data_dir / f".{SALT_FILE}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(salt)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return path.read_bytes()
    finally:
        tmp.unlink(missing_ok=True)
    return salt


def build_services(
    settings: Settings,
    catalog: Catalog,
    storage: Storage,
    providers: dict[str, Provider],
    *,
    today: Callable[[], dt.date] = utc_today,
    now: Callable[[], dt.datetime] = utc_now,
) -> Services:
    """Every service, wired once. `today` is the calendar every shutdown date is compared with; `now`
    the clock a retired route's trial is measured by (GONE_ROUTE_RETRY_HOURS)."""
    metrics = Metrics()
    # The audit log only posts once the bot attaches its channel (and only with AUDIT_CHANNEL_ID).
    audit = AuditLog(storage)
    history = EditHistory(storage, retention_hours=settings.result_retention_hours)
    # Every route's declared capabilities, checked against its adapter once, here: every service then
    # reads the catalog as checked (a narrowed route's masked edits as narrowed).
    checked = check_routes(catalog, providers)
    catalog = checked.catalog
    lifecycle = ModelLifecycle(
        catalog,
        frozenset(providers),
        today,
        disabled=checked.disabled,
        narrowed=checked.narrowed,
        default_model_id=settings.default_model,
        store=storage.settings,
        on_event=audit.model_event,
        now=now,
        gone_retry_hours=settings.gone_route_retry_hours,
    )
    access = AccessService(settings=settings, storage=storage)
    policy = PolicyService(
        settings=settings,
        catalog=catalog,
        storage=storage,
        on_credit_change=_audit_credit_changes(audit),
        lifecycle=lifecycle,
        access=access,
        on_allotment_change=_audit_allotment_changes(audit),
    )
    edits = EditService(
        settings=settings,
        catalog=catalog,
        storage=storage,
        providers=providers,
        user_salt=load_or_create_salt(settings.data_dir),
        observers=[metrics, audit, history],
        # Command options > the user's /quality and /settings > server defaults > bot settings.
        defaults=policy.defaults_for,
        policy=policy,
        lifecycle=lifecycle,
    )
    edits.safety = _safety_check(settings, storage, providers, audit)
    if isinstance(storage.db, PostgresDatabase):
        # Several processes may share the providers' accounts: more of them than a ceiling has calls
        # take its slots from the database (bot.concurrency).
        edits.router.limiter.fleet_slots = FleetSlots(storage.db.pool, storage.db.listen)
    metrics.watch(
        in_flight=lambda: edits.in_flight,
        queued=lambda: edits.engine.queued,
        held=lambda: len(edits.engine.held_jobs()),
        processes=lambda: edits.engine.fleet or 1,  # told by the shard leases' rounds; alone until then
        clock_apart=lambda: edits.engine.clock_apart,
        clocks_off=lambda: len(edits.engine.clocks_off),
        circuits=edits.router.circuits,
        concurrency=edits.router.concurrency,
    )
    audit.watch_circuits(edits.router.circuits)
    return Services(
        settings,
        catalog,
        storage,
        providers,
        edits,
        metrics=metrics,
        audit=audit,
        policy=policy,
        access=access,
        history=history,
    )


def _safety_check(
    settings: Settings, storage: Storage, providers: dict[str, Provider], audit: AuditLog
) -> SafetyCheck:
    """The free moderation check before paid calls; without an OpenAI key it has nothing to ask, and
    the operator who asked for it is told (the README's table says so, but a log line is read)."""
    openai = providers.get("openai")
    if not isinstance(openai, OpenAIProvider) and settings.moderation != "off":
        log.warning(
            "MODERATION=%s needs OPENAI_API_KEY (its safety check is OpenAI's free moderation): "
            "without one, edits run with no safety check. Set OPENAI_API_KEY, or MODERATION=off",
            settings.moderation,
        )
    return SafetyCheck(
        openai.moderate if isinstance(openai, OpenAIProvider) else None,
        level_of=storage.settings.guild_moderation,
        default_level=settings.moderation,
        timeout=settings.moderation_timeout_seconds,
        report=audit.safety_event,
    )


def _audit_credit_changes(audit: AuditLog) -> Callable[[CreditChange], Awaitable[None]]:
    """Every admin grant/take/set goes to the audit channel with the acting admin."""

    async def post(change: CreditChange) -> None:
        await audit.credit_change(
            guild_id=change.guild_id,
            actor_id=change.actor_id,
            user_id=change.user_id,
            amount=change.moved,
            balance_after=change.balance,
            reason=f"{change.action}: {change.reason}",
            action=change.action,
        )

    return post


def _audit_allotment_changes(audit: AuditLog) -> Callable[[AllotmentChange], Awaitable[bool]]:
    """Every change of a server's allotment goes to the audit channel with the operator's name."""

    async def post(change: AllotmentChange) -> bool:
        return await audit.allotment_change(
            guild_id=change.guild_id, actor_id=change.actor_id, before=change.before, after=change.after
        )

    return post
