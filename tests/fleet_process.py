"""One bot process of the real-process fleet tests, below Discord: `python -m tests.fleet_process N P`.

It builds its services the way `python -m bot` does (settings from the environment, its own database
pool, its own provider session, `build_services`), and starts them the way the bot's `setup_hook` and
gateway start do, less the gateway: it joins the fleet through the production shard-lease coordinator
(`bot.app.shard_sharing`, its count going to `split_with_fleet` as in `bot/__main__.py`), starts its
job engine (`start_services`: model discovery, recovery, job lease rounds), then runs the coordinator's
rounds with no gateway to hand shards to (it has no Discord to ask for a shard count: it offers one
shard, like a bot whose SHARD_COUNT is 1). It learns how many processes share the providers the way
production does: from those rounds. Then it speaks JSON lines with the parent on stdin/stdout:

1. it waits until its rounds count P live processes (every process of the fleet has joined), prepares
   N edits of the same member (options, images, price: no credits move yet; the member must hold one
   credit by then, or the price check refuses them) and prints
   `{"owner": ..., "per_job": ..., "code": ..., "fleet": P, "rank": R, "shards": [...]}`: its engine's
   name, the hold of one edit (None when N is 0), where it imported `bot` from, the fleet it counted,
   its place in it (the remainder of a provider ceiling goes by it) and the shards its coordinator
   holds;
2. it waits for commands, one a line (the parent's end, or a line it does not know, and it exits
   with 3):
   - `go`: it submits the N prepared edits at once, as N preview Run buttons would
     (`tests.live.run_prepared`), runs them to their end, prints `{"outcomes": [...], "delivered":
     [job ids]}` (an outcome is "ok", a refusal's code, or "failed" for a job that ended without a
     result), and stops;
   - `fire K`: the same for K edits prepared now, then it waits for the next command;
   - `round`: it waits for the end of a whole job lease round begun after the command (the round
     that shares open circuits), prints `{"circuits": {provider: state}}` and waits for the next;
   - `end`: it stops.
3. Stopping, it drains, leaves the fleet as a stopping bot does (shards, then membership), closes its
   session and pool, and exits 0.

The edits of `go` are prepared before the signal because preparing (reading and checking images) is CPU
work whose pace differs between processes on a shared machine: fired unprepared, the first process
through its images took every hold alone, before the others reached the ledger. Prepared, the holds of
all three processes meet in the database at once, which is the race the ledger's conditional UPDATE
settles.

Logs go to stderr (the parent keeps them in a file and shows their end when a child fails). SIGUSR1
writes every asyncio task's stack and every thread's there too: the parent sends it to a child that has
not exited in time, before it kills it, so a hang shows where it hung.
"""

from __future__ import annotations

import asyncio
import faulthandler
import json
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import bot
from bot.app import (
    build_providers,
    build_services,
    provider_session,
    shard_sharing,
    split_with_fleet,
    start_services,
)
from bot.catalog import load_catalog
from bot.config import load_settings
from bot.errors import RetouchError
from bot.jobs.engine import JobEngine
from bot.services.edits import EditJob, EditOptions, EditService, PreparedJob, Upload
from bot.sharding import FleetPlace, ShardCoordinator, ShardPlan
from bot.storage import Storage
from bot.storage.postgres import PostgresDatabase
from tests.live import NoResult, RecordingLive, run_prepared

GUILD, MEMBER, CHANNEL = 1, 2, 7
PHOTO = (Path(__file__).resolve().parent / "data" / "chelsea.png").read_bytes()
# At a fixed quality and size an edit is charged exactly what it holds, so no capture frees credits.
OPTIONS = EditOptions("make it a watercolour", quality="high", size="1024x1024")
GO, FIRE, ROUND, END = "go", "fire", "round", "end"
EXIT_NO_GO = 3
# A headless process has no gateway to ask for Discord's recommended shard count.
RECOMMENDED_SHARDS = 1


def edit() -> EditJob:
    """One `/edit` of the member with the test photo."""

    async def read() -> bytes:
        return PHOTO

    return EditJob(
        guild_id=GUILD,
        user_id=MEMBER,
        channel_id=CHANNEL,
        uploads=[Upload("image", "photo.png", len(PHOTO), read)],
        options=OPTIONS,
        upload_limit=10 * 1024 * 1024,
    )


def say(message: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def attempt(edits: EditService, prepared: PreparedJob, delivered: list[str]) -> str:
    """Run one prepared edit to its end: "ok" (its result was posted), a refusal's code, "failed" (it
    ended without a result: the provider failed, or no provider could be called), or what went wrong."""
    live = RecordingLive()
    try:
        await run_prepared(edits, prepared, live)
    except RetouchError as exc:
        return exc.code
    except NoResult:
        return "failed"
    except Exception as exc:  # reported, so the parent's count shows it beside the others
        logging.getLogger(__name__).exception("edit failed")
        return f"unexpected {type(exc).__name__}: {exc}"
    assert live.ticket is not None
    delivered.append(live.ticket.job_id)
    return "ok"


async def fire(service: EditService, prepared: list[PreparedJob]) -> None:
    """Submit `prepared` at once, run them to their end and report."""
    delivered: list[str] = []
    outcomes = await asyncio.gather(*(attempt(service, p, delivered) for p in prepared))
    say({"outcomes": outcomes, "delivered": delivered})


class Rounds:
    """The job engine's lease rounds as they begin and end (the production round, counted around)."""

    def __init__(self, engine: JobEngine) -> None:
        self.begun = self.ended = 0
        self._changed = asyncio.Condition()
        inner = engine.lease_round

        async def counted() -> dict[str, int]:
            self.begun += 1
            try:
                return await inner()
            finally:
                self.ended += 1
                async with self._changed:
                    self._changed.notify_all()

        engine.lease_round = counted  # type: ignore[method-assign]

    async def next_whole(self) -> None:
        """Wait until a round that begins after now has ended (rounds run one after another)."""
        after = self.begun
        async with self._changed:
            await self._changed.wait_for(lambda: self.ended > after)


class Fleet:
    """What this process hears from its shard-lease rounds: how many processes are live, and its place."""

    def __init__(self, share: Callable[[FleetPlace], None], expected: int) -> None:
        self.share = share
        self.expected = expected
        self.seen = 0
        self.rank: int | None = None
        self.complete = asyncio.Event()

    def heard(self, place: FleetPlace) -> None:
        self.share(place)  # the production split (bot.app.split_with_fleet)
        self.seen, self.rank = place.processes, place.rank
        if place.processes == self.expected:
            self.complete.set()


async def commands(service: EditService, rounds: Rounds, prepared: list[PreparedJob]) -> int:
    """Answer the parent's commands until `go` or `end`; the exit code."""
    while True:
        line = (await asyncio.to_thread(sys.stdin.readline)).split()
        if line == [GO]:
            await fire(service, prepared)
            return 0
        if len(line) == 2 and line[0] == FIRE and line[1].isdigit():
            await fire(service, [await service.prepare(edit()) for _ in range(int(line[1]))])
        elif line == [ROUND]:
            await rounds.next_whole()
            say({"circuits": service.router.circuits()})
        elif line == [END]:
            return 0
        else:
            return EXIT_NO_GO


async def no_gateway(plan: ShardPlan) -> None:
    """The shards the coordinator hands this process: there is no gateway to connect them to."""


async def serve(edits: int, processes: int) -> int:
    settings = load_settings()
    catalog = load_catalog(settings.catalog_path)
    storage = await Storage.open(settings.database)
    assert isinstance(storage.db, PostgresDatabase), "a fleet shares one PostgreSQL database"
    try:
        async with provider_session(settings) as session:
            services = build_services(settings, catalog, storage, build_providers(settings, session, catalog))
            service = services.edits
            fleet = Fleet(split_with_fleet(services), processes)
            sharing = shard_sharing(
                settings,
                pool=storage.db.pool,
                owner=service.engine.owner,
                on_fleet=fleet.heard,
                listen=storage.db.listen,
            )
            assert isinstance(sharing, ShardCoordinator)
            rounds = Rounds(service.engine)
            await start_services(services, sharing, recommended=RECOMMENDED_SHARDS)
            try:
                await sharing.start(no_gateway, recommended=RECOMMENDED_SHARDS)
                await fleet.complete.wait()
                prepared = [await service.prepare(edit()) for _ in range(edits)]
                per_job = prepared[0].reserve if prepared else None
                shards = sorted(sharing.plan.shard_ids)
                say(
                    {
                        "owner": service.engine.owner,
                        "per_job": per_job,
                        "code": bot.__file__,
                        "fleet": fleet.seen,
                        "rank": fleet.rank,
                        "shards": shards,
                    }
                )
                return await commands(service, rounds, prepared)
            finally:
                # What a stopping bot does: stop serving, drain, then leave the fleet (bot/client.py).
                await sharing.stop()
                await service.drain(0)
                await sharing.leave()
    finally:
        await storage.close()


def dump_stacks(_signal: int, _frame: object) -> None:
    """Every task of the running loop and every thread, to stderr (see the module docstring)."""
    print("== tasks", file=sys.stderr)
    try:
        tasks = asyncio.all_tasks()
    except RuntimeError:  # the loop is not running any more (asyncio.run is closing it)
        tasks = set()
    for task in tasks:
        task.print_stack(limit=12, file=sys.stderr)
    print("== threads", file=sys.stderr)
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    sys.stderr.flush()


def main() -> int:
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    signal.signal(signal.SIGUSR1, dump_stacks)
    return asyncio.run(serve(int(sys.argv[1]), int(sys.argv[2])))


if __name__ == "__main__":
    sys.exit(main())
