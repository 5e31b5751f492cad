"""`/diagnose` without Discord: permissions from bits, provider checks, database and catalog status.

The cog passes the interaction's `app_permissions` as an int and renders the plain dataclasses this
returns. Provider checks use the optional `check()` an adapter may implement (`CheckableProvider`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from bot.concurrency import LimitState
from bot.lifecycle import ModelLifecycle
from bot.observability.probes import WriteProbe
from bot.providers.base import CheckableProvider, Provider, ProviderHealth
from bot.storage import Storage
from bot.storage.connection import latest_schema_version

log = logging.getLogger(__name__)

PROVIDER_CHECK_TIMEOUT = 10.0  # the command has 15 minutes, but an admin waiting on it does not
# Provider checks call the vendors with the operator's keys: however often /diagnose is run (by any
# number of servers), they run at most once per this many seconds; later runs reuse the result.
PROVIDER_CHECK_INTERVAL = 60.0
DATABASE_CHECK_TIMEOUT = 5.0
ADMINISTRATOR = 1 << 3
# What Retouch needs in a channel, in the order Discord's settings list them (bit, name).
REQUIRED_PERMISSIONS: tuple[tuple[int, str], ...] = (
    (1 << 10, "View Channel"),
    (1 << 11, "Send Messages"),
    (1 << 38, "Send Messages in Threads"),
    (1 << 35, "Create Public Threads"),
    (1 << 15, "Attach Files"),
    (1 << 14, "Embed Links"),
    (1 << 16, "Read Message History"),
)


def missing_permissions(bits: int) -> tuple[str, ...]:
    """Names of the required permissions absent from `bits` (Administrator implies all of them)."""
    if bits & ADMINISTRATOR:
        return ()
    return tuple(name for bit, name in REQUIRED_PERMISSIONS if not bits & bit)


@dataclass(frozen=True)
class ProviderStatus:
    """One provider's check. `ok` is None when the adapter offers no check."""

    name: str
    ok: bool | None
    reachable: bool | None
    authenticated: bool | None
    detail: str
    seconds: float | None = None
    concurrency: LimitState | None = None  # the adaptive limit in force (None: not known here)


@dataclass(frozen=True)
class DatabaseStatus:
    """The database's schema version against the packaged migrations, and whether it takes writes."""

    schema_version: int
    latest_version: int
    writable: bool
    detail: str

    @property
    def ok(self) -> bool:
        return self.writable and self.schema_version == self.latest_version


@dataclass(frozen=True)
class Diagnosis:
    """Everything `/diagnose` shows. `missing_permissions` is None outside a server channel;
    `providers` is None when the asker may not see them (only the operator may), and then
    `catalog_warnings` holds only the lines about models as a whole. `catalog_notes` are models
    retired as planned, with a replacement: information, not a problem."""

    missing_permissions: tuple[str, ...] | None
    providers: tuple[ProviderStatus, ...] | None
    database: DatabaseStatus
    catalog_warnings: tuple[str, ...]
    catalog_notes: tuple[str, ...] = ()


class DiagnosticsService:
    """Runs the checks. One instance per app; holds no state between runs."""

    def __init__(
        self,
        *,
        storage: Storage,
        providers: Mapping[str, Provider],
        lifecycle: ModelLifecycle,
        provider_timeout: float = PROVIDER_CHECK_TIMEOUT,
        check_interval: float = PROVIDER_CHECK_INTERVAL,
        monotonic: Callable[[], float] = time.monotonic,
        concurrency: Callable[[], Mapping[str, LimitState]] | None = None,
    ) -> None:
        self.storage = storage
        self.providers = providers
        # The live view: route dates, OpenAI's model list and retired routes.
        self.lifecycle = lifecycle
        self._provider_timeout = provider_timeout
        self._probe = WriteProbe(storage)
        self._check_interval = check_interval
        self._monotonic = monotonic
        self._last: tuple[float, tuple[ProviderStatus, ...]] | None = None
        self._checking: asyncio.Task[tuple[ProviderStatus, ...]] | None = None
        self._concurrency = concurrency

    async def diagnose(self, app_permissions: int | None, *, show_providers: bool = True) -> Diagnosis:
        """All checks; provider and database checks run concurrently. With `show_providers=False` the
        providers are not checked at all (the asker is not the operator)."""
        if show_providers:
            providers, database = await asyncio.gather(self.recent_provider_checks(), self.check_database())
        else:
            providers, database = None, await self.check_database()
        return Diagnosis(
            missing_permissions=None if app_permissions is None else missing_permissions(app_permissions),
            providers=providers,
            database=database,
            catalog_warnings=self.model_warnings(operator=show_providers),
            catalog_notes=self.model_notes(),
        )

    def model_notes(self) -> tuple[str, ...]:
        """Models retired on their dates with a usable replacement (the packaged catalog keeps the
        shut-down ones so stored picks move on): expected, so never a warning."""
        return tuple(n.text for n in self.lifecycle.notices() if n.expected)

    def model_warnings(self, *, operator: bool = True) -> tuple[str, ...]:
        """Dead or soon-dead models and routes, unknown new models, and a failed model-list read.

        Someone other than the operator sees only the lines about models as a whole (retired,
        replaced): which providers sell what, and whether their keys and lists work, is the
        operator's business, like the image services' checks.
        """
        notices = [n for n in self.lifecycle.notices() if not n.expected]
        if not operator:
            return tuple(n.text for n in notices if n.model_level)
        notices = [n for n in notices if not n.summary]  # the route lines say it, naming the provider
        failed = tuple(
            f"could not read {r.provider}'s model list ({r.error}); using the catalog's dates"
            for r in self.lifecycle.discovery()
            if not r.ok
        )
        return (*(n.text for n in notices), *failed)

    async def recent_provider_checks(self) -> tuple[ProviderStatus, ...]:
        """The provider checks, run at most once per `check_interval` (concurrent askers share a run)."""
        if self._last is not None and self._monotonic() - self._last[0] < self._check_interval:
            return self._last[1]
        if self._checking is None or self._checking.done():
            self._checking = asyncio.ensure_future(self.check_providers())
        results = await asyncio.shield(self._checking)
        self._last = (self._monotonic(), results)
        return results

    async def check_providers(self) -> tuple[ProviderStatus, ...]:
        checks = [self._check_one(name, p) for name, p in sorted(self.providers.items())]
        statuses = await asyncio.gather(*checks)
        limits = self._concurrency() if self._concurrency is not None else {}
        return tuple(replace(s, concurrency=limits.get(s.name)) for s in statuses)

    async def _check_one(self, name: str, provider: Provider) -> ProviderStatus:
        if not isinstance(provider, CheckableProvider):
            return ProviderStatus(name, None, None, None, "no check available for this provider")
        started = time.monotonic()
        try:
            health: ProviderHealth = await asyncio.wait_for(provider.check(), self._provider_timeout)
        except TimeoutError:
            return ProviderStatus(
                name, False, False, None, f"no answer within {self._provider_timeout:.0f} s"
            )
        except Exception as exc:
            # A bug in an adapter's check must not hide the other results; details go to the log.
            log.warning("provider %s: health check failed", name, exc_info=True)
            return ProviderStatus(name, False, None, None, f"check failed ({type(exc).__name__})")
        return ProviderStatus(
            name,
            health.ok,
            health.reachable,
            health.authenticated,
            health.detail,
            time.monotonic() - started,
        )

    async def check_database(self) -> DatabaseStatus:
        """Schema version against the packaged migrations, and whether a write can start now."""
        latest = latest_schema_version()
        try:
            version = await asyncio.wait_for(self.storage.schema_version(), DATABASE_CHECK_TIMEOUT)
        except Exception as exc:
            log.warning("database check failed", exc_info=True)
            return DatabaseStatus(-1, latest, False, f"unreadable ({type(exc).__name__})")
        problem = await self._probe.problem(DATABASE_CHECK_TIMEOUT)
        if problem is not None:
            return DatabaseStatus(version, latest, False, problem)
        detail = "writable" if version == latest else f"writable, but schema {version} is not {latest}"
        return DatabaseStatus(version, latest, True, detail)
