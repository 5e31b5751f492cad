"""The "Edit image" message menu's form: a prompt and an optional mask for the message's image."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord

from cogs._ui import admitted, report_error

if TYPE_CHECKING:
    from cogs.mask import MaskCog

# A form left open this long is forgotten; submitting it afterwards shows Discord's own error.
MODAL_TIMEOUT_SECONDS = 900.0
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
        super().__init__(timeout=MODAL_TIMEOUT_SECONDS)
        self.cog = cog
        self.image = image
        self.message_id = message_id  # the message the menu was used on (linked from late results)

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        return await admitted(interaction)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        text = self.prompt.component
        upload = self.mask.component
        assert isinstance(text, discord.ui.TextInput) and isinstance(upload, discord.ui.FileUpload)
        mask = upload.values[0] if upload.values else None
        await self.cog.run_from_form(interaction, self.image, text.value, mask, self.message_id)

    # Modal.on_error is called with (interaction, error): a modal has no failing item. discord.py's own
    # Modal narrows BaseView.on_error(interaction, error, item) this way, so the checker sees an override.
    async def on_error(self, interaction: discord.Interaction, error: Exception, /) -> None:  # type: ignore[override]
        await report_error(interaction, error, where="the Edit image form")
