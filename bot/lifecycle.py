"""Which models and routes are live right now: the catalog's dates plus what the providers said.

The catalog (`bot.catalog`) is what we wrote down; this module is what is true today. A route is dead
when its provider is not configured, its shutdown date has passed (the catalog's, or the date OpenAI's
`GET /v1/models` announces), OpenAI's list no longer has the model, or the provider answered "model
gone" to an edit (`ModelGone`). A model is usable while one configured route of it is live; it is
dead only when all are. Run-time facts are persisted (`route_status`), so a restart does not ask a dead
route again, and every change is announced through `on_event` (the audit channel).

A "model gone" answer is not always right (an input failure worded like one: a 404 "Image not found"
for an upload), and no reseller publishes a model list that could bring its route back. So a route
retired by such an answer is tried again once `gone_retry_hours` have passed since it was retired
(`trial_due`): it is live again, in its place in the route order, until the provider answers. Only two
answers change anything: a result brings it back (`answered`, run beside the served job by `heard`), and
"model gone" again (`retire`) restarts its cool-off. Any other failure (a 5xx, a refused input, a
timeout) leaves the trial due and the next job asks again; a provider that keeps failing is the circuit
breaker's to skip. Either write is conditional on the stamp the process read, so of the processes that
saw one trial due only the first answer counts (and is announced); the others read it back. A trial
costs nobody anything: "model gone" means nothing ran, and the router moves the job to the model's next
route, or to another model, as on the first answer. While a trial is due the
route counts as live everywhere (the model is usable, a default may point at it, `/healthz` has a
live model): the trial is the question "is it back?", and one place answers it. The operator may
also bring a route back by hand (`revive`, `/owner revive`). Routes ended by a date or by OpenAI's
model list are not tried again: those sources are read again instead.

Without `DEFAULT_MODEL`, the default is the first catalog model that is usable here: catalog order
is preference, so a bot with only an Atlas Cloud key edits with what Atlas sells, and a shutdown
moves everyone who did not pick a model to the next live one. Nothing here knows about Discord.

Why `ModelLifecycle` is one class of ~600 lines: reading ("is this route live?"), learning ("this
route is gone") and trying again (a retired route's trial, a revive, another process's news) work on
the same facts and must stay consistent in memory and in storage; splitting them would put that
invariant in two places.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from bot import messages
from bot.catalog import RETIREMENT_WARNING_DAYS, Catalog, ModelEntry, Resolution, Route
from bot.errors import InvalidOptions
from bot.providers.errors import (
    ConnectionFailed,
    ModelGone,
    ProviderTimeout,
    RateLimited,
    ServerError,
    ServiceUnavailable,
)

log = logging.getLogger(__name__)

OPENAI = "openai"
# OpenAI's image models: an id with this prefix the catalog does not know is a new model to look at.
IMAGE_MODEL_PREFIX = "gpt-image-"
# OpenAI's model list is read at start-up and then this often.
DISCOVERY_INTERVAL_SECONDS = 24 * 3600
# What `/healthz` reports while no model is usable here: the bot is up but cannot edit.
NO_LIVE_MODEL_PROBLEM = "no live model"
# How long shutdown waits for a trial's answer still being stored and announced (as the audit log's).
FLUSH_TIMEOUT_SECONDS = 5.0

Event = Callable[[str], Awaitable[None]]
Today = Callable[[], dt.date]
Now = Callable[[], dt.datetime]


class ListedModel(Protocol):
    """One entry of a provider's model list (OpenAI `GET /v1/models`, see the OpenAI adapter)."""

    @property
    def id(self) -> str: ...

    @property
    def shutdown_date(self) -> dt.date | None: ...


Lister = Callable[[], Awaitable[Sequence[ListedModel]]]


@dataclass(frozen=True)
class RouteFacts:
    """What run time learned about one route (keyed by provider and the provider's model id)."""

    shutdown: dt.date | None = None  # announced by the provider's model list
    listed: bool | None = None  # in the provider's model list; None = never read
    gone_reason: str | None = None  # the provider answered "model gone" (error class, status, code)
    gone_at: dt.datetime | None = None  # when (UTC) it last did: its next trial counts from here

    @property
    def gone(self) -> bool:
        return self.gone_reason is not None


@dataclass(frozen=True)
class RouteState:
    """One configured route as the operator sees it (`ModelLifecycle.route_states`, `/owner routes`)."""

    model: str
    provider: str
    route_model: str  # the provider's id for the model
    live: bool
    # Why it is not live, or None: "disabled …", "retired …", "not in the model list", "shut down …".
    why: str | None = None
    gone_reason: str | None = None  # retired after a "model gone" answer: its class, status and code
    gone_at: dt.datetime | None = None
    trial_at: dt.datetime | None = None  # when it is tried again (None: never, or it is not retired)
    trial_due: bool = False  # retired, and live again for its trial


@dataclass(frozen=True)
class DiscoveryReport:
    """What one read of a provider's model list showed an admin."""

    provider: str
    ok: bool
    soon: tuple[str, ...] = ()  # "gpt-image-2 on openai shuts down on 2027-02-10 (in 20 days)"
    unknown: tuple[str, ...] = ()  # gpt-image-* ids the catalog does not know
    missing: tuple[str, ...] = ()  # catalog models the list does not have
    error: str | None = None


@dataclass(frozen=True)
class ModelNotice:
    """One admin-facing line about the catalog's models (see `ModelLifecycle.notices`)."""

    text: str
    # About a model as a whole (retired, replaced): what any server admin may see. False: about one
    # provider's route or model list, which runs on the operator's keys and is the operator's business.
    model_level: bool
    # A model that died on the dates the catalog (or its provider) set, with a usable replacement:
    # what was planned, kept in the catalog on purpose so old picks move on. Information, not a warning.
    expected: bool = False
    # A model-level summary of what the per-route lines already tell the operator (a model whose
    # every route retires soon): for the admins who do not see those lines.
    summary: bool = False


class RouteStore(Protocol):
    """The persistence this module needs (implemented by `bot.storage.settings.Settings`)."""

    async def route_status_rows(self) -> list[dict[str, object]]: ...

    async def put_route_status(self, provider: str, model: str, fields: dict[str, object]) -> None: ...

    async def replace_route_gone(
        self,
        provider: str,
        model: str,
        seen_gone_at: Collection[str],
        gone_at: str | None,
        gone_reason: str | None,
    ) -> bool: ...

    async def stored_models(self) -> set[str]: ...

    async def move_stored_model(
        self, dead: str, replacement: str | None, notice: str
    ) -> tuple[list[int], list[int]]: ...


@dataclass
class ModelLifecycle:
    """The live view of the catalog for the providers this bot has keys for.

    `today` is injected (tests walk one bot across a shutdown date); `store` persists what run time
    learns; `on_event` is awaited with one line for the audit channel whenever something changes.
    """

    catalog: Catalog
    configured: Collection[str]
    today: Today
    default_model_id: str | None = None
    store: RouteStore | None = None
    on_event: Event | None = None
    # The clock a "model gone" answer is stamped with and its trial measured by (UTC). None: midnight
    # (UTC) of `today`, which is enough for tests that only walk the calendar.
    now: Now | None = None
    # Hours after a "model gone" answer its route is tried again (GONE_ROUTE_RETRY_HOURS); 0 = never.
    gone_retry_hours: float = 0
    # Routes whose adapter refuses what the catalog declares (bot.capabilities, at start-up): why.
    disabled: Mapping[tuple[str, str], str] = field(default_factory=dict)
    # Routes whose masked edits the same check cut to fewer backgrounds than the catalog says: why.
    narrowed: Mapping[tuple[str, str], str] = field(default_factory=dict)
    _facts: dict[tuple[str, str], RouteFacts] = field(default_factory=dict)
    _discovery: dict[str, DiscoveryReport] = field(default_factory=dict)
    _last_tick: dt.date | None = None
    _dead: set[str] | None = None
    _first_tick: bool = True
    _none_live: bool | None = None  # what `live_model_problem` last saw (None: never looked)
    _writes: int = 0  # facts learned here so far (see `refresh`)
    # Writes of a route's facts still on their way to the store, by key (see `refresh`).
    _in_flight: dict[tuple[str, str], int] = field(default_factory=dict)
    # `answered` calls spawned off a served job's path (`heard`), awaited by `flush`.
    _background: set[asyncio.Task[bool]] = field(default_factory=set)

    # -- reading --------------------------------------------------------------------------------

    async def load(self) -> None:
        """Read what earlier runs learned (call once at start-up, after migrations)."""
        if self.store is None:
            return
        for key, facts in (await self._stored()).items():
            self._facts[key] = facts

    async def refresh(self) -> None:
        """Read the stored facts again: another process may have retired a route, or brought one back
        (a trial's answer, the operator's `/owner revive`). Called once a lease round with a shared
        database (bot.jobs.leases); a change is logged here and was announced where it happened."""
        if self.store is None:
            return
        writes = self._writes
        # A write begun before this read but not landed yet: memory already holds what it stores, and
        # the read may still see the row it replaces. Those keys are read again next round.
        busy = {key for key, n in self._in_flight.items() if n}
        stored = await self._stored()
        if writes != self._writes:
            return  # this process learned something while reading: the next round reads it back
        changed, retired = False, set()
        for key in set(stored) | set(self._facts):
            before, after = self._facts.get(key, RouteFacts()), stored.get(key, RouteFacts())
            if before == after or key in busy:
                continue
            changed = True
            self._facts[key] = after
            if before.gone != after.gone:
                state = "retired" if after.gone else "back"
                log.info("route %s/%s is %s (told by another process)", key[0], key[1], state)
                if after.gone:
                    retired.add(key)
        if changed:
            self._dead_told_elsewhere(retired)
            self.live_model_problem()

    def _dead_told_elsewhere(self, retired: Collection[tuple[str, str]]) -> None:
        """Models dead now because another process retired one of their routes (`retired`) count as
        already seen by the daily tick: the process that learned it announces the model retired, not
        every process of the fleet. Only those: a model that died otherwise (its date passed) is still
        this process's to announce, and its stored defaults to move, at its next tick."""
        if self._dead is None or not retired:
            return
        self._dead |= {
            model_id
            for model_id in self._dead_now()
            if any(r.key in retired for r in self.catalog.models[model_id].routes)
        }

    def _dead_now(self) -> set[str]:
        # A model live only for a retired route's trial is still dead here: announced once, not again
        # each time a trial of it answers "model gone" (a day or more later).
        return {
            m.id
            for m in self.catalog.models.values()
            if not any(self.route_live(m, r) and not self.trial_due(r) for r in m.routes)
        }

    async def _stored(self) -> dict[tuple[str, str], RouteFacts]:
        assert self.store is not None
        facts = {}
        for row in await self.store.route_status_rows():
            shutdown, listed, gone_at = row.get("shutdown"), row.get("listed"), row.get("gone_at")
            facts[(str(row["provider"]), str(row["model"]))] = RouteFacts(
                shutdown=dt.date.fromisoformat(str(shutdown)) if shutdown else None,
                listed=None if listed is None else bool(listed),
                gone_reason=str(row["gone_reason"] or "gone") if gone_at else None,
                gone_at=_moment(str(gone_at)) if gone_at else None,
            )
        return facts

    def facts(self, route: Route) -> RouteFacts:
        return self._facts.get(route.key, RouteFacts())

    def _now(self) -> dt.datetime:
        if self.now is not None:
            return self.now()
        return dt.datetime.combine(self.today(), dt.time(), dt.UTC)

    def trial_at(self, route: Route) -> dt.datetime | None:
        """When a route retired by a "model gone" answer is tried again (None: not retired so, or
        never: GONE_ROUTE_RETRY_HOURS is 0)."""
        facts = self.facts(route)
        if not facts.gone or self.gone_retry_hours <= 0:
            return None
        # A row from before the stamp held a time (or none at all) counts from its day, or from now.
        since = facts.gone_at or self._now()
        return since + dt.timedelta(hours=self.gone_retry_hours)

    def trial_due(self, route: Route) -> bool:
        """Retired by a "model gone" answer, and its cool-off is over: live again until it answers."""
        at = self.trial_at(route)
        return at is not None and self._now() >= at

    def route_end(self, model: ModelEntry, route: Route) -> dt.date | None:
        """The first of the catalog's date and the provider's announced date for `route`."""
        dates = [d for d in (model.route_shutdown(route), self.facts(route).shutdown) if d is not None]
        return min(dates) if dates else None

    def route_live(self, model: ModelEntry, route: Route) -> bool:
        """Configured, not past its shutdown, still listed by its provider, and not retired by a "model
        gone" answer (or its trial is due)."""
        if route.provider not in self.configured or route.key in self.disabled:
            return False
        facts = self.facts(route)
        if (facts.gone and not self.trial_due(route)) or facts.listed is False:
            return False
        end = self.route_end(model, route)
        return end is None or self.today() < end

    def live_routes(self, model: ModelEntry) -> list[Route]:
        return [r for r in model.routes if self.route_live(model, r)]

    def usable(self, model: ModelEntry) -> bool:
        """Some configured route of the model is live today."""
        return any(self.route_live(model, r) for r in model.routes)

    def available(self) -> list[ModelEntry]:
        """Models a user can pick today, in catalog (preference) order."""
        return [m for m in self.catalog.models.values() if self.usable(m)]

    def default_model(self) -> ModelEntry:
        """`DEFAULT_MODEL` while it is usable, else the first usable catalog model."""
        if self.default_model_id and self.default_model_id in self.catalog.models:
            chosen = self.catalog.models[self.default_model_id]
            if self.usable(chosen):
                return chosen
            successor = self.successor(chosen)
            if successor is not None:
                return successor
        for model in self.catalog.models.values():
            if self.usable(model):
                return model
        raise InvalidOptions(messages.NO_LIVE_MODEL, code="no_live_model")

    def successor(self, model: ModelEntry) -> ModelEntry | None:
        """The first usable model along `model`'s replacement chain (None when the chain ends)."""
        seen = {model.id}
        current = model
        while current.replacement and current.replacement not in seen:
            current = self.catalog.get(current.replacement)
            seen.add(current.id)
            if self.usable(current):
                return current
        return None

    def fallbacks(self, model: ModelEntry) -> Iterator[ModelEntry]:
        """Where a job that did not pick `model` goes when `model` dies: its replacement chain, then
        the default, then the rest in catalog order (each usable, none twice)."""
        seen = {model.id}
        chain: list[ModelEntry] = []
        successor = self.successor(model)
        if successor is not None:
            chain.append(successor)
        if self.default_model_id in self.catalog.models:
            chain.append(self.catalog.models[self.default_model_id])
        chain.extend(self.catalog.models.values())
        for candidate in chain:
            if candidate.id not in seen and self.usable(candidate):
                seen.add(candidate.id)
                yield candidate

    def resolve(self, model_id: str, *, picked: bool) -> Resolution:
        """The model a job will use. A dead model moves to its replacement (with a notice); with no
        usable replacement, a job that did not pick it gets the default and one that did is refused."""
        asked = self.catalog.get(model_id)
        if self.usable(asked):
            return Resolution(asked, self._warning(asked))
        successor = self.successor(asked)
        if successor is not None:
            return Resolution(successor, messages.replaced(asked.name, successor.name))
        if picked:
            raise InvalidOptions(self.dead_message(asked), code="model_retired")
        default = self.default_model()
        return Resolution(default, messages.defaulted(asked.name, default.name))

    def choosable(self, model_id: str) -> ModelEntry:
        """A model a member or admin may choose to keep using (a default, an allowed model): known and
        usable today. A dead one is refused naming the replacement `resolve` would move a job to; saved,
        it would only be swapped for another model (or lock members out) at the next edit."""
        asked = self.catalog.get(model_id)
        if self.usable(asked):
            return asked
        text = messages.model_retired(asked.name, self._replacement(asked))
        raise InvalidOptions(text, code="model_retired")

    def _replacement(self, model: ModelEntry) -> tuple[str, str] | None:
        """(name, id) of the first usable model along `model`'s replacement chain."""
        successor = self.successor(model)
        return (successor.name, successor.id) if successor is not None else None

    def dead_message(self, model: ModelEntry, *, mid_run: bool = False) -> str:
        """User text for a picked model that no configured service sells any more."""
        return messages.model_gone(model.name, mid_run=mid_run, replacement=self._replacement(model))

    def _warning(self, model: ModelEntry) -> str | None:
        """Users who pick a model hear of its last live day from 30 days before it."""
        ends = [self.route_end(model, r) for r in self.live_routes(model)]
        if not ends or any(end is None for end in ends):
            return None
        last = max(end for end in ends if end is not None)
        if (last - self.today()).days <= RETIREMENT_WARNING_DAYS:
            return messages.retiring_on(model.name, f"{last:%Y-%m-%d}")
        return None

    def warnings(self) -> list[str]:
        """Admin-facing: dead routes and models (planned retirements included), and dates within the
        warning window."""
        return [notice.text for notice in self.notices()]

    def notices(self) -> list[ModelNotice]:
        """`warnings`, each marked whether it is about a model as a whole or about a provider, and
        whether it is a planned retirement (information) rather than something to look at."""
        out: list[ModelNotice] = []
        today = self.today()
        if not self.available():
            # What `/healthz` reports as "no live model", said to every admin (members refused an edit
            # are sent to /diagnose), without naming the operator's providers.
            out.append(
                ModelNotice(
                    "no model can edit: every catalog model is shut down or sold by no service here", True
                )
            )
        for model in self.catalog.models.values():
            configured = [r for r in model.routes if r.provider in self.configured]
            if not configured:
                continue
            if not self.usable(model):
                out.append(self._retired_notice(model, configured))
                # The operator is told which of its routes a "model gone" answer retired, and how to
                # bring one back (the model line names no provider).
                out.extend(
                    ModelNotice(self._gone_notice(model, r, f"{model.id} on {r.provider}"), False)
                    for r in configured
                    if self.facts(r).gone and r.key not in self.disabled
                )
                continue
            if (soon := self._retiring_notice(model, configured)) is not None:
                out.append(soon)
            for route in configured:
                facts, end = self.facts(route), self.route_end(model, route)
                where = f"{model.id} on {route.provider}"
                line = None
                if route.key in self.disabled:
                    line = f"{where} is disabled: {self.disabled[route.key]}"
                elif facts.gone:
                    line = self._gone_notice(model, route, where)
                elif facts.listed is False:
                    line = f"{where} is missing from {route.provider}'s model list"
                elif end is not None and today >= end:
                    line = f"{where} retired on {end:%Y-%m-%d}"
                elif end is not None and (end - today).days <= RETIREMENT_WARNING_DAYS:
                    line = f"{where} retires in {(end - today).days} days ({end:%Y-%m-%d})"
                if line is not None:
                    out.append(ModelNotice(line, False))
                if route.key in self.narrowed and self.route_live(model, route):
                    out.append(ModelNotice(f"{where} is narrowed: {self.narrowed[route.key]}", False))
        for report in self._discovery.values():
            out.extend(
                ModelNotice(f"{report.provider} lists a model the catalog does not know: {i}", False)
                for i in report.unknown
            )
        return out

    def _gone_notice(self, model: ModelEntry, route: Route, where: str) -> str:
        """A route a "model gone" answer retired: why, since when, when it is tried again, how to revive."""
        facts = self.facts(route)
        since = f", {facts.gone_at:%Y-%m-%d %H:%M} UTC" if facts.gone_at else ""
        if (otherwise := self._dead_otherwise(model, route)) is not None:
            return f'{where} answered "model gone" ({facts.gone_reason}{since}) and is {otherwise}'
        if self.trial_due(route):
            return f'{where} answered "model gone" ({facts.gone_reason}{since}) and is being tried again'
        at = self.trial_at(route)
        then = f"tried again from {at:%Y-%m-%d %H:%M} UTC" if at else "not tried again"
        revive = f"`/owner revive model:{model.id} provider:{route.provider}`"
        return (
            f'{where} answered "model gone" and is retired ({facts.gone_reason}{since}); '
            f"{then}, or {revive} brings it back"
        )

    def _retired_notice(self, model: ModelEntry, configured: Sequence[Route]) -> ModelNotice:
        """A dead model. Expected when every configured route ended on its date (the catalog's or
        the provider's announced one) and a replacement takes its edits; a warning when a route went
        before its date (the provider said "gone", or dropped it from its list) or nothing replaces it."""
        # Where its edits go: its replacement chain, else (a replacement no configured service sells)
        # the default or the next live model, as `fallbacks` moves them.
        target = next(self.fallbacks(model), None)
        ends = [self.route_end(model, route) for route in configured]
        dated = [end for end in ends if end is not None and self.today() >= end]
        if target is not None and len(dated) == len(ends):
            return ModelNotice(
                f"{model.id} retired on {max(dated):%Y-%m-%d}; edits go to {target.id}", True, expected=True
            )
        then = f"edits go to {target.id}" if target else "no model takes its edits"
        return ModelNotice(f"{model.id} is retired on every configured service ({then})", True)

    def _retiring_notice(self, model: ModelEntry, configured: Sequence[Route]) -> ModelNotice | None:
        """A live model whose every configured route ends within `RETIREMENT_WARNING_DAYS`: said about
        the model as a whole, so admins who may not see the per-route lines (which name the
        operator's providers) are told too."""
        today = self.today()
        ends = [self.route_end(model, route) for route in configured if self.route_live(model, route)]
        if not ends or any(end is None or (end - today).days > RETIREMENT_WARNING_DAYS for end in ends):
            return None
        last = max(end for end in ends if end is not None)
        target = next(self.fallbacks(model), None)  # never `model` itself
        then = f"edits then go to {target.id}" if target else "no model takes its edits after that"
        return ModelNotice(
            f"{model.id} retires in {(last - today).days} days ({last:%Y-%m-%d}); {then}", True, summary=True
        )

    def discovery(self) -> tuple[DiscoveryReport, ...]:
        return tuple(self._discovery.values())

    def live_model_problem(self) -> str | None:
        """`NO_LIVE_MODEL_PROBLEM` while no model is usable here (every edit is refused), else None.

        The running bot must say so, not only the member who tries: an ERROR is logged when this
        starts and an INFO when it ends, once per change however often it is asked (at start-up,
        at each tick and by every `/healthz` request).
        """
        none_live = not self.available()
        if none_live != self._none_live:
            if none_live:
                log.error(
                    "no model can edit: every catalog model is shut down, retired or not sold by the "
                    "configured providers (%s) as of %s; every edit is refused. Update the catalog "
                    "(CATALOG_PATH) or add a provider key, then restart.",
                    ", ".join(sorted(self.configured)) or "none",
                    self.today(),
                )
            elif self._none_live is not None:
                log.info("a model can edit again: %s", ", ".join(m.id for m in self.available()))
            self._none_live = none_live
        return NO_LIVE_MODEL_PROBLEM if none_live else None

    # -- learning -------------------------------------------------------------------------------

    async def tick(self) -> None:
        """Notice a date passing: models that died since the last look are announced and stored
        defaults pointing at them move. Cheap when nothing changed (one comparison per job)."""
        today = self.today()
        if today == self._last_tick:
            return
        self._last_tick = today
        dead = self._dead_now()
        newly = sorted(dead - self._dead) if self._dead is not None else []
        self._dead = dead
        for model_id in newly:
            await self._announce(f"🪦 {model_id} is now retired on every configured service.")
        if newly or self._first_tick:
            self._first_tick = False
            await self.move_stored_defaults()
        self.live_model_problem()

    async def retire(self, model: ModelEntry, route: Route, exc: ModelGone) -> bool:
        """The provider answered "model gone" for `route`: retire it until its trial (never, with
        `gone_retry_hours` 0). True when newly retired; a trial that answers "model gone" again only
        restarts the cool-off (logged, not announced a second time), unless another process answered
        the same trial first."""
        reason = f"{type(exc).__name__} status={exc.status} code={exc.code}"
        if self.facts(route).gone:
            if not self.trial_due(route):
                return False  # already known (a concurrent call's answer)
            if not await self._swap_gone(route, reason, self._now()):
                return False  # another process answered this trial first: its news is read back
            log.warning(
                'route %s/%s of %s still answers "model gone" on its trial (%s); tried again after %s',
                route.provider,
                route.model,
                model.id,
                reason,
                self.trial_at(route),
            )
        else:
            await self._learn(route, gone_reason=reason, gone_at=self._now())
            log.warning(
                "route %s/%s of %s retired: the provider says the model is gone (%s)",
                route.provider,
                route.model,
                model.id,
                reason,
            )
            await self._announce(
                f'🪦 {model.id} on {route.provider} answered "model gone"; that route is retired.'
            )
        await self.move_stored_defaults()
        self.live_model_problem()
        return True

    def heard(self, model: ModelEntry, route: Route) -> None:
        """`answered`, off the caller's path: the router calls this when a call on `route` delivered a
        result, on a served job's way, where a database write and an audit post must not hold a result
        the provider made (past the job's deadline, it would be thrown away). Decided here at once; the
        rest runs as a tracked task (`flush` waits for them). A route not on its trial costs nothing."""
        if not self.trial_due(route):
            return
        task = asyncio.get_running_loop().create_task(self.answered(model, route))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def flush(self, timeout: float = FLUSH_TIMEOUT_SECONDS) -> None:  # noqa: ASYNC109 - a bound
        """Wait (up to `timeout` s) for `heard`'s answers still being stored and announced, and cancel
        what is left (shutdown, tests). The route is stored before it is announced: a hung audit post
        loses only the post."""
        if not self._background:
            return
        _, left = await asyncio.wait(set(self._background), timeout=timeout)
        for task in left:
            task.cancel()
        if left:
            log.warning("gave up on %d trial answer(s) still being announced at shutdown", len(left))
            await asyncio.gather(*left, return_exceptions=True)

    async def answered(self, model: ModelEntry, route: Route) -> bool:
        """A call on `route` delivered a result. A route on its trial is back (persisted, announced):
        True. Only a result does this, and only "model gone" again (`retire`) restarts the cool-off:
        any other failure on a trial (a 5xx, a refused input, a timeout, a rate limit) changes nothing,
        and the next job asks again. A provider that keeps failing is the circuit breaker's
        (bot.routing.breaker), and a failure on one process must not undo a result on another.

        The write is conditional on the stamp read here: of processes that each saw the trial due, the
        first result brings it back and is announced; the others read that back, silently. Never
        raises: a failed write leaves the route retired here as in storage; its next trial asks."""
        if not (self.trial_due(route) and self.route_live(model, route)):
            return False
        try:
            back = await self._swap_gone(route, None, None)
        except Exception as error:  # the route stays retired here; its next trial asks again
            log.warning("could not store that route %s/%s is back: %s", *route.key, type(error).__name__)
            return False
        if not back:
            return False  # another process answered this trial first: what it stored is held here
        log.info(
            "route %s/%s of %s delivered a result on its trial; that route is back", *route.key, model.id
        )
        await self._announce(f"♻️ {model.id} on {route.provider} answered again; that route is back.")
        self.live_model_problem()
        return True

    async def revive(self, model_id: str, provider: str, *, actor_id: int) -> list[Route]:
        """The operator (`actor_id`) brings back `model_id`'s routes on `provider` that a "model gone"
        answer retired: logged and announced with who did it. Raises InvalidOptions when there is none."""
        model = self.catalog.get(model_id)
        routes = [r for r in model.routes if r.provider == provider and r.provider in self.configured]
        if not routes:
            raise InvalidOptions(messages.no_such_route(model.id, provider), code="no_such_route")
        retired = [r for r in routes if self.facts(r).gone]
        if not retired:
            raise InvalidOptions(messages.route_not_retired(model.id, provider), code="route_not_retired")
        # Cleared, a route dead for another reason would still never be asked: said, not pretended.
        reasons = [self._dead_otherwise(model, r) for r in retired]
        if all(reasons):
            raise InvalidOptions(
                messages.route_dead_otherwise(model.id, provider, str(reasons[0])),
                code="route_dead_otherwise",
            )
        retired = [r for r, why in zip(retired, reasons, strict=True) if why is None]
        for route in retired:
            was = self.facts(route).gone_reason
            await self._learn(route, gone_reason=None, gone_at=None)
            log.warning(
                "route %s/%s of %s brought back by hand by the operator %s (was: %s)",
                route.provider,
                route.model,
                model.id,
                actor_id,
                was,
            )
        await self._announce(f"♻️ {model.id} on {provider} was brought back by <@{actor_id}>.")
        self.live_model_problem()
        return retired

    def route_states(self) -> list[RouteState]:
        """Every configured route of every catalog model, in catalog order, with why it is not live."""
        return [
            self._route_state(model, route)
            for model in self.catalog.models.values()
            for route in model.routes
            if route.provider in self.configured
        ]

    def _dead_otherwise(self, model: ModelEntry, route: Route) -> str | None:
        """Why a configured route is not live whatever a "model gone" answer said (disabled at
        start-up, missing from its provider's list, past its date), or None. Such a route is never
        asked again: its trial, or a revive, would not bring it back."""
        facts, end = self.facts(route), self.route_end(model, route)
        if route.key in self.disabled:
            return f"disabled: {self.disabled[route.key]}"
        if facts.listed is False:
            return f"missing from {route.provider}'s model list"
        if end is not None and self.today() >= end:
            return f"shut down on {end:%Y-%m-%d}"
        return None

    def _route_state(self, model: ModelEntry, route: Route) -> RouteState:
        facts, live = self.facts(route), self.route_live(model, route)
        otherwise = self._dead_otherwise(model, route)
        why = otherwise
        if why is None and facts.gone:
            why = f'answered "model gone" ({facts.gone_reason})'
        return RouteState(
            model=model.id,
            provider=route.provider,
            route_model=route.model,
            live=live,
            why=why,
            gone_reason=facts.gone_reason,
            gone_at=facts.gone_at,
            trial_at=self.trial_at(route) if otherwise is None else None,
            trial_due=self.trial_due(route) and live,
        )

    async def apply_listing(self, provider: str, listing: Sequence[ListedModel]) -> DiscoveryReport:
        """Apply a provider's model list: its dates are kept beside the catalog's (the earlier ends the
        route, see `route_end`), a catalog model it does not list is unavailable there, new
        `gpt-image-*` ids and dates within 30 days are reported."""
        listed = {entry.id: entry for entry in listing}
        today = self.today()
        soon, missing, changes = [], [], []
        known: set[str] = set()
        for model in self.catalog.models.values():
            known.update((model.id, *model.snapshots))
            for route in model.routes:
                if route.provider != provider:
                    continue
                known.add(route.model)
                entry = listed.get(route.model)
                before = self.facts(route)
                if entry is None:
                    missing.append(model.id)
                    if before.listed is not False:
                        changes.append(f"{model.id} is no longer in {provider}'s model list")
                    await self._learn(route, listed=False)
                    continue
                if entry.shutdown_date != before.shutdown and entry.shutdown_date is not None:
                    changes.append(f"{provider} announces {model.id} shuts down on {entry.shutdown_date}")
                revived = before.gone and before.listed is not True
                if revived:
                    # OpenAI answers "does not exist or you do not have access" alike, and lists only
                    # what the key may use: a model back in the list is usable again. One it listed all
                    # along stays retired (else it would be retired and revived every day).
                    changes.append(f"{model.id} is in {provider}'s model list again; that route is back")
                gone, since = (None, None) if revived else (before.gone_reason, before.gone_at)
                await self._learn(
                    route, listed=True, shutdown=entry.shutdown_date, gone_reason=gone, gone_at=since
                )
                end = entry.shutdown_date
                if end is not None and 0 <= (end - today).days <= RETIREMENT_WARNING_DAYS:
                    soon.append(
                        f"{model.id} on {provider} shuts down on {end} (in {(end - today).days} days)"
                    )
        unknown = sorted(i for i in listed if i.startswith(IMAGE_MODEL_PREFIX) and i not in known)
        report = DiscoveryReport(provider, True, tuple(soon), tuple(unknown), tuple(sorted(set(missing))))
        self._discovery[provider] = report
        # Each new model is announced once, ever: it is remembered like a route (listed, no date).
        new_unknown = [i for i in unknown if (provider, i) not in self._facts]
        for model_id in new_unknown:
            await self._learn_key((provider, model_id), RouteFacts(listed=True))
        for line in (*changes, *soon, *(f"{provider} lists a new image model: {i}" for i in new_unknown)):
            await self._announce(f"🗓️ {line}")
        await self.move_stored_defaults()
        self.live_model_problem()
        return report

    def names_any_route(self, provider: str, listing: Sequence[ListedModel]) -> bool:
        """Whether `listing` names a model of one of `provider`'s routes (true when it has none)."""
        ids = {
            route.model
            for m in self.catalog.models.values()
            for route in m.routes
            if route.provider == provider
        }
        return not ids or any(entry.id in ids for entry in listing)

    def listing_failed(self, provider: str, error: str) -> DiscoveryReport:
        """A failed listing changes nothing but what `/diagnose` shows."""
        previous = self._discovery.get(provider)
        report = (
            replace(previous, ok=False, error=error)
            if previous
            else DiscoveryReport(provider, False, error=error)
        )
        self._discovery[provider] = report
        return report

    async def move_stored_defaults(self) -> int:
        """Point stored member and server defaults at dead models to their replacement (or back to
        the default), queueing a one-time notice for each member. Returns how many models moved."""
        if self.store is None:
            return 0
        moved = 0
        for model_id in sorted(await self.store.stored_models()):
            model = self.catalog.models.get(model_id)
            if model is None or self.usable(model):
                continue
            target = self.successor(model)
            notice = messages.default_moved(model.name, target.name if target else None)
            users, guilds = await self.store.move_stored_model(
                model.id, target.id if target else None, notice
            )
            moved += 1
            if users or guilds:
                await self._announce(
                    f"🔁 Stored defaults moved off {model.id} to {target.id if target else 'the default'}: "
                    f"{len(users)} member(s), {len(guilds)} server(s)"
                )
        return moved

    async def _learn(self, route: Route, **changes: object) -> None:
        await self._learn_key(route.key, replace(self.facts(route), **changes))  # type: ignore[arg-type]

    async def _learn_key(self, key: tuple[str, str], facts: RouteFacts) -> None:
        """Hold `facts` for `key` in memory at once and store them (see `_write`)."""

        async def put(stored: RouteFacts) -> bool:
            assert self.store is not None
            await self.store.put_route_status(
                key[0],
                key[1],
                {
                    "shutdown": stored.shutdown.isoformat() if stored.shutdown else None,
                    "listed": None if stored.listed is None else int(stored.listed),
                    "gone_at": _stamp(stored.gone_at) if stored.gone_at else None,
                    "gone_reason": stored.gone_reason,
                },
            )
            return True

        await self._write(key, facts, put)

    async def _swap_gone(self, route: Route, reason: str | None, at: dt.datetime | None) -> bool:
        """Restamp a route on its trial as gone again at `at`, or with None bring it back, only if its
        stored stamp is still the one held here. False when another process changed it first: its row
        is then read back into memory."""
        seen = self.facts(route).gone_at

        async def swap(stored: RouteFacts) -> bool:
            assert self.store is not None
            return await self.store.replace_route_gone(
                *route.key,
                _stored_forms(seen),
                _stamp(stored.gone_at) if stored.gone_at else None,
                stored.gone_reason,
            )

        return await self._write(route.key, replace(self.facts(route), gone_reason=reason, gone_at=at), swap)

    async def _write(
        self, key: tuple[str, str], facts: RouteFacts, store: Callable[[RouteFacts], Awaitable[bool]]
    ) -> bool:
        """Hold `facts` for `key` in memory at once (a concurrent call sees them) and `store` them.
        Memory holds what storage holds: a "model gone" moment to the second, as stored. A write that
        fails puts the old facts back, unless a later one replaced them meanwhile: memory must not keep
        what storage, a restart and the other processes do not have. A conditional write that changed
        nothing (`store` returned False: another process got there first) reads the stored row back.
        True when stored."""
        if facts.gone:
            facts = replace(facts, gone_at=_moment(_stamp(facts.gone_at or self._now())))
        before = self._facts.get(key)
        if (before or RouteFacts()) == facts:
            return True
        self._facts[key] = facts
        self._writes += 1  # a `refresh` reading meanwhile would put back what this replaces
        if self.store is None:
            return True
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        try:
            written = await store(facts)
            stored = None if written else (await self._stored()).get(key)
        except Exception:
            self._put_back(key, facts, before)
            raise
        finally:
            self._in_flight[key] -= 1
            if not self._in_flight[key]:
                del self._in_flight[key]
        if not written:  # another process got there first: what it stored replaces this
            self._put_back(key, facts, stored)
        return written

    def _put_back(self, key: tuple[str, str], facts: RouteFacts, other: RouteFacts | None) -> None:
        """Hold `other` for `key` instead of `facts`, unless a later write replaced them meanwhile."""
        if self._facts.get(key) != facts:
            return
        if other is None:
            self._facts.pop(key, None)
        else:
            self._facts[key] = other

    async def _announce(self, line: str) -> None:
        if self.on_event is None:
            return
        try:
            await self.on_event(line)
        except Exception as exc:  # the audit channel must never stop a job
            log.warning("could not announce a model change: %s", type(exc).__name__)


def _stamp(moment: dt.datetime) -> str:
    """A "model gone" moment as stored: ISO-8601 UTC to the second."""
    return moment.astimezone(dt.UTC).isoformat(timespec="seconds")


def _stored_forms(moment: dt.datetime | None) -> tuple[str, ...]:
    """How a `gone_at` read as `moment` may be stored: its stamp, or the bare day of older rows."""
    if moment is None:
        return ()
    stamp = _stamp(moment)
    midnight = moment.astimezone(dt.UTC).time() == dt.time()
    return (stamp, moment.astimezone(dt.UTC).date().isoformat()) if midnight else (stamp,)


def _moment(text: str) -> dt.datetime:
    """A stored `gone_at`: a stamp, or the bare day rows from before the stamp held a time (UTC)."""
    moment = dt.datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


# -- discovery --------------------------------------------------------------------------------------

DISCOVERY_TIMEOUT_SECONDS = 20.0  # a listing that hangs must not hold up start-up


def _why_unread(exc: Exception) -> str:
    """Why a model list could not be read, in /diagnose's words (the class name goes to the log)."""
    if isinstance(exc, ServiceUnavailable):
        return "the service refused the key or the account"
    if isinstance(exc, TimeoutError | ProviderTimeout):
        return "no answer in time"
    if isinstance(exc, ConnectionFailed | OSError):  # ConnectionError is an OSError
        return "the service could not be reached"
    if isinstance(exc, ServerError | RateLimited):
        return "the service is busy or failing"
    return "an answer it could not read (see the log)"


async def discover_once(lifecycle: ModelLifecycle, provider: str, lister: Lister) -> DiscoveryReport:
    """Read `provider`'s model list once and apply it. A failure changes nothing (logged)."""
    try:
        async with asyncio.timeout(DISCOVERY_TIMEOUT_SECONDS):
            listing = await lister()
    except Exception as exc:  # any failure: keep the catalog's view
        log.warning(
            "could not read %s's model list (%s); keeping the catalog's dates", provider, type(exc).__name__
        )
        return lifecycle.listing_failed(provider, _why_unread(exc))
    if not lifecycle.names_any_route(provider, listing):
        # A gateway at OPENAI_BASE_URL that lists only its chat models, or a key whose project sees
        # no image model: applied, it would mark every route unlisted and stop all editing, while a
        # real shutdown is caught by its date or by the provider's "model gone" answer anyway.
        log.warning(
            "%s's model list names none of the catalog's models for it; keeping the catalog's view",
            provider,
        )
        return lifecycle.listing_failed(provider, "lists none of the catalog's models")
    return await lifecycle.apply_listing(provider, listing)


async def discover_forever(
    lifecycle: ModelLifecycle,
    provider: str,
    lister: Lister,
    *,
    interval: float = DISCOVERY_INTERVAL_SECONDS,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Re-read the model list every `interval` seconds (the first read is `discover_once` at start)."""
    while True:
        await sleep(interval)
        await discover_once(lifecycle, provider, lister)
