"""The audit channel: admin credit changes, safety refusals, failed jobs and provider circuit openings.

Plain values in, one line of text out through a `post` callable that the bot wiring supplies (the
only Discord-facing part, in `bot/client.py`). Without `AUDIT_CHANNEL_ID` nothing is attached and
every event is dropped. Posting never raises: an audit channel that is gone or forbidden must not
cost a user an edit or an admin a command.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from decimal import Decimal

from bot import messages
from bot.jobs.model import JobObserver, JobState
from bot.storage import Storage
from bot.storage.jobs import JobRow

log = logging.getLogger(__name__)

Post = Callable[[str], Awaitable[None]]
CircuitStates = Callable[[], Mapping[str, str]]

DISCORD_MESSAGE_LIMIT = 2000
REASON_CHARS = 300
# Observers may hear of a failure before its reference id is stored; wait this long for the id
# before posting without it.
REF_WAIT_SECONDS = 5.0
REF_POLL_SECONDS = 0.05
SAFETY_REFUSAL = "ProviderRejected"
CLOSED, OPEN = "closed", "open"
# Failures the user caused and was told about; they say nothing about the bot's health.
NOT_AUDITED = frozenset({"insufficient_credits"})


def jump_url(guild_id: int | None, channel_id: int, message_id: int | None = None) -> str:
    """A discord.com link to a channel, or to one message in it."""
    url = f"https://discord.com/channels/{guild_id or '@me'}/{channel_id}"
    return f"{url}/{message_id}" if message_id else url


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class AuditLog(JobObserver):
    """Formats audit events and hands them to `post`. A JobObserver for refusals and failures."""

    def __init__(self, storage: Storage | None = None) -> None:
        self._storage = storage
        self._post: Post | None = None
        self._pending: set[asyncio.Task[object]] = set()
        self._circuits: CircuitStates | None = None
        self._last_circuits: dict[str, str] = {}
        self._last_errors: dict[str, str] = {}

    @property
    def enabled(self) -> bool:
        return self._post is not None

    def attach(self, post: Post | None) -> None:
        """Start (or with None, stop) sending events to `post`."""
        self._post = post

    def watch_circuits(self, states: CircuitStates) -> None:
        """Report circuits that open, from `states()` ({provider: closed|half_open|open}).

        The routing layer's breaker has no listener, so its states are compared after every provider
        call: a provider going from closed to open is reported once. A failed half-open trial that
        re-opens it is not (during a long outage that would post every cool-down).
        """
        self._circuits = states
        self._last_circuits = dict(states())

    # -- events other features call -----------------------------------------------------------------

    async def credit_change(
        self,
        *,
        guild_id: int,
        actor_id: int,
        user_id: int,
        amount: int,
        balance_after: int,
        reason: str | None = None,
        link: str | None = None,
        action: str | None = None,
    ) -> None:
        """An admin granted (amount > 0) or removed (amount < 0) credits; `action` (grant, take or
        set) says which the admin asked for, whatever moved (a take from an empty balance moves 0)."""
        where = f"in server `{guild_id}` (balance now {balance_after})"
        if action == "set":
            line = f"💳 Credits: <@{actor_id}> set the balance of <@{user_id}> ({amount:+d}) {where}"
        elif action == "take" or amount < 0:
            line = f"💳 Credits: <@{actor_id}> took {abs(amount)} credits from <@{user_id}> {where}"
        else:
            line = f"💳 Credits: <@{actor_id}> gave {amount} credits to <@{user_id}> {where}"
        if reason:
            # A server's admin wrote it, and it is shown in the operator's channel in the bot's name.
            line += f" — “{messages.as_typed(_clip(reason, REASON_CHARS))}”"
        await self._send(line, link)

    async def allotment_change(
        self, *, guild_id: int, actor_id: int, before: Decimal | None, after: Decimal | None
    ) -> bool:
        """The operator changed how much of the bot's monthly budget a server may spend; whether it was
        posted (the operator is told)."""
        line = (
            f"🏦 Allotment: <@{actor_id}> changed server `{guild_id}` from {messages.allotment(before)} "
            f"to {messages.allotment(after)}"
        )
        return await self._send(line, None)

    async def circuit_opened(self, provider: str, *, reason: str, retry_in: float | None = None) -> None:
        """The routing layer stopped sending jobs to `provider` after repeated failures."""
        line = f"🔌 Provider `{provider}` circuit opened: {_clip(reason, REASON_CHARS)}"
        if retry_in is not None:
            line += f"; next try in {retry_in:.0f} s"
        await self._send(line, None)

    async def model_event(self, line: str) -> None:
        """A model or route changed: shut down, retired after "model gone", a new date or model."""
        await self._send(_clip(line, REASON_CHARS), None)

    async def safety_event(self, line: str) -> None:
        """The safety check flagged a request, or could not be reached (bot.services.moderation).
        Posted in the background: the member's refusal, or their unchecked edit, does not wait on the
        audit channel's rate limit."""
        self._spawn(self._send(_clip(line, REASON_CHARS), None))

    async def moderator_action(self, line: str, link: str | None = None) -> None:
        """A member stopped or deleted someone else's edit (who did it, whose, where). Awaited: it is
        posted after the action is done and answered."""
        await self._send(_clip(line, REASON_CHARS), link)

    async def job_failed(self, job: JobRow, error: str | None) -> None:
        """A job ended failed: a safety refusal or a failure, with its reference id and channel link."""
        who = f"<@{job.user_id}>" + (f" in <#{job.channel_id}>" if job.channel_id else "")
        via = f" via {job.provider}" if job.provider else ""
        ref = f"ref `{job.error_ref}`" if job.error_ref else "no ref"
        if error == SAFETY_REFUSAL:
            head = "🛑 Safety refusal"
        else:
            head = f"⚠️ Edit failed ({error or job.error_code or 'unknown'})"
        line = f"{head}: job `{job.id}` for {who}, {job.model}{via}, {ref}"
        link = jump_url(job.guild_id, job.channel_id) if job.channel_id else None
        await self._send(line, link)

    # -- JobObserver --------------------------------------------------------------------------------

    def provider_finished(self, provider: str, model: str, seconds: float, error: str | None) -> None:
        if error is not None:
            self._last_errors[provider] = error
        if self._circuits is None or not self.enabled:
            return
        now = dict(self._circuits())
        for name, state in now.items():
            if state == OPEN and self._last_circuits.get(name, CLOSED) == CLOSED:
                reason = f"repeated failures (last: {self._last_errors.get(name, 'unknown')})"
                self._spawn(self.circuit_opened(name, reason=reason))
        self._last_circuits = now

    def job_finished(self, job_id: str, state: JobState, *, error: str | None, **_: object) -> None:
        # Only failures are audited: the job's model, provider, charge and duration are the metrics'.
        if state != JobState.FAILED or error in NOT_AUDITED or not self.enabled or self._storage is None:
            return
        self._spawn(self._report_failure(job_id, error))

    def _spawn(self, coro: Coroutine[None, None, object]) -> None:
        """Post in the background: observers are synchronous and must never wait on Discord."""
        task = asyncio.get_running_loop().create_task(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _report_failure(self, job_id: str, error: str | None) -> None:
        job = await self._settled(job_id)
        if job is None:
            log.warning("audit: job %s not found", job_id)
            return
        await self.job_failed(job, error)

    async def _settled(self, job_id: str) -> JobRow | None:
        """The job's row once its failure (and reference id) is recorded, or as it is at the deadline.

        Observers may run before the failure is recorded, and the observer interface has no later
        event, so this polls the row briefly (usually it is already there on the first read).
        """
        assert self._storage is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REF_WAIT_SECONDS
        while True:
            job = await self._storage.jobs.get_job(job_id)
            if job is None or job.error_ref is not None or loop.time() >= deadline:
                return job
            await asyncio.sleep(REF_POLL_SECONDS)

    # -- delivery -----------------------------------------------------------------------------------

    async def _send(self, line: str, link: str | None) -> bool:
        """Post one line; whether it was posted (a failure is logged, never raised)."""
        post = self._post
        if post is None:
            log.debug("audit (no channel): %s", line)
            return False
        text = f"{line} · {link}" if link else line
        try:
            await post(_clip(text, DISCORD_MESSAGE_LIMIT))
        except Exception as exc:
            log.warning("could not post to the audit channel: %s", type(exc).__name__)
            return False
        return True

    async def flush(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109 - a bound for shutdown
        """Wait (up to `timeout` s) for failure reports still being posted; cancel what is left."""
        if not self._pending:
            return
        _, left = await asyncio.wait(set(self._pending), timeout=timeout)
        for task in left:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*left, return_exceptions=True)
