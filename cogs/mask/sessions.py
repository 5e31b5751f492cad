"""The state of one member's `/mask` picker or preview, kept in memory until it runs, is cancelled or
expires (see `cogs.mask`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, OrderedDict
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

import discord

from bot import messages
from bot.client import RetouchBot
from bot.errors import RetouchError
from bot.services import masking
from bot.services.edits import EditJob, EditService, MaskSpec, PreparedJob

# How long a picker or preview waits for the next click before it is dropped. Well inside the
# 15 minutes an interaction token lives, so the expiry notice can still be written into the message.
PREVIEW_TIMEOUT_SECONDS = 300.0
# Sessions that ran or were cancelled, remembered so a late double-click is ignored quietly instead of
# overwriting the progress message with "expired".
FINISHED_REMEMBERED = 1000


def expired_text(timeout: float) -> str:
    return messages.preview_expired(minutes(timeout))


class TooManyPreviews(RetouchError):
    """The member already has `MAX_MASK_PREVIEWS` mask pickers or previews open."""

    def __init__(self, limit: int) -> None:
        super().__init__(messages.too_many_previews(limit), code="too_many_previews")


@dataclass
class MaskSession:
    """One user's picker or preview, alive until it runs, is cancelled or expires."""

    sid: str
    user_id: int
    job: EditJob  # its MaskSpec holds the uploaded mask or the picked cells
    handle: discord.Interaction  # the latest interaction whose @original is the private message
    skip_preview: bool = False
    # The message the "Edit image" menu was used on: a result made from a result continues its history.
    origin_message_id: int | None = None
    # What the picker and the preview are drawn from (`masking.shown_picture`), not the image itself.
    picture: bytes | None = None
    prepared: PreparedJob | None = None  # set while the preview is shown
    # The newest pick of cells or grid applied (its interaction id: Discord's snowflakes order a member's
    # clicks). Clicks are handled side by side, and a pick whose acknowledgement came back late must not
    # undo a newer pick. Only picks are ordered so: a menu sends the member's whole choice, and a late one
    # behind a newer Preview or Back is still their last choice of cells.
    latest_pick: int = 0
    expiry: asyncio.TimerHandle | None = field(default=None, repr=False)

    @property
    def spec(self) -> MaskSpec:
        assert self.job.mask is not None
        return self.job.mask

    @property
    def picking(self) -> bool:
        """The area is picked on the grid (no mask file): the preview can go back to the picker."""
        return self.spec.upload is None

    @property
    def grid(self) -> tuple[int, int]:
        return self.spec.grid or masking.DEFAULT_GRID


class MaskSessions:
    """Sessions by id. The clock is armed after each render and stopped while a click is handled,
    so a session is dropped (and `on_expire` runs) only `timeout` seconds after the user last saw it."""

    def __init__(self, timeout: float, on_expire: Callable[[MaskSession], Coroutine[Any, Any, None]]) -> None:
        self.timeout = timeout
        self._on_expire = on_expire
        self._sessions: dict[str, MaskSession] = {}
        self._starting: Counter[int] = Counter()  # per member: pickers/previews being prepared
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()

    def get(self, sid: str) -> MaskSession | None:
        return self._sessions.get(sid)

    def count(self, user_id: int) -> int:
        """A member's open pickers and previews, and those being prepared (each holds images)."""
        return self._starting[user_id] + sum(1 for s in self._sessions.values() if s.user_id == user_id)

    @contextlib.contextmanager
    def starting(self, user_id: int, limit: int) -> Iterator[None]:
        """Hold one of the member's `limit` places while a picker or preview is prepared; raise
        TooManyPreviews, before anything is downloaded, when they are all taken."""
        if self.count(user_id) >= limit:
            raise TooManyPreviews(limit)
        self._starting[user_id] += 1
        try:
            yield
        finally:
            self._starting[user_id] -= 1
            if self._starting[user_id] <= 0:
                del self._starting[user_id]

    def open(self, session: MaskSession) -> None:
        """Register before the first render, so a click that comes at once finds the session."""
        self._sessions[session.sid] = session

    def touch(self, session: MaskSession, interaction: discord.Interaction, *, pick: bool = False) -> bool:
        """The user clicked: stop the clock and remember the newest way to edit the message. The click
        owns the message from now on: what earlier clicks still draw is dropped (`MaskParts._stale`).

        `pick`: the click chooses cells or another grid. False, and nothing changed, for a pick older
        than one already applied (its acknowledgement, or the bot's check of it, finished after the
        newer pick's): applying it would bring back the member's earlier cells over their last ones."""
        if pick:
            if interaction.id < session.latest_pick:
                return False
            session.latest_pick = interaction.id
        session.handle = interaction
        if session.expiry is not None:
            session.expiry.cancel()
            session.expiry = None
        return True

    def arm(self, session: MaskSession) -> None:
        """The user sees the picker or preview now: start (or restart) its clock."""
        if session.expiry is not None:
            session.expiry.cancel()
        if session.sid in self._sessions:
            session.expiry = asyncio.get_running_loop().call_later(self.timeout, self._expire, session.sid)

    def close(self, sid: str) -> MaskSession | None:
        """Take a session out (to run or cancel it). Returns None if it is already gone."""
        session = self._sessions.pop(sid, None)
        if session is not None and session.expiry is not None:
            session.expiry.cancel()
        return session

    def finish(self, sid: str) -> MaskSession | None:
        """Close a session because it ran or was cancelled, and remember that for a while."""
        self._finished[sid] = None
        while len(self._finished) > FINISHED_REMEMBERED:
            self._finished.popitem(last=False)
        return self.close(sid)

    def finished(self, sid: str) -> bool:
        return sid in self._finished

    def close_all(self) -> None:
        for sid in list(self._sessions):
            self.close(sid)

    def _expire(self, sid: str) -> None:
        session = self._sessions.pop(sid, None)
        if session is not None:
            task: asyncio.Task[None] = asyncio.create_task(
                self._on_expire(session), name=f"mask-expire-{sid}"
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


def minutes(seconds: float) -> str:
    minutes = max(1, round(seconds / 60))
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


class MaskParts:
    """What the picker (`grid.py`) and preview (`preview.py`) halves of `MaskCog` share; the cog sets
    these in its `__init__`."""

    bot: RetouchBot
    edits: EditService
    sessions: MaskSessions

    def _stale(self, session: MaskSession, interaction: discord.Interaction) -> bool:
        """Whether what `interaction` (a click, or the command itself) was drawing must be dropped after
        its work was awaited: the session was cancelled, run or expired meanwhile (drawing it again would
        bring back a picker or preview whose buttons do nothing), or a later click took the message over
        (`MaskSessions.touch`), whose state is what the member must see: a slow picker redraw would
        otherwise land over the preview, or a preview show cells changed since it was asked for."""
        return self.sessions.get(session.sid) is not session or session.handle is not interaction
