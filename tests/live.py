"""Running an edit the way a command does, below Discord: a recording live route and `run_to_end`.

`cogs._results.run_and_publish` prepares a job with its progress message, submits it with an
`InteractionLive` and returns; the engine then shows the job's progress on that message, posts the
result through it (or through its `Delivery` when the live route refuses) and ends with a last line.
`RecordingLive` is that live route with Discord taken out: it keeps every line and every result a
member would have seen. `run_to_end` makes the same two calls and waits for that last line;
`run_prepared` makes the second alone, for a job prepared earlier (as a preview's Run button does).
"""

from __future__ import annotations

import asyncio
import re

from bot.jobs.model import Delivered, EditOutcome, JobStatus, Ticket
from bot.services.edits import EditJob, EditService, PreparedJob

END_TIMEOUT_SECONDS = 60.0  # a hung job fails its test instead of hanging the suite
CHANNEL_ID = 7  # where the recorded results are "posted"
REF = re.compile(r"\(ref `([0-9a-f]+)`\)")


class RecordingLive:
    """A LiveJob that records what the command's progress message and followups would show.

    `refuse`: an exception every delivery raises (a spent token, Discord down), so the engine falls
    back to its `Delivery` the way it does when a real followup fails.
    """

    def __init__(self, *, refuse: Exception | None = None) -> None:
        self.lines: list[str] = []  # every progress line: `prepare`'s stages, then the engine's
        self.statuses: list[JobStatus] = []  # the engine's progress lines as it sent them
        self.delivered: list[EditOutcome] = []
        self.final: list[str | None] = []  # what `finish` was told: the message's last line
        self.ended = asyncio.Event()
        self.refuse = refuse
        self.ticket: Ticket | None = None  # what `submit` returned (set by `submit_live`)
        self._new_line = asyncio.Event()

    async def progress(self, text: str) -> None:
        """The `progress` callable `EditService.prepare` takes (cogs._ui.ProgressMessage in the bot)."""
        self.lines.append(text)
        self._new_line.set()

    async def update(self, status: JobStatus) -> None:
        self.statuses.append(status)
        await self.progress(status.text)

    async def deliver(self, outcome: EditOutcome) -> Delivered:
        if self.refuse is not None:
            raise self.refuse
        self.delivered.append(outcome)
        return Delivered("interaction", CHANNEL_ID, 1000 + len(self.delivered))

    async def finish(self, text: str | None) -> bool:
        self.final.append(text)
        self.ended.set()
        return True

    async def shown(self, prefix: str, timeout: float = END_TIMEOUT_SECONDS) -> str:  # noqa: ASYNC109
        """Wait until a progress line starting with `prefix` was shown; return it."""
        async with asyncio.timeout(timeout):
            while True:
                for line in self.lines:
                    if line.startswith(prefix):
                        return line
                self._new_line.clear()
                await self._new_line.wait()


class SlowPost(RecordingLive):
    """A progress message whose posting of the result is under way until `go` is set (Discord slow to
    answer), then lands; `posting` is set once it has begun."""

    def __init__(self) -> None:
        super().__init__()
        self.posting = asyncio.Event()
        self.go = asyncio.Event()

    async def deliver(self, outcome: EditOutcome) -> Delivered:
        self.posting.set()
        await self.go.wait()
        return await super().deliver(outcome)


class NoResult(Exception):
    """The job ended without a result posted through its live route; `text` is what its progress
    message said last (a failure's text carries its log reference, `ref`)."""

    def __init__(self, text: str | None) -> None:
        super().__init__(text)
        self.text = text or ""
        found = REF.search(self.text)
        self.ref = found.group(1) if found else None


async def submit_live(service: EditService, job: EditJob, live: RecordingLive) -> Ticket:
    """What `cogs._results.run_and_publish` does: prepare on the progress message, submit with the live
    route. Refusals (options, images, credits, server rules) raise from here, before anything is held."""
    prepared = await service.prepare(job, progress=live.progress)
    live.ticket = await service.submit(prepared, live=live)
    return live.ticket


async def run_to_end(service: EditService, job: EditJob, live: RecordingLive | None = None) -> EditOutcome:
    """Run `job` as a command does and wait for its end; return the result its live route posted.

    Raises what `submit_live` raises, or NoResult when the job ended any other way (a failure, a
    cancel, a shutdown, a result only the engine's `Delivery` could post).
    """
    live = live or RecordingLive()
    await submit_live(service, job, live)
    return await result(live)


async def run_prepared(service: EditService, prepared: PreparedJob, live: RecordingLive) -> EditOutcome:
    """`run_to_end` for a job already prepared (what a preview's Run button submits): hold its credits,
    run it, and wait for its end. Refusals (credits, budgets) raise from `submit`."""
    live.ticket = await service.submit(prepared, live=live)
    return await result(live)


async def result(live: RecordingLive) -> EditOutcome:
    """Wait for the job on `live` to end; return the result it posted, or raise NoResult."""
    async with asyncio.timeout(END_TIMEOUT_SECONDS):
        await live.ended.wait()
    if not live.delivered:
        raise NoResult(live.final[-1])
    [outcome] = live.delivered
    return outcome
