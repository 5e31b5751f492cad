"""The "Edit image" message menu's form: a prompt and an optional mask for the message's image."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import discord

from bot import messages
from bot.services.access import AlreadyStarted
from cogs._results import started_a_job
from cogs._ui import admitted, report_error

if TYPE_CHECKING:
    from cogs.mask import MaskCog

NO_MENTIONS = discord.AllowedMentions.none()

# A form left open this long is forgotten; submitting it afterwards is answered with FORM_EXPIRED.
MODAL_TIMEOUT_SECONDS = 900.0
# How long after its timeout a form stays listed as open: never before discord.py forgets it, or both
# would answer a submission in between ("expired" and the edit).
FORM_GRACE_SECONDS = 60.0
# The forms' custom ids: this prefix and a random key (MaskCog.open_forms knows the live ones).
FORM_PREFIX = "retouch:editimage:"
MODAL_PROMPT_MAX_CHARS = 4000  # Discord's cap for a text input in a form


class EditImageForm(discord.ui.Modal, title="Edit image"):
    """A prompt and an optional mask upload for the message menu's image."""

    prompt: discord.ui.Label[EditImageForm] = discord.ui.Label(
        text="What should change?",
        component=discord.ui.TextInput(
            custom_id="prompt",
            style=discord.TextStyle.paragraph,
            placeholder="e.g. make it a watercolour painting",
            max_length=MODAL_PROMPT_MAX_CHARS,
        ),
    )
    mask: discord.ui.Label[EditImageForm] = discord.ui.Label(
        text="Mask (optional)",
        description="White or transparent = change, black = keep. Leave empty to edit the whole image.",
        component=discord.ui.FileUpload(custom_id="mask", required=False, min_values=0, max_values=1),
    )

    def __init__(self, cog: MaskCog, image: discord.Attachment, message_id: int | None = None) -> None:
        self.key = secrets.token_hex(8)
        super().__init__(timeout=MODAL_TIMEOUT_SECONDS, custom_id=f"{FORM_PREFIX}{self.key}")
        self.cog = cog
        self.image = image
        self.message_id = message_id  # the message the menu was used on (linked from late results)
        self.started = False  # a submission is being (or was) started: see `on_submit`
        cog.open_forms.opened(self.key)

    async def on_timeout(self) -> None:
        # discord.py forgets the form now: a late submission is answered by MaskCog.on_interaction.
        self.cog.open_forms.closed(self.key)

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        # discord.py restarts its timer on every submission (one refused here stays open): so does
        # the cog's listing, or it could lapse first and both would answer the next one.
        self.cog.open_forms.opened(self.key)
        return await admitted(interaction)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        # discord.py closes the form only once this returns, after the download and the credit hold: a
        # second press of Submit meanwhile (a slow client) would start, and charge, a second edit. Taken
        # before any await; given back when the start failed before any credits were held (refused, or
        # Discord failed the acknowledgement), as discord.py then keeps the form open for another try.
        # Never once they were: that edit runs whatever failed after its hold, and a resubmission of
        # the form would start and charge another.
        if self.started:
            raise AlreadyStarted()
        self.started = True
        text = self.prompt.component
        upload = self.mask.component
        assert isinstance(text, discord.ui.TextInput) and isinstance(upload, discord.ui.FileUpload)
        mask = upload.values[0] if upload.values else None
        try:
            await self.cog.run_from_form(interaction, self.image, text.value, mask, self.message_id)
        except BaseException:
            if not started_a_job(interaction):
                self.started = False
            raise

    # Modal.on_error is called with (interaction, error): a modal has no failing item. discord.py's own
    # Modal narrows BaseView.on_error(interaction, error, item) this way, so the checker sees an override.
    async def on_error(self, interaction: discord.Interaction, error: Exception, /) -> None:  # type: ignore[override]
        await report_error(interaction, error, where="the Edit image form")


class OpenForms:
    """The Edit image forms discord.py still answers (this process opened them, within their timeout).
    A submitted form stays listed until its time is up: its submission and the listener that looks
    here run side by side."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._until: dict[str, float] = {}
        self._clock = clock

    def opened(self, key: str) -> None:
        now = self._clock()
        self._until = {k: t for k, t in self._until.items() if t > now}  # forms whose time is up
        # Past discord.py's own timer (it starts once the form is sent, a moment after this), which
        # closes the form here (`closed`): the key outlives it only for forms that were sent.
        self._until[key] = now + MODAL_TIMEOUT_SECONDS + FORM_GRACE_SECONDS

    def closed(self, key: str) -> None:
        self._until.pop(key, None)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._until.get(key, 0.0) > self._clock()


def form_key(interaction: discord.Interaction) -> str | None:
    """The key of an Edit image form this submission is for, or None when it is not one."""
    data: Any = interaction.data
    custom_id = data.get("custom_id") if isinstance(data, dict) else None
    if interaction.type is not discord.InteractionType.modal_submit or not isinstance(custom_id, str):
        return None
    return custom_id.removeprefix(FORM_PREFIX) if custom_id.startswith(FORM_PREFIX) else None


async def answer_expired_form(interaction: discord.Interaction) -> None:
    """A form discord.py no longer knows (open past its timeout, or opened before a restart) is
    dropped by it without a word ("This interaction failed"): say what to do instead."""
    await interaction.response.send_message(
        messages.FORM_EXPIRED, ephemeral=True, allowed_mentions=NO_MENTIONS
    )
