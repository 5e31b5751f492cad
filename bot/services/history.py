"""Edit history: results form chains of versions, so **Edit again** continues from the latest version,
**Undo** posts the previous one again, and `/history` lists a member's last edits with links.

A version is a posted result (recorded when its job is delivered, as a `JobObserver`) or an Undo
repost. Its parent is the version it was made from: the message an Edit again / Retry was started
on (the job's origin). Only Discord ids are stored — a version's picture is its message's
attachment on Discord, so Undo downloads it from there — and rows are dropped
`RESULT_RETENTION_HOURS` after they were posted: nothing is kept longer than the README promises.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from bot.jobs.model import JobObserver, JobSpec
from bot.storage import Storage
from bot.storage.history import VersionRow

log = logging.getLogger(__name__)

HISTORY_LIMIT = 10  # entries `/history` lists
# The delivered row may be written a moment after observers hear of the delivery; wait this long.
ROW_WAIT_SECONDS = 5.0
ROW_POLL_SECONDS = 0.05


@dataclass(frozen=True)
class HistoryEntry:
    """A line of `/history`: the version and its job's prompt (None when the job is unknown)."""

    version: VersionRow
    prompt: str | None


@dataclass(frozen=True)
class UndoStep:
    """What Undo shows: the version to post again, and the chain's latest version it steps back from."""

    latest: VersionRow
    previous: VersionRow


class NothingToUndo(Exception):
    """The chain's latest version is its first (or the one before it has expired)."""


class EditHistory(JobObserver):
    """Records versions and answers chain questions. Plain values in and out; SQL in bot.storage."""

    def __init__(self, storage: Storage, *, retention_hours: float) -> None:
        self.storage = storage
        self.retention = dt.timedelta(hours=retention_hours)
        self._pending: set[asyncio.Task[None]] = set()

    # -- recording ---------------------------------------------------------------------------------

    def job_finished(self, job_id: str, state: str, **_: Any) -> None:
        if state == "delivered":
            self._spawn(self._record_quietly(job_id))

    async def _record_quietly(self, job_id: str) -> None:
        """Observers must never raise: a history that misses a version only loses an Undo step."""
        try:
            await self.record_result(job_id)
        except Exception as exc:
            log.warning("job %s: could not record its version: %s", job_id, type(exc).__name__)

    async def record_result(self, job_id: str) -> VersionRow | None:
        """Record a delivered job's result as the newest version of its chain (a new chain when it
        was not started from a version). A member's edit of another member's version starts a chain
        of their own whose Undo steps back to that version: it must not become the newest version of
        the other member's chain, which their next Edit again would continue from."""
        row = await self._delivered(job_id)
        if row is None or row.result_message_id is None or row.result_channel_id is None:
            return None
        parent = (
            await self.storage.history.get_version(row.origin_message_id) if row.origin_message_id else None
        )
        continues = parent is not None and parent.user_id == row.user_id
        version = self._version(
            message_id=row.result_message_id,
            channel_id=row.result_channel_id,
            guild_id=row.guild_id,
            user_id=row.user_id,
            job_id=job_id,
            chain_id=parent.chain_id if parent and continues else row.result_message_id,
            parent_message_id=parent.message_id if parent else None,
        )
        await self.storage.history.add_version(version)
        return version

    async def record_repost(self, step: UndoStep, *, message_id: int, channel_id: int) -> VersionRow:
        """An Undo repost: the newest version of the chain, showing `step.previous` again. Its parent is
        the previous version's parent, so a second Undo steps back once more. It stays the chain
        owner's, whoever clicked (a moderator's Undo must not take the member's chain from them)."""
        version = self._version(
            message_id=message_id,
            channel_id=channel_id,
            guild_id=step.latest.guild_id,
            user_id=step.latest.user_id,
            job_id=step.previous.job_id,
            chain_id=step.latest.chain_id,
            parent_message_id=step.previous.parent_message_id,
        )
        await self.storage.history.add_version(version)
        return version

    # -- questions ---------------------------------------------------------------------------------

    async def latest(self, message_id: int, job_id: str | None = None) -> VersionRow | None:
        """The newest version of the chain `message_id` belongs to, or None if it is not a version.

        `job_id` (the clicked result's job) lets a result that was posted a moment ago, and is not
        recorded yet, be recorded now.
        """
        await self.flush()  # a result delivered a moment ago is part of the chain already
        version = await self.storage.history.get_version(message_id)
        if version is None and job_id is not None:
            row = await self.storage.jobs.get_job(job_id)
            if row is not None and row.result_message_id == message_id:
                version = await self.record_result(job_id)
        if version is None:
            return None
        return await self.storage.history.latest_version(version.chain_id) or version

    async def deleted(self, message_id: int) -> None:
        """A result's message was deleted with its Delete button: /history stops listing it and Edit
        again stops continuing from it (a version being recorded is recorded first)."""
        await self.flush()
        await self.storage.history.mark_deleted(message_id)

    async def continues_chain(self, origin_message_id: int | None) -> bool:
        """Whether a result made from `origin_message_id` continues an edit chain, so it gets Undo: its
        origin must be a kept version (`record_result` makes it the parent). Any other message (the
        "Edit image" menu works on every message with a picture) starts a new chain."""
        if origin_message_id is None:
            return False
        try:
            await self.flush()  # the origin was delivered a moment ago: its version is being recorded
            return await self.storage.history.get_version(origin_message_id) is not None
        except Exception as exc:  # only a button rides on it: never fail a paid result's post for it
            log.warning("could not tell whether %s continues an edit chain: %s", origin_message_id, exc)
            return False

    async def shows_job(self, message_id: int, job_id: str) -> bool:
        """Whether `message_id` is a kept version showing `job_id`'s result (an Undo repost is one)."""
        version = await self.storage.history.get_version(message_id)
        return version is not None and version.job_id == job_id

    async def thread_parent(self, thread_id: int) -> int | None:
        """The channel of the result a chain's thread was opened on (a thread opened on a message has
        that message's id), or None when `thread_id` is no result's thread. Known after the thread
        itself is deleted: from the kept version, else (that first version expired while the chain's
        later ones, in the thread, are kept) from the job row whose result it is. Only a message's
        id can be a thread's id when the thread was opened on it, in that message's channel: a
        thread opened on its own (a private one) is never found here."""
        version = await self.storage.history.get_version(thread_id)
        if version is not None:
            return version.channel_id
        return await self.storage.jobs.result_channel_of(thread_id)

    async def undo_step(self, message_id: int, job_id: str | None = None) -> UndoStep:
        """The chain's latest version and the one before it. Raises NothingToUndo, or LookupError when
        `message_id` is not a known version (expired, or never recorded)."""
        latest = await self.latest(message_id, job_id)
        if latest is None:
            raise LookupError(message_id)
        previous = (
            await self.storage.history.get_version(latest.parent_message_id)
            if latest.parent_message_id
            else None
        )
        if previous is None:
            raise NothingToUndo()
        return UndoStep(latest, previous)

    async def recent(self, guild_id: int, user_id: int, limit: int = HISTORY_LIMIT) -> list[HistoryEntry]:
        """A member's newest versions in a server, newest first."""
        await self.flush()
        found = await self.storage.history.recent_versions(guild_id, user_id, limit)
        return [HistoryEntry(version, _prompt(spec)) for version, spec in found]

    # -- helpers -----------------------------------------------------------------------------------

    def _version(self, **fields: Any) -> VersionRow:
        now = self.storage.now()
        return VersionRow(**fields, created_at="", expires_at=_iso(now + self.retention))

    async def _delivered(self, job_id: str) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ROW_WAIT_SECONDS
        while True:
            row = await self.storage.jobs.get_job(job_id)
            if row is None or row.result_message_id is not None or loop.time() >= deadline:
                return row
            await asyncio.sleep(ROW_POLL_SECONDS)

    def _spawn(self, coro: Coroutine[None, None, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def flush(self) -> None:
        """Wait for versions still being recorded (tests, shutdown)."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)


def _prompt(spec: str | None) -> str | None:
    if not spec:
        return None
    try:
        return JobSpec.from_json(spec).prompt
    except (ValueError, KeyError, TypeError):
        return None


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).isoformat(timespec="milliseconds")
