"""One bot process of tests/test_fleet_acceptance.py, below Discord: `python -m tests.fleet_process N`.

It builds its services the way `python -m bot` does (settings from the environment, its own database
pool, its own provider session, `build_services`), starts them (model discovery, recovery, job lease
rounds), then speaks JSON lines with the parent on stdin/stdout:

1. it prepares N edits of the same member (options, images, price: no credits move yet; the member
   must hold one credit by then, or the price check refuses them) and prints
   `{"owner": ..., "per_job": ..., "code": ...}`: its engine's name, the hold of one edit, and where it
   imported `bot` from;
2. it waits for one `go` line on stdin (anything else, or the parent's end, and it exits with 3);
3. it submits the N edits at once, as N preview Run buttons would (`tests.live.run_prepared`), runs
   them to their end, and prints `{"outcomes": [...], "delivered": [job ids]}`: an outcome is "ok" or
   the refusal's code;
4. it drains, closes its session and pool, and exits 0.

The edits are prepared before the signal because preparing (reading and checking images) is CPU work
whose pace differs between processes on a shared machine: fired unprepared, the first process through
its images took every hold alone, before the others reached the ledger. Prepared, the holds of all three
processes meet in the database at once, which is the race the ledger's conditional UPDATE settles.

Logs go to stderr (the parent keeps them in a file and shows their end when a child fails).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path

import bot
from bot.app import build_providers, build_services, provider_session
from bot.catalog import load_catalog
from bot.config import load_settings
from bot.errors import RetouchError
from bot.services.edits import EditJob, EditOptions, EditService, PreparedJob, Upload
from bot.storage import Storage
from tests.live import RecordingLive, run_prepared

GUILD, MEMBER, CHANNEL = 1, 2, 7
PHOTO = (Path(__file__).resolve().parent / "data" / "chelsea.png").read_bytes()
# At a fixed quality and size an edit is charged exactly what it holds, so no capture frees credits.
OPTIONS = EditOptions("make it a watercolour", quality="high", size="1024x1024")
GO = "go"
EXIT_NO_GO = 3


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
    """Run one prepared edit to its end: "ok" (its result was posted), a refusal's code, or what went
    wrong."""
    live = RecordingLive()
    try:
        await run_prepared(edits, prepared, live)
    except RetouchError as exc:
        return exc.code
    except Exception as exc:  # reported, so the parent's count shows it beside the others
        logging.getLogger(__name__).exception("edit failed")
        return f"unexpected {type(exc).__name__}: {exc}"
    assert live.ticket is not None
    delivered.append(live.ticket.job_id)
    return "ok"


async def serve(edits: int) -> int:
    settings = load_settings()
    catalog = load_catalog(settings.catalog_path)
    storage = await Storage.open(settings.database)
    try:
        async with provider_session(settings) as session:
            services = build_services(settings, catalog, storage, build_providers(settings, session, catalog))
            service = services.edits
            await service.start()  # discovery, recovery, and lease rounds in the background
            try:
                prepared = [await service.prepare(edit()) for _ in range(edits)]
                [per_job] = {p.reserve for p in prepared}
                say({"owner": service.engine.owner, "per_job": per_job, "code": bot.__file__})
                if (await asyncio.to_thread(sys.stdin.readline)).strip() != GO:
                    return EXIT_NO_GO
                delivered: list[str] = []
                outcomes = await asyncio.gather(*(attempt(service, p, delivered) for p in prepared))
                say({"outcomes": outcomes, "delivered": delivered})
            finally:
                await service.drain(0)
    finally:
        await storage.close()
    return 0


def main() -> int:
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    return asyncio.run(serve(int(sys.argv[1])))


if __name__ == "__main__":
    sys.exit(main())
