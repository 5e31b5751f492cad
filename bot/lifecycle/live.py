"""`ModelLifecycle`: which models and routes are live right now, and what changes that.

See the package's docstring (`bot.lifecycle`) for the rules. The class reads (is this route live, which
model does a job get), learns (a date passed, a model list was read, a provider answered "model gone")
and tries again (a retired route's trial, a revive). Its facts are kept by its `RouteBook`
(`bot.lifecycle.facts`), which keeps memory and storage consistent; the operator's view of them is
`bot.lifecycle.views`, and reading a provider's model list is `bot.lifecycle.discovery`.

Why `ModelLifecycle` is one class of ~490 lines: reading, learning and trying again ask the same
questions (is a route live, is its trial due, is a model dead) of the same facts, and every change ends
with the same steps (announce, move stored defaults, say whether no model is left); split further, each
part would call back into the others for all of them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

from bot import messages
from bot.catalog import RETIREMENT_WARNING_DAYS, Catalog, ModelEntry, Resolution, Route
from bot.errors import InvalidOptions
from bot.lifecycle import views
from bot.lifecycle.discovery import IMAGE_MODEL_PREFIX, DiscoveryReport, ListedModel
from bot.lifecycle.facts import RouteBook, RouteFacts, RouteStore
from bot.lifecycle.views import ModelNotice, RouteState
from bot.providers.errors import ModelGone

# The package's one logger: its lines keep the name operators filter on (and tests read).
log = logging.getLogger("bot.lifecycle")

# What `/healthz` reports while no model is usable here: the bot is up but cannot edit.
NO_LIVE_MODEL_PROBLEM = "no live model"
# How long shutdown waits for a trial's answer still being stored and announced (as the audit log's).
FLUSH_TIMEOUT_SECONDS = 5.0

Event = Callable[[str], Awaitable[None]]
Today = Callable[[], dt.date]
Now = Callable[[], dt.datetime]


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
    _discovery: dict[str, DiscoveryReport] = field(default_factory=dict)
    _last_tick: dt.date | None = None
    _dead: set[str] | None = None
    _first_tick: bool = True
    _none_live: bool | None = None  # what `live_model_problem` last saw (None: never looked)
    # `answered` calls spawned off a served job's path (`heard`), awaited by `flush`.
    _background: set[asyncio.Task[bool]] = field(default_factory=set)
    # What run time learned about each route, in memory and in `store` (bot.lifecycle.facts).
    _book: RouteBook = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # `_now` is read at each stamp: tests set `now` after construction.
        self._book = RouteBook(self.store, self._now)

    # -- reading --------------------------------------------------------------------------------

    async def load(self) -> None:
        """Read what earlier runs learned (call once at start-up, after migrations)."""
        await self._book.load()

    async def refresh(self) -> None:
        """Read the stored facts again: another process may have retired a route, or brought one back
        (a trial's answer, the operator's `/owner revive`). Called once a lease round with a shared
        database (bot.jobs.leases); a change is logged (by the book) and was announced where it happened."""
        changed, retired = await self._book.refresh()
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

    def facts(self, route: Route) -> RouteFacts:
        return self._book.get(route.key)

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
        return views.notices(self)

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
                    "(CATALOG_PATH) or add a provider key, then restart; a route retired by a "
                    '"model gone" answer is tried again GONE_ROUTE_RETRY_HOURS later, or at once with '
                    "/owner revive.",
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
        `gone_retry_hours` 0). True when it retired the route or restarted its cool-off: a trial that
        answers "model gone" again only restarts the cool-off (logged, not announced a second time),
        unless another process answered the same trial first."""
        reason = f"{type(exc).__name__} status={exc.status} code={exc.code}"
        if self.facts(route).gone:
            if not self.trial_due(route):
                return False  # already known (a concurrent call's answer)
            if not await self._book.swap_gone(route.key, reason, self._now()):
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
            back = await self._book.swap_gone(route.key, None, None)
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
        reasons = [views.dead_otherwise(self, model, r) for r in retired]
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
        return views.route_states(self)

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
        new_unknown = [i for i in unknown if (provider, i) not in self._book]
        for model_id in new_unknown:
            await self._book.learn((provider, model_id), RouteFacts(listed=True))
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
        await self._book.learn(route.key, replace(self.facts(route), **changes))  # type: ignore[arg-type]

    async def _announce(self, line: str) -> None:
        if self.on_event is None:
            return
        try:
            await self.on_event(line)
        except Exception as exc:  # the audit channel must never stop a job
            log.warning("could not announce a model change: %s", type(exc).__name__)
