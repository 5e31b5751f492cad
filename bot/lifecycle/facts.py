"""What run time learned about each route, held in memory and in storage alike (`RouteBook`).

`ModelLifecycle` owns one book and reads it on every job; the book is the only thing that changes a
route's facts, so the invariant that memory holds what storage holds (and what a restart and the other
processes of a fleet will read) lives in this one class: a write is in memory at once, is put back when
storing it fails, and a conditional write another process beat is replaced by what that process stored.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field, replace
from typing import Protocol

# The package's one logger: its lines keep the name operators filter on (and tests read).
log = logging.getLogger("bot.lifecycle")

Key = tuple[str, str]  # a route's provider and the provider's model id


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


class RouteStore(Protocol):
    """The persistence this package needs (implemented by `bot.storage.settings.Settings`)."""

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
class RouteBook:
    """Every route's `RouteFacts`, in memory and in `store` (None: memory only, as in most tests).

    `now` stamps a "model gone" fact learned without a moment (the lifecycle's clock, read at each
    call: tests move it after construction).
    """

    store: RouteStore | None
    now: Callable[[], dt.datetime]
    _facts: dict[Key, RouteFacts] = field(default_factory=dict)
    _writes: int = 0  # facts learned here so far (see `refresh`)
    # Writes of a route's facts still on their way to the store, by key (see `refresh`).
    _in_flight: dict[Key, int] = field(default_factory=dict)

    def get(self, key: Key) -> RouteFacts:
        return self._facts.get(key, RouteFacts())

    def __contains__(self, key: Key) -> bool:
        return key in self._facts

    async def load(self) -> None:
        """Read what earlier runs learned (once at start-up, after migrations)."""
        if self.store is None:
            return
        for key, facts in (await self._stored()).items():
            self._facts[key] = facts

    async def refresh(self) -> tuple[bool, set[Key]]:
        """Read the stored facts again (see `ModelLifecycle.refresh`): whether any changed here, and
        the keys another process retired. A change is logged here and was announced where it happened."""
        if self.store is None:
            return False, set()
        writes = self._writes
        # A write begun before this read but not landed yet: memory already holds what it stores, and
        # the read may still see the row it replaces. Those keys are read again next round.
        busy = {key for key, n in self._in_flight.items() if n}
        stored = await self._stored()
        if writes != self._writes:
            return False, set()  # this process learned something while reading: the next round reads it back
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
        return changed, retired

    async def _stored(self) -> dict[Key, RouteFacts]:
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

    async def learn(self, key: Key, facts: RouteFacts) -> None:
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

    async def swap_gone(self, key: Key, reason: str | None, at: dt.datetime | None) -> bool:
        """Restamp a route on its trial as gone again at `at`, or with None bring it back, only if its
        stored stamp is still the one held here. False when another process changed it first: its row
        is then read back into memory."""
        seen = self.get(key).gone_at

        async def swap(stored: RouteFacts) -> bool:
            assert self.store is not None
            return await self.store.replace_route_gone(
                *key,
                _stored_forms(seen),
                _stamp(stored.gone_at) if stored.gone_at else None,
                stored.gone_reason,
            )

        return await self._write(key, replace(self.get(key), gone_reason=reason, gone_at=at), swap)

    async def _write(
        self, key: Key, facts: RouteFacts, store: Callable[[RouteFacts], Awaitable[bool]]
    ) -> bool:
        """Hold `facts` for `key` in memory at once (a concurrent call sees them) and `store` them.
        Memory holds what storage holds: a "model gone" moment to the second, as stored. A write that
        fails puts the old facts back, unless a later one replaced them meanwhile: memory must not keep
        what storage, a restart and the other processes do not have. A conditional write that changed
        nothing (`store` returned False: another process got there first) reads the stored row back.
        True when stored."""
        if facts.gone:
            facts = replace(facts, gone_at=_moment(_stamp(facts.gone_at or self.now())))
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

    def _put_back(self, key: Key, facts: RouteFacts, other: RouteFacts | None) -> None:
        """Hold `other` for `key` instead of `facts`, unless a later write replaced them meanwhile."""
        if self._facts.get(key) != facts:
            return
        if other is None:
            self._facts.pop(key, None)
        else:
            self._facts[key] = other


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
