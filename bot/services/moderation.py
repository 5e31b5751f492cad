"""A free safety check before any paid call: the prompt and each input image go through OpenAI's
moderation model (`omni-moderation-latest`, free of charge) when an OpenAI key is set.

A flagged request is refused with a short private message naming the category, before any credits
are held or any provider edit call is made. Each server chooses how strict (`/admin policy
moderation`): `off`, `standard` (the API's own `flagged`) or `strict` (also any category scoring at
least `STRICT_SCORE`). The check fails open: an outage or a slow answer (past
`MODERATION_TIMEOUT_SECONDS`) never blocks an edit — the provider's own safety system still applies —
and is posted to the audit channel (at most once per `OUTAGE_AUDIT_SECONDS`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from bot import imaging, messages
from bot.errors import InvalidImage, RetouchError
from bot.providers.base import InputImage
from bot.providers.errors import InvalidInput, ProviderError, ProviderTimeout
from bot.providers.http import mentions
from bot.providers.openai import ModerationVerdict

log = logging.getLogger(__name__)

LEVELS = ("off", "standard", "strict")
# Strict flags a category from this score on (0–1). The API's own `flagged` uses per-category
# thresholds that OpenAI does not publish and that sit well above this for most categories.
STRICT_SCORE = 0.3
OUTAGE_AUDIT_SECONDS = 600.0  # a long outage is reported once per this, not once per edit
# Images above this are re-encoded smaller (off the event loop) before they are sent: moderation does
# not need every pixel, and the upload is part of the time an edit waits.
MAX_IMAGE_BYTES = 4 * 1024 * 1024


class Moderate(Protocol):
    """The moderation call (OpenAI's adapter implements it): a prompt and images in, a verdict out."""

    async def __call__(
        self, text: str | None, image: tuple[str, bytes] | None, *, within: float
    ) -> ModerationVerdict:
        """One moderation call (bot.providers.openai.OpenAIProvider.moderate)."""
        ...


LevelOf = Callable[[int], Awaitable[str | None]]
Report = Callable[[str], Awaitable[None]]


class Flagged(RetouchError):
    """The safety check flagged the prompt or an image; nothing was held or sent."""

    def __init__(self, category: str, where: str) -> None:
        super().__init__(messages.flagged(category, where), code="moderation_flagged")
        self.category = category
        self.where = where


def verdict_category(verdict: ModerationVerdict, level: str) -> str | None:
    """The category that refuses this input at `level`, or None when it passes."""
    if level == "off":
        return None
    top = max(verdict.scores.items(), key=lambda kv: kv[1], default=None)
    if verdict.flagged:
        flagged = [c for c in verdict.categories if c in verdict.scores] or list(verdict.categories)
        if flagged:
            return max(flagged, key=lambda c: verdict.scores.get(c, 0.0))
        return top[0] if top else "unsafe content"
    if level == "strict" and top is not None and top[1] >= STRICT_SCORE:
        return top[0]
    return None


def _image_input(image: InputImage) -> tuple[str, bytes]:
    """(mime, bytes) small enough to send. BLOCKING (may re-encode)."""
    if len(image.data) <= MAX_IMAGE_BYTES:
        return image.mime, image.data
    data, fmt = imaging.fit_to_limit(image.data, image.extension, MAX_IMAGE_BYTES)
    return f"image/{fmt}", data


class SafetyCheck:
    """Screens a prompt and its images before the hold. Plain values in; raises `Flagged`."""

    def __init__(
        self,
        moderate: Moderate | None,
        *,
        level_of: LevelOf,
        default_level: str,
        timeout: float,
        report: Report | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._moderate = moderate
        self._level_of = level_of
        self.default_level = default_level
        self.timeout = timeout
        self._report = report
        self._clock = clock
        self._last_outage_report: float | None = None

    @property
    def available(self) -> bool:
        """Whether there is a moderation endpoint to ask (an OpenAI key is set)."""
        return self._moderate is not None

    async def level(self, guild_id: int) -> str:
        """The server's level, else the bot-wide default (DMs use the default)."""
        chosen = await self._level_of(guild_id) if guild_id else None
        return chosen or self.default_level

    async def screen(
        self,
        *,
        guild_id: int,
        user_id: int,
        channel_id: int | None,
        prompt: str,
        images: Sequence[InputImage],
    ) -> None:
        """Raise `Flagged` when the prompt or an image fails the server's level; pass on any outage."""
        moderate = self._moderate
        if moderate is None:
            return
        level = await self.level(guild_id)
        if level == "off":
            return
        started = self._clock()
        # Made ready before the clock starts: only the moderation service's answer is timed. Re-encoding
        # a large upload is this bot's own work, and counting it would let anyone skip the check (it
        # lets everything through on a timeout) by attaching a big enough image.
        inputs = await asyncio.gather(*(asyncio.to_thread(_image_input, image) for image in images))
        try:
            async with asyncio.timeout(self.timeout):
                # One call per input, in parallel: the answer then says which input it is about.
                calls = [moderate(prompt, None, within=self.timeout)]
                calls += [
                    self._image_verdict(moderate, item, _image_name(index, len(images)))
                    for index, item in enumerate(inputs, start=1)
                ]
                tasks = [asyncio.ensure_future(call) for call in calls]
                try:
                    verdicts = await asyncio.gather(*tasks)
                except BaseException:
                    for task in tasks:  # one failed: the others' answers no longer matter
                        task.cancel()
                    raise
        except (ProviderError, TimeoutError) as exc:
            await self._outage(exc, user_id, channel_id)
            return
        log.debug("safety check for user %s took %.3f s", user_id, self._clock() - started)
        for index, verdict in enumerate(verdicts):
            category = verdict_category(verdict, level)
            if category is not None:
                where = "your prompt" if index == 0 else _image_name(index, len(images))
                await self._tell(
                    f"🛡️ Safety check ({level}) flagged {where.replace('your', 'the', 1)} of <@{user_id}>"
                    f"{_in(channel_id)} for `{category}`; nothing was sent or charged"
                )
                raise Flagged(category, where)

    async def _image_verdict(
        self, moderate: Moderate, item: tuple[str, bytes], which: str
    ) -> ModerationVerdict:
        """One image's verdict. An image the check answers it cannot read is refused (free): let through
        unchecked like an outage, any file its decoder refuses but an image service's takes would skip
        the check. The member's file is at fault there, not the service."""
        try:
            return await moderate(None, item, within=self.timeout)
        except InvalidInput as exc:
            if not _about_the_file(exc):  # a request or gateway problem: an outage, let through
                raise
            raise InvalidImage(messages.safety_cannot_read(which), code="moderation_unreadable") from exc

    async def _outage(self, exc: BaseException, user_id: int, channel_id: int | None) -> None:
        timed_out = isinstance(exc, TimeoutError | ProviderTimeout)
        why = f"no answer in {self.timeout:g} s" if timed_out else type(exc).__name__
        log.warning("safety check unavailable (%s); the edit of user %s goes ahead unchecked", why, user_id)
        now = self._clock()
        if self._last_outage_report is not None and now - self._last_outage_report < OUTAGE_AUDIT_SECONDS:
            return
        self._last_outage_report = now
        await self._tell(
            f"⚠️ Safety check unavailable ({why}): edits go ahead unchecked (first: <@{user_id}>"
            f"{_in(channel_id)}); next report in {OUTAGE_AUDIT_SECONDS / 60:g} min at the earliest"
        )

    async def _tell(self, line: str) -> None:
        if self._report is not None:
            await self._report(line)


# What the moderation API says about an image it cannot read (400): its codes, and its wording.
UNREADABLE_IMAGE_CODES = frozenset({"invalid_image", "invalid_image_format", "image_parse_error"})
UNREADABLE_IMAGE_WORDS = (
    "not a supported image",
    "invalid image",
    "could not process image",
    "unsupported image",
)


def _about_the_file(exc: InvalidInput) -> bool:
    """Whether a refusal of an image's moderation call is about the file itself (not, say, a gateway
    that takes no images, or a parameter this bot sent)."""
    if exc.status != 400:
        return False
    return exc.code in UNREADABLE_IMAGE_CODES or mentions(str(exc).lower(), UNREADABLE_IMAGE_WORDS)


def _image_name(index: int, count: int) -> str:
    return "your image" if count == 1 else f"your image {index}"


def _in(channel_id: int | None) -> str:
    return f" in <#{channel_id}>" if channel_id else ""
