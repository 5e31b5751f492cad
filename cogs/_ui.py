"""Shared by the cogs: the throttled progress message (and when an interaction token is spent), the
result embed, attachment uploads, model/quality/size autocomplete, persistent controls (buttons
that outlive a restart), the cogs' common base and private error replies for buttons and forms."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import io
import logging
import re
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypeVar

import aiohttp
import discord
from discord import app_commands
from discord.ext import commands

from bot import choices, messages
from bot.catalog import ModelEntry
from bot.client import RetouchBot, reply_privately
from bot.errors import InvalidImage, RetouchError, new_reference
from bot.jobs.model import EditOutcome, names_result_of
from bot.services.edits import Upload

if TYPE_CHECKING:
    from bot.lifecycle import ModelLifecycle

log = logging.getLogger(__name__)

T = TypeVar("T")
Choices = list[app_commands.Choice[str]]
Autocomplete = Callable[[discord.Interaction, str], Coroutine[Any, Any, Choices]]

# Discord rate-limits message edits; a stage line more often than this is noise anyway.
PROGRESS_MIN_INTERVAL = 2.5
# The longest a progress edit may take. They are cosmetic, and the job's own task awaits some of them
# ("Uploading the result…" before its paid result is stored): a PATCH that Discord leaves hanging
# (aiohttp's default is 300 s) held up a result the provider had already billed.
PROGRESS_EDIT_TIMEOUT = 10.0
PROMPT_PREVIEW_CHARS = 300
EMBED_COLOUR = discord.Colour(0x5865F2)
FIELD_CHARS = 1024  # Discord's limit for one embed field value
MORE = "…and {} more"
# Notes on a result or preview: one field each, at most this many fields (the last one holds the rest
# as whole lines), so a pile of notes can never push the embed past Discord's 25 fields or 6,000
# characters and have a paid result refused.
NOTE_FIELDS = 3
NOTE_CHARS = 1000


# Discord drops an autocomplete's answer after 3 s, and an autocomplete cannot be deferred: a member's
# defaults that a busy database keeps longer than this give way to the bot's default model (whose
# qualities and sizes are the usual ones), and the server's model limits to every live model (the job
# applies them), rather than no answer at all.
AUTOCOMPLETE_READ_SECONDS = 1.5
# Reads that outlasted AUTOCOMPLETE_READ_SECONDS, left to finish (never cut off mid-statement).
_late_reads: set[asyncio.Task[Any]] = set()


# Interaction tokens live 15 minutes; past this age the bot stops using one (a request that started
# just before the deadline could still fail) and late results go out as channel messages.
TOKEN_SAFE_SECONDS = 14 * 60
# Discord's answers for a token that no longer works: 401 with JSON code 50027 (or 10015 once the
# webhook is gone). After the first one the token is never used again: no retry storm.
DEAD_TOKEN_CODES = frozenset({50027, 10015})


def token_dead(interaction: discord.Interaction) -> bool:
    """Whether `interaction`'s token must not be used any more (too old, or Discord refused it)."""
    if interaction.extras.get("token_dead"):
        return True
    return (discord.utils.utcnow() - interaction.created_at).total_seconds() >= TOKEN_SAFE_SECONDS


def note_token_error(interaction: discord.Interaction, exc: discord.HTTPException) -> bool:
    """Remember a token Discord refused (401 / 50027); True if that is what `exc` was."""
    if exc.status == 401 or exc.code in DEAD_TOKEN_CODES:
        interaction.extras["token_dead"] = True
        return True
    return False


class ProgressMessage:
    """Edits the private deferred message with the current stage, at most every few seconds.

    The latest text always wins: updates that arrive too fast are coalesced, never queued. Controls
    (a Cancel button while a job can be cancelled) go with every edit once set. Once Discord refuses
    the interaction token, or it is nearly 15 minutes old, nothing more is sent on it.
    """

    def __init__(
        self, interaction: discord.Interaction, *, min_interval: float = PROGRESS_MIN_INTERVAL
    ) -> None:
        self._interaction = interaction
        self._min_interval = min_interval
        self._last_edit = 0.0
        self._pending: str | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False
        self._controls: discord.ui.View | None = None
        self._with_controls = False  # only messages that ever had controls get `view=` on edits
        self._urgent = False
        self._attempts = 0  # edits tried, landed or not: the first goes out at once, later ones throttled
        # An edit landed: the deferred "thinking" placeholder is gone (see `shown`).
        self._shown = False

    @property
    def shown(self) -> bool:
        """Whether any edit reached Discord. Until one has, the interaction's first followup fills in
        the private "thinking" placeholder (and so is private too) instead of posting a new message."""
        return self._shown

    def set_controls(self, view: discord.ui.View | None) -> None:
        """Buttons to show under the text from the next edit on (None removes them)."""
        # A button appearing or going away is worth an edit of its own, not a throttled one.
        self._urgent = (view is None) != (self._controls is None)
        self._controls = view
        self._with_controls = self._with_controls or view is not None

    async def __call__(self, text: str) -> None:
        if self._closed:
            return
        self._pending = text
        wait = self._last_edit + self._min_interval - time.monotonic()
        urgent, self._urgent = self._urgent, False
        if self._attempts == 0 or wait <= 0 or urgent:
            await self._flush()
        elif self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_later(wait))

    async def _flush_later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        await self._flush()

    async def _flush(self) -> None:
        text, self._pending = self._pending, None
        if text is None or self._closed:
            return
        self._last_edit = time.monotonic()
        self._attempts += 1
        await self._edit(text, self._controls)

    async def _edit(self, text: str, view: discord.ui.View | None) -> bool:
        if token_dead(self._interaction):
            return False
        try:
            async with asyncio.timeout(PROGRESS_EDIT_TIMEOUT):
                # MISSING leaves the message's buttons as they are; None would remove them.
                await self._interaction.edit_original_response(
                    content=text, view=view if self._with_controls else discord.utils.MISSING
                )
        except discord.HTTPException as exc:
            note_token_error(self._interaction, exc)
            log.debug("progress edit failed: %s", exc)
            return False
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.debug("progress edit failed: %s", type(exc).__name__)
            return False
        self._shown = True
        return True

    async def close(self, final: str | None = None) -> bool:
        """Stop updating; optionally write a final line (controls removed). False if it was not shown."""
        self._closed = True
        if self._flusher is not None and not self._flusher.done():
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        if final is None:
            return True
        self._controls = None
        return await self._edit(final, None)


# What the bot needs in a thread to post a result there (an embed and its files); opening one under a
# result needs the right to create it too. Without them the next version of a chain went to a DM.
THREAD_POSTING = discord.Permissions(send_messages_in_threads=True, attach_files=True)
THREAD_OPENING = THREAD_POSTING | discord.Permissions(create_public_threads=True)


def bot_allowed(channel: discord.TextChannel | discord.Thread, needed: discord.Permissions) -> bool:
    """Whether the bot's permissions in `channel` (a thread's: those of its parent, as threads take
    them) include `needed`. False when they cannot be worked out from the cache."""
    me = channel.guild.me
    try:
        if isinstance(channel, discord.Thread):
            return me is not None and needed <= channel.permissions_for(me)
        # A text channel's own resolution drops Attach Files with Send Messages (posting in the channel
        # itself); a thread under it needs neither. Resolved as `Thread.permissions_for` starts: the
        # channel's overwrites, without that rule (a threads-only channel must still get its threads).
        return me is not None and needed <= discord.abc.GuildChannel.permissions_for(channel, me)
    except discord.ClientException:  # a thread whose parent channel is not cached
        return False


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def fit_lines(
    lines: Sequence[str],
    *,
    hidden: int = 0,
    more: str = MORE,
    empty: str = "None",
    limit: int = FIELD_CHARS,
    sep: str = "\n",
) -> str:
    """A list as one embed field: whole lines while they fit in `limit`, then `more` counting the lines
    left out (those that did not fit, plus the `hidden` ones the caller cut already). Cutting the
    joined text instead ends mid-line and loses the note that says how many are missing. `sep` joins
    them (a list shown on one line, such as a provider order, passes its own)."""
    if not lines and not hidden:
        return empty
    for kept in range(len(lines), 0, -1):
        text = _with_more(lines[:kept], hidden + len(lines) - kept, more, sep)
        if len(text) <= limit:
            return text
    return more.format(hidden + len(lines))


def _with_more(lines: Sequence[str], left: int, more: str, sep: str) -> str:
    return sep.join([*lines, more.format(left)] if left else lines)


def utc_day(moment: dt.datetime) -> str:
    """The UTC day of `moment` as plain text, for the bounds of UTC periods (reports, budgets). Not
    Discord's `<t:…:D>`: that shows the reader's own day, so a period starting at midnight UTC reads
    as starting the day before for everyone west of UTC."""
    return f"{moment.astimezone(dt.UTC):%Y-%m-%d}"


def result_embed(outcome: EditOutcome, requester: str) -> discord.Embed:
    """The result's embed; its footer `job <id>` also finds a result a crash interrupted mid-post."""
    embed = discord.Embed(
        description=discord.utils.escape_markdown(truncate(outcome.prompt, PROMPT_PREVIEW_CHARS)),
        colour=EMBED_COLOUR,
    )
    embed.set_author(name=f"Edited for {requester}")
    embed.add_field(name="Model", value=outcome.model_name)
    embed.add_field(name="Quality", value=outcome.quality)
    embed.add_field(name="Size", value=outcome.size)
    embed.add_field(name="Cost", value=f"{outcome.charged} credits")
    embed.add_field(name="Balance", value=f"{outcome.balance_after} credits")
    add_notes(embed, outcome.notices)
    if outcome.files:
        embed.set_image(url=f"attachment://{outcome.files[0].filename}")
    embed.set_footer(text=f"job {outcome.job_id}")
    return embed


def shows_result_of(message: discord.Message, job_id: str, *, footer: str | None = None) -> bool:
    """Whether `message` is a result posted for `job_id`: its embed's footer is `footer` (by default
    `job <id>`), or (where Discord dropped the embed: a channel where the bot lacks Embed Links) its
    files name the job."""
    footer = f"job {job_id}" if footer is None else footer
    return any(e.footer.text == footer for e in message.embeds) or any(
        names_result_of(a.filename, job_id) for a in message.attachments
    )


def add_notes(embed: discord.Embed, notices: Sequence[str]) -> None:
    """One "Note" field per notice, at most `NOTE_FIELDS`; the last holds whatever is left."""
    cut = [truncate(n, NOTE_CHARS) for n in notices]
    shown, rest = cut[: NOTE_FIELDS - 1], cut[NOTE_FIELDS - 1 :]
    if len(rest) == 1:
        shown, rest = [*shown, rest[0]], []
    for note in shown:
        embed.add_field(name="Note", value=note, inline=False)
    if rest:
        embed.add_field(name="Notes", value=fit_lines(rest), inline=False)


def result_files(outcome: EditOutcome) -> list[discord.File]:
    return [discord.File(io.BytesIO(f.data), filename=f.filename) for f in outcome.files]


def role_ids_of(user: discord.abc.User) -> tuple[int, ...]:
    """A member's role ids (including @everyone) for server rules; none outside a server."""
    roles = getattr(user, "roles", None)
    return tuple(role.id for role in roles) if roles else ()


# -- shared by /edit, /mask, the "Edit image" menu and the result buttons ----------------------------

# Discord sometimes omits content_type; the service checks the bytes either way.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")


def upload_of(label: str, attachment: discord.Attachment) -> Upload:
    """An attachment as the job service sees it. The bytes are downloaded once and remembered:
    Discord's attachment URLs expire, and a masked job may be prepared twice (picker, then preview)."""
    data: bytes | None = None

    async def read() -> bytes:
        nonlocal data
        if data is None:
            try:
                data = await attachment.read()
            except (discord.HTTPException, aiohttp.ClientError, TimeoutError) as exc:
                # Gone (its message deleted), or Discord's CDN failed: nothing was held yet.
                log.info("could not download attachment %s: %s", attachment.id, type(exc).__name__)
                raise InvalidImage(messages.upload_unreadable(label), code="download_failed") from None
        return data

    return Upload(label=label, filename=attachment.filename, size=attachment.size, read=read)


EDITABLE_TYPES = ("image/png", "image/jpeg", "image/webp")


def first_image(message: discord.Message) -> discord.Attachment | None:
    """The message's first attachment Retouch can edit (PNG, JPEG or WebP), else its first image of
    another kind (a GIF, HEIC, …), which the edit then refuses by name: a message with a GIF before a
    photo edits the photo."""
    editable = images_of(message)
    if editable:
        return editable[0]
    return next((a for a in message.attachments if _looks_like_image(a)), None)


def images_of(message: discord.Message) -> list[discord.Attachment]:
    """The message's images Retouch can edit, in order (a result of several images)."""
    return [a for a in message.attachments if _looks_like_image(a) and _editable(a)]


def _looks_like_image(attachment: discord.Attachment) -> bool:
    content_type = attachment.content_type or ""
    return content_type.startswith("image/") or attachment.filename.lower().endswith(IMAGE_EXTENSIONS)


def _editable(attachment: discord.Attachment) -> bool:
    content_type = (attachment.content_type or "").split(";")[0].strip().lower()
    if content_type:
        return content_type in EDITABLE_TYPES
    return attachment.filename.lower().endswith(IMAGE_EXTENSIONS)


def _bot(interaction: discord.Interaction) -> RetouchBot:
    bot = interaction.client
    assert isinstance(bot, RetouchBot)  # every cog runs inside RetouchBot
    return bot


def always_answers(callback: Autocomplete) -> Autocomplete:
    """An autocomplete that offers nothing instead of raising. discord.py only logs an autocomplete's
    error and never answers Discord, so the member's option is stuck on "loading" with no way on; a
    refusal (no model allowed for their roles, …) is the command's to say when it is run."""

    @functools.wraps(callback)
    async def answer(interaction: discord.Interaction, current: str) -> Choices:
        try:
            return await callback(interaction, current)
        except RetouchError as exc:
            log.info("autocomplete for user %s offers nothing: %s", interaction.user.id, exc.code)
        except Exception:
            log.exception("autocomplete for user %s failed; it offers nothing", interaction.user.id)
        return []

    return answer


@always_answers
async def model_autocomplete(
    interaction: discord.Interaction, current: str
) -> list[app_commands.Choice[str]]:
    """Autocomplete for a `model` option: the models live today that the member may use here,
    matching what was typed."""
    return _choices(choices.model_options(await _models_here(interaction), current))


@always_answers
async def mask_model_autocomplete(
    interaction: discord.Interaction, current: str
) -> list[app_commands.Choice[str]]:
    """Autocomplete for the `model` of a masked edit: like `model_autocomplete`, masked-edit models only."""
    return _choices(choices.model_options(await _models_here(interaction), current, mask_only=True))


async def _models_here(interaction: discord.Interaction) -> list[ModelEntry]:
    """The models live today that the server's rules let the member use (any other would be swapped
    for an allowed one when the job runs). All live ones when the rules are slow to read."""
    bot = _bot(interaction)
    allowed = await _read_in_time(
        bot.services.policy.models_allowed(interaction.guild_id or 0, role_ids_of(interaction.user)),
        None,
        interaction,
    )
    return [m for m in _lifecycle(interaction).available() if allowed is None or m.id in allowed]


def _lifecycle(interaction: discord.Interaction) -> ModelLifecycle:
    return _bot(interaction).services.edits.lifecycle


async def option_model(bot: RetouchBot, interaction: discord.Interaction) -> ModelEntry:
    """The model a command's `quality`/`size` options are for: the one the member's edit would run on
    here — the `model` typed in the same command if it is known, else their default — within the
    server's rules for their roles."""
    model_id, _ = await _option_choice(bot, interaction)
    return bot.services.policy.model_for_view(model_id)


async def _option_choice(bot: RetouchBot, interaction: discord.Interaction) -> tuple[str, str]:
    """(model, size) of the edit a command's `quality` is suggested for: what `option_model` reads, with
    the size the member's edit would run at too (their default, within the server's rules), so a price
    suggested before a size is typed is the price at that size. Late: the bot's default model, `auto`."""
    policy = bot.services.policy
    typed = getattr(interaction.namespace, "model", None)
    model_id = typed if isinstance(typed, str) and typed in policy.catalog.models else None

    async def read() -> tuple[str, str]:
        choice = await policy.effective_choice(
            interaction.guild_id or 0, interaction.user.id, role_ids_of(interaction.user), model_id
        )
        return choice.model, choice.size

    return await _read_in_time(read(), (model_id or policy.bot_default_model(), choices.AUTO), interaction)


async def _read_in_time(read: Coroutine[Any, Any, T], fallback: T, interaction: discord.Interaction) -> T:
    """What `read` returns, or `fallback` when the database does not answer within
    AUTOCOMPLETE_READ_SECONDS (the read finishes in the background)."""
    task = asyncio.create_task(read)
    done, _ = await asyncio.wait({task}, timeout=AUTOCOMPLETE_READ_SECONDS)
    if task in done:
        return task.result()
    _late_reads.add(task)
    task.add_done_callback(_late_read_done)
    log.info("autocomplete for user %s: policy is slow to read; offered without it", interaction.user.id)
    return fallback


def _late_read_done(read: asyncio.Task[Any]) -> None:
    _late_reads.discard(read)
    if not read.cancelled() and read.exception() is not None:  # retrieved: no "never retrieved" warning
        log.info("autocomplete: a late read of a member's defaults or limits failed: %r", read.exception())


# The attachment options of /edit and /mask that are input images (a mask is not paid as one).
INPUT_IMAGE_OPTIONS = ("image", "image2", "image3", "image4")


@always_answers
async def quality_autocomplete(
    interaction: discord.Interaction, current: str
) -> list[app_commands.Choice[str]]:
    """Autocomplete for a `quality` option: the chosen (or default) model's qualities with their prices."""
    bot = _bot(interaction)
    model_id, default_size = await _option_choice(bot, interaction)
    model = bot.services.policy.model_for_view(model_id)
    per_usd = bot.services.settings.credits_per_usd
    routes = bot.services.edits.lifecycle.live_routes(model)
    size, images, prompt = _typed_edit(interaction.namespace, model, default_size=default_size)
    return _choices(
        choices.quality_options(
            model, current, credits_per_usd=per_usd, routes=routes, size=size, images=images, prompt=prompt
        )
    )


def _typed_edit(
    namespace: app_commands.Namespace, model: ModelEntry, *, default_size: str = choices.AUTO
) -> tuple[str, int, str | None]:
    """(size, input images, prompt) typed so far in the command whose `quality` is being suggested, so
    its prices are what that edit is held: a large free size costs more than any listed one, and every
    input image and the prompt are paid in tokens. Unset: the member's default size (the edit runs at
    it), one image, no prompt yet."""
    typed_size = choices.normalize_size(_typed_str(namespace, "size")) or default_size
    size = typed_size if model.accepts_size(typed_size) else choices.AUTO
    images = sum(getattr(namespace, name, None) is not None for name in INPUT_IMAGE_OPTIONS)
    return size, max(images, 1), _typed_str(namespace, "prompt")


def _typed_str(namespace: app_commands.Namespace, name: str) -> str | None:
    value = getattr(namespace, name, None)
    return value if isinstance(value, str) and value else None


@always_answers
async def size_autocomplete(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
    """Autocomplete for a `size` option: the chosen (or default) model's sizes, and a typed custom size."""
    return _choices(choices.size_options(await option_model(_bot(interaction), interaction), current))


def option_autocomplete(*, mask_only: bool = False) -> Callable[[T], T]:
    """`@app_commands.autocomplete` for an edit's `model`, `quality` and `size` options (a new one per
    command: discord.py consumes the mapping it is given)."""
    return app_commands.autocomplete(
        model=mask_model_autocomplete if mask_only else model_autocomplete,
        quality=quality_autocomplete,
        size=size_autocomplete,
    )


def _choices(pairs: list[tuple[str, str]]) -> list[app_commands.Choice[str]]:
    return [app_commands.Choice(name=name, value=value) for name, value in pairs]


async def admitted(interaction: discord.Interaction, *, counts: bool = False) -> bool:
    """The bot's gate (`RetouchBot.admit`) for buttons, menus and forms, which discord.py does not
    route through the command tree: an unapproved place is answered privately and goes no further."""
    bot = interaction.client
    return isinstance(bot, RetouchBot) and await bot.admit(interaction, counts=counts)


async def report_error(interaction: discord.Interaction, error: BaseException, *, where: str) -> None:
    """Tell the user privately why a button, menu or form failed, like the command tree does for
    commands (discord.py does not route view and modal errors through the tree)."""
    if isinstance(error, RetouchError):
        log.info("%s for user %s refused: %s", where, interaction.user.id, error.code)
        text = error.user_message
    else:
        ref = new_reference()
        log.error("unexpected error in %s (ref %s)", where, ref, exc_info=error)
        text = messages.unexpected_in_control(ref)
    await reply_privately(interaction, text)


# -- persistent controls -------------------------------------------------------------------------------


# The base's own template never matches: only its subclasses are registered.
class PersistentControl(discord.ui.DynamicItem[discord.ui.Item[Any]], template=r"(?!)"):
    """A button or menu whose state is its custom id, `PREFIX:value:value…`, so a click reaches the bot
    after any restart: discord.py matches the id of a clicked component against each registered
    subclass's template and rebuilds the control from it (`from_custom_id`).

    A subclass names its prefix and its fields (name → regular expression) once, as class keywords;
    the same definition writes the custom id (`custom_id_of`, `button`) and reads it back, so the two
    cannot disagree. The ids are on messages already posted: changing a prefix or a field pattern
    orphans their buttons. A click goes to the method `handler` of the cog named `cog`, looked up per
    click (a reloaded cog still answers; an unloaded one leaves the click unanswered), with the
    fields in order (`arguments`); a subclass that answers the click itself (`clicked`) needs neither.
    Errors become private messages, as the command tree does for commands (discord.py does not route
    item errors through it).
    """

    prefix: ClassVar[str]
    fields: ClassVar[tuple[str, ...]]
    cog: ClassVar[str] = ""
    handler: ClassVar[str] = ""

    def __init_subclass__(
        cls, *, prefix: str, fields: dict[str, str], cog: str = "", handler: str = ""
    ) -> None:
        groups = "".join(f":(?P<{name}>{pattern})" for name, pattern in fields.items())
        super().__init_subclass__(template=re.escape(prefix) + groups)
        cls.prefix, cls.fields, cls.cog, cls.handler = prefix, tuple(fields), cog, handler

    def __init__(self, item: discord.ui.Item[Any], *state: str) -> None:
        super().__init__(item)
        self.state = state

    @classmethod
    def custom_id_of(cls, *state: object) -> str:
        return ":".join((cls.prefix, *map(str, state)))

    @classmethod
    def button(cls, *state: object, label: str, style: discord.ButtonStyle, **options: Any) -> Self:
        """A button carrying `state` in its custom id (`options`: `row`, `disabled`, …)."""
        item = discord.ui.Button[Any](label=label, style=style, custom_id=cls.custom_id_of(*state), **options)
        return cls(item, *map(str, state))

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> Self:
        return cls(item, *(match[name] for name in cls.fields))

    def arguments(self) -> tuple[Any, ...]:
        """What the cog's handler gets after the interaction: the fields of the custom id."""
        return self.state

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            await self.clicked(interaction)
        except Exception as error:
            await report_error(interaction, error, where=self.custom_id)

    async def clicked(self, interaction: discord.Interaction) -> None:
        """Answer the click (errors become private messages): by default through the cog's handler."""
        handler = getattr(interaction.client.get_cog(self.cog), self.handler, None)  # type: ignore[attr-defined]
        if handler is not None:
            await handler(interaction, *self.arguments())


class RetouchCog(commands.Cog):
    """A cog with what discord.py does not register from a cog's class body by itself: persistent
    controls (`dynamic_items`) and top-level commands built with the bot (`mounted`: a group, a message
    menu). They are registered while the cog is loaded, so unloading or reloading the extension
    takes them away or replaces them."""

    dynamic_items: ClassVar[tuple[type[PersistentControl], ...]] = ()

    def __init__(self, bot: RetouchBot, *mounted: app_commands.Group | app_commands.ContextMenu) -> None:
        self.bot = bot
        self.mounted = mounted

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(*self.dynamic_items)
        for command in self.mounted:
            self.bot.tree.add_command(command)

    async def cog_unload(self) -> None:
        for command in self.mounted:
            kind = (
                command.type
                if isinstance(command, app_commands.ContextMenu)
                else discord.AppCommandType.chat_input
            )
            self.bot.tree.remove_command(command.name, type=kind)
        self.bot.remove_dynamic_items(*self.dynamic_items)
