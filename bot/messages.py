"""The words a member reads when something is refused — in one place.

The modules that decide (`bot.imaging`, `bot.catalog`, `bot.lifecycle`, `bot.routing`, the services
in `bot.services`, `bot.errors` for provider failures) decide *that* something is refused and why (a
code and its facts); the sentences live here, so wording changes in one file and the deciding
modules hold no user text. Every sentence says what happened and what to do next. The job engine's
words (`bot.jobs`: an edit's progress lines, cancel answers, restart notices, why it ended) are here
for the same reason.

One module on purpose, although it is long: a reader (or a translator) finds every such sentence
here, and none of them depends on another. It imports only the leaf `bot.domain.text` at run time, so
every layer may use it: the cogs' own refusals (who may stop, delete or undo an edit, /mask previews,
offers, /owner) are here too rather than in a Discord-side module, since the wording names commands and
buttons either way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING

from bot.domain.text import showable

if TYPE_CHECKING:
    from bot.catalog import ModelEntry, Route

ACCEPTED = "Upload a PNG, JPEG or WebP"
_KIND_NAMES = {
    "image/gif": "a GIF",
    "image/tiff": "a TIFF",
    "image/bmp": "a BMP",
    "image/heic": "a HEIC photo",
    "image/heif": "a HEIF photo",
    "image/avif": "an AVIF",
    "application/pdf": "a PDF",
}
_KIND_TIPS = {
    "image/gif": " (save the frame you want as PNG)",
    "image/heic": " (on iPhone, export or share it as JPEG)",
    "image/heif": " (export it as JPEG)",
    "application/pdf": " (export the page as PNG)",
}


# -- quoting what a member typed -------------------------------------------------------------------

# What a member typed is echoed back at most this long: Discord refuses a message over 2,000
# characters, and a refusal it refuses never reaches the member (who is left on "thinking…").
ECHO_CHARS = 100


def dollars(amount: Decimal, *, rounding: str = ROUND_HALF_UP) -> str:
    """A dollar amount: to the cent, or below a cent to three significant digits ($0.004, not $0.00,
    and never the 28 digits of a third of a cent), rounded as `rounding` says."""
    if amount == 0 or abs(amount) >= Decimal("0.01"):
        return f"${amount.quantize(Decimal('0.01'), rounding=rounding):.2f}"
    digits = amount.quantize(Decimal(1).scaleb(amount.adjusted() - 2), rounding=rounding)
    return f"${digits.normalize():f}"


def allotment(usd: Decimal | None) -> str:
    """What a server may spend a month: its allotment, or (None) up to the bot-wide budget."""
    return "the bot-wide budget" if usd is None else f"{dollars(usd)} a month"


def providers_without_key(names: list[str]) -> str:
    which = ", ".join(names)
    verb = "has" if len(names) == 1 else "have"
    return f"{which} {verb} no API key on this bot, so edits skip it until the bot's operator sets one."


def default_model_not_allowed(model: str, allowed: list[str]) -> str:
    return (
        f"{model} is not among this server's allowed models ({', '.join(allowed)}), so it cannot be the "
        "server's default. Allow it with `/admin policy limits models`, or pick an allowed model as the "
        "default first."
    )


def under_one_credit(what: str, credits_per_usd: int) -> str:
    # Rounded up: the least amount named must itself be accepted (one credit or more).
    smallest = dollars(Decimal(1) / credits_per_usd, rounding=ROUND_CEILING)
    return (
        f"That {what} is less than one credit, so it would refuse every edit. Set at least {smallest}, "
        "or 0 for none."
    )


def echo(typed: str) -> str:
    """Something a member typed, cut to `ECHO_CHARS` (with an ellipsis) to quote it back."""
    return typed if len(typed) <= ECHO_CHARS else typed[: ECHO_CHARS - 1] + "…"


def echo_list(typed: Iterable[str]) -> str:
    """Several things a member typed, as one quote cut to `ECHO_CHARS`: one long word or many short
    ones fit the same."""
    return echo(", ".join(typed))


# A link in someone's text: anything with a scheme or `www.`, and, written bare, the Discord hosts whose links
# Discord still turns into cards (invites, gifts, templates and short links: discord.gg/…, discord.gift/…,
# discord.new/…, discord.com/gifts/…, dsc.gg/…). Any other `word.word/word` (image1.png/image2.png,
# node.js/react, St.Louis/Missouri) is neither linked nor carded by Discord, and is shown as typed.
LINK = re.compile(
    r"\S+://\S+|www\.\S+|(?:[\w-]+\.)*(?:discord(?:app)?\.com|discord\.(?:gg|gift|new|me|io)|dsc\.gg)/\S*",
    re.IGNORECASE,
)
LINK_SHOWN = "[link]"
# Discord's markdown, masked links, mentions, timestamps and custom emoji all start at one of these.
_MARKUP = re.compile(r"([\\*_~|`<>\[\]()#])")


def without_links(text: str) -> str:
    """`text` with each link (`LINK`) replaced by "[link]"."""
    return LINK.sub(LINK_SHOWN, text)


def as_typed(text: str) -> str:
    """Text someone wrote, for the bot to repeat in its own name: links replaced by "[link]", control
    characters and direction overrides dropped, and every markdown character escaped, so it shows as
    typed (no masked link, heading, bold, mention pill or line turned around)."""
    return _MARKUP.sub(r"\\\1", without_links(showable(text)))


# -- images and masks (bot.imaging) ---------------------------------------------------------------


def empty_file(name: str) -> str:
    return f"{name} is an empty file. Upload the image again."


def too_large(name: str, size: int, limit: int) -> str:
    return (
        f"{name} is {megabytes(size)}, over the {megabytes(limit)} limit. "
        "Upload a smaller file (a JPEG or WebP export is usually much smaller)."
    )


def wrong_type(name: str, mime: str | None) -> str:
    if mime is None:
        return f"{name} is not an image Retouch can read. {ACCEPTED}."
    kind = _KIND_NAMES.get(mime, "that type of file")
    return f"{name} is {kind}, which Retouch can't edit. {ACCEPTED}{_KIND_TIPS.get(mime, '')}."


def too_many_pixels(name: str, max_pixels: int) -> str:
    return (
        f"{name} has too many pixels (the limit is {megapixels(max_pixels)}). "
        "Downscale it and upload it again."
    )


def corrupt(name: str) -> str:
    return (
        f"{name} could not be read: the file looks damaged or incomplete. Re-export it and upload it again."
    )


def too_small(name: str, width: int, height: int, min_side: int) -> str:
    return f"{name} is only {width}×{height} pixels. Upload an image at least {min_side} pixels on each side."


def animated(name: str, frames: int) -> str:
    return (
        f"{name} is animated ({frames} frames). Upload a still image: a PNG, JPEG or WebP "
        "of the frame you want."
    )


MASK_TOO_DETAILED = "The mask is too detailed for the image service. Use simpler, solid shapes and try again."
MASK_EMPTY = (
    "The mask doesn't mark anything to edit. Paint the area to change white (or erase it to "
    "transparent) and leave the rest black, or turn `invert` off."
)
MASK_LIGHT_ON_CLEAR = (
    "Your mask has transparency, so its transparent part is what changes and its white part is "
    "kept. If you painted the white part to mark the change, use `/mask` with `invert` on."
)
MASK_FULL = (
    "The mask marks the whole image. Mark only the part to change, or use the edit command "
    "without a mask to change everything."
)


def mask_shape(mask_size: tuple[int, int], image_size: tuple[int, int]) -> str:
    return (
        f"The mask is {mask_size[0]}×{mask_size[1]} but the image is {image_size[0]}×{image_size[1]}, "
        "a different shape. Draw the mask over a copy of the image so both match."
    )


def no_such_cell(cell: int, cells: int) -> str:
    return f"There is no cell {cell}. Pick cell numbers from 1 to {cells}."


def megabytes(size: int) -> str:
    # Binary megabytes labelled "MB", as Discord's own upload limits are.
    return f"{_short_number(size / (1024 * 1024))} MB"


def megapixels(pixels: int) -> str:
    return f"{_short_number(pixels / 1_000_000)} megapixels"


def _short_number(value: float) -> str:
    return f"{value:.1f}".removesuffix(".0")


# -- models (bot.catalog, bot.lifecycle) ----------------------------------------------------------


def unknown_model(model_id: str) -> str:
    return f"Unknown model `{echo(model_id)}`. Pick one from the list the `model` option suggests."


NO_LIVE_MODEL = (
    "No image model is available from the image services this bot is set up with. "
    "Ask the bot's operator to check `/diagnose`."
)


def model_gone(name: str, *, mid_run: bool, replacement: tuple[str, str] | None) -> str:
    """A picked model no configured service sells any more; `replacement` is (name, id)."""
    head = (
        f"{name} was shut down by the image service while your edit was waiting."
        if mid_run
        else f"{name} is no longer available from the image services this bot uses."
    )
    if replacement is not None:
        offer = f"Its replacement is **{replacement[0]}**: run the edit again with `model: {replacement[1]}`"
    else:
        offer = "Run the edit again with another model"
    return f"{head} {offer}, or leave `model` empty for the default. You were not charged."


def model_retired(name: str, replacement: tuple[str, str] | None) -> str:
    """A dead model chosen as a default or allowed by a rule (nothing is saved); `replacement` is
    (name, id)."""
    head = f"{name} is no longer available from the image services this bot uses, so nothing was changed."
    if replacement is not None:
        return f"{head} Its replacement is **{replacement[0]}**: pick `{replacement[1]}` instead."
    return f"{head} Pick another model from the list the `model` option suggests."


def retiring_on(name: str, day: str) -> str:
    return f"{name} will be retired on {day}."


def replaced(asked: str, used: str) -> str:
    return f"{asked} has been retired, so this edit used {used} instead."


def defaulted(asked: str, used: str) -> str:
    return f"{asked} is no longer available, so this edit used {used}."


def default_moved(dead: str, target: str | None) -> str:
    """The one-time notice to a member whose stored default pointed at a dead model."""
    then = f"your default is now {target}" if target else "your edits now use the bot's default model"
    return f"{dead} is no longer available, so {then} (change it with /settings)."


def moved_mid_run(dead: str, used: str) -> str:
    return f"{dead} was shut down by the image service, so this edit used {used}."


# -- routes (bot.routing) -------------------------------------------------------------------------


def no_route(model: str) -> str:
    return f"No configured image service sells {model}. Pick another model."


def over_hold(model: str) -> str:
    """Every route left for a held job costs more than it holds (its prices or routes changed since)."""
    return (
        f"{model} now costs more than was set aside for this edit, so it was not sent. "
        "Nothing was charged; try again."
    )


def unservable(model: str, route: Route, problems: tuple[str, ...]) -> str:
    """The options to change so `route` (the closest one) can serve the job, with what it offers."""
    hints = []
    for problem in problems:
        match problem:
            case "mask":
                hints.append("remove the `mask`")
            case "images":
                hints.append(f"attach at most {route.max_input_images} image(s)")
            case "size":
                hints.append(f"set `size` to one of {', '.join(route.sizes)}")
            case "quality":
                hints.append(f"set `quality` to one of {', '.join(route.qualities)}")
            case "background":
                hints.append(f"set `background` to one of {', '.join(route.backgrounds)}")
            case "format":
                hints.append(f"set `format` to one of {', '.join(route.output_formats)}")
            case "mask_background":
                # /mask has no background option: a masked edit takes the member's saved one.
                backgrounds = " or ".join(route.mask_backgrounds)
                hints.append(f"set your background in /settings to {backgrounds} for a masked edit")
            case "transparent_format":
                formats = ", ".join(route.transparent_formats)
                hints.append(f"set `format` to one of {formats} for a transparent background")
            case "prompt":
                hints.append(f"shorten the prompt to {route.max_prompt_chars} characters")
            case _:
                hints.append(f"drop `{problem.replace('_', ' ')}`")  # input_fidelity: no /edit option
    return (
        f"The image services configured for {model} cannot do this as asked: "
        f"{'; '.join(hints)}, or pick another model."
    )


# -- an edit's options, uploads and mask (bot.services.edits) -------------------------------------

EMPTY_PROMPT = "The prompt is empty. Describe the change you want."
TRANSPARENT_NEEDS_FORMAT_OPTION = (
    "A transparent background needs PNG or WebP output. Set `format` to png or webp."
)


def upload_unreadable(label: str) -> str:
    return (
        f"Discord would not give me `{label}` (it may have been deleted). Attach it again and try once more."
    )


MASK_FILE_TOO_LARGE = "The mask file is too large. Upload a smaller PNG (black and white, white = edit)."
NO_AREA_PICKED = "Pick at least one area of the image to change."
# The grid picker's own words for a selection that covers the whole image: a member who picked cells
# has no mask file to paint (MASK_FULL / MASK_EMPTY are for those).
EVERY_CELL_PICKED = (
    "You picked every cell, so the whole image would change. Leave at least one cell out, "
    "or use /edit to change the whole image."
)
EVERY_CELL_KEPT = (
    "You picked every cell and `invert` is on, so every cell would be kept and nothing would change. "
    "Leave at least one cell out."
)


def prompt_too_long(chars: int, model: str, max_chars: int) -> str:
    return f"The prompt is {chars} characters; {model} accepts at most {max_chars}. Shorten it and try again."


def quality_not_offered(model: ModelEntry, quality: str) -> str:
    return (
        f"{model.name} does not offer quality `{echo(quality)}`. Pick one of: {', '.join(model.qualities)}."
    )


def size_not_offered(model: ModelEntry, size: str) -> str:
    """A size `model` cannot make, naming what it can."""
    listed = ", ".join(model.sizes)
    if model.size_rules is None:
        return f"{model.name} does not offer size `{echo(size)}`. Pick one of: {listed}."
    why = model.size_rules.problem(size)
    return (
        f"{model.name} cannot make size `{echo(size)}` ({why}). Pick one of {listed}, or "
        f"{model.size_rules.describe()}."
    )


def count_range(max_images: int) -> str:
    return f"`count` must be between 1 and {max_images}."


def too_many_inputs(model: str, max_images: int) -> str:
    return f"{model} accepts at most {max_images} input image(s)."


def no_mask_support(model: str) -> str:
    return f"{model} cannot do masked edits. Pick another model for /mask."


def upload_too_large(label: str, size: int, limit: int) -> str:
    """Refused from the size Discord declares, before any download (bot.imaging's `too_large` reads
    the bytes)."""
    return (
        f"`{label}` is {size / 1048576:.1f} MB; the limit is "
        f"{limit / 1048576:.0f} MB. Upload a smaller PNG, JPEG or WebP."
    )


# -- Retry, Undo, Stop and Delete on a posted result (bot.services.edits, cogs) -------------------

UNKNOWN_EDIT = "This edit is not known any more. Run /edit again."
RETRY_ELSEWHERE = (
    "This edit was made in a server: retry it there (Retouch checks your roles in that "
    "server), or run /edit here."
)
RETRY_NOT_REQUESTER = (
    "Only the person who asked for this edit can retry it (it reuses their images). "
    "Use **Edit again** to edit the result yourself."
)
STOP_NOT_ALLOWED = (
    "Only the person who asked for this edit, or a member who can manage messages here, can stop it."
)
DELETE_NOT_ALLOWED = (
    "Only the person who asked for this edit, or a member who can manage messages, can delete it."
)
UNDO_NOT_REQUESTER = "Only the person who made this edit, or a moderator, can undo it."
NOTHING_TO_UNDO = "This is the first version of this edit: there is nothing to undo."
PROMPT_NOT_KEPT = "*(prompt no longer kept)*"
FORM_EXPIRED = (
    "This form was open too long, or Retouch restarted since it was opened, so it cannot be sent. "
    "Use **Edit image** on the message again."
)
POSTED_CHARGE_PENDING = "Your result is posted. Its charge will show in /credits shortly."
PREVIOUS_VERSION_DELETED = "The previous version was deleted from Discord, so it cannot be posted again."
PREVIOUS_VERSION_UNREADABLE = (
    "Retouch can no longer read the previous version in that channel (it may have lost the Read Message "
    "History permission there), so it cannot be posted again."
)


def which_image(count: int) -> str:
    return f"This result has {count} images: pick one from 1 to {count}, or leave it empty for the first."


RESULT_IMAGE_GONE = "That result no longer has its image. Use /edit with a file instead."


def inputs_expired(hours: float) -> str:
    return (
        f"The original images of this edit are no longer kept (Retouch keeps them for {hours:g} "
        "hours). Use **Edit again** on the result, or run /edit with the images."
    )


def history_expired(hours: float) -> str:
    return (
        f"Retouch keeps an edit's history for {hours:g} hours; this one is older. "
        "Use **Edit again** or /edit."
    )


# -- an edit in the job engine: progress, cancel, restarts, endings and delivery (bot.jobs) ----------


def describe_wait(seconds: float) -> str:
    """A short, honest duration for queue estimates."""
    if seconds < 60:
        return "less than a minute"
    return f"about {max(1, round(seconds / 60))} min"


def queue_position(position: int, eta: float | None) -> str:
    """`eta`: seconds until the result should be ready (None while there is no estimate)."""
    text = f"Queued — position {position} in line."
    if eta is not None:
        text += f" Your result should be ready in {describe_wait(eta)}."
    return text


def editing(model: str, elapsed: int) -> str:
    return f"Editing with {model}… ({elapsed} s)"


UPLOADING = "Uploading the result…"


def done(charged: int, balance: int) -> str:
    return f"Done — {charged} credits charged, {balance} left."


def done_charged(charged: int) -> str:
    """`done` when the balance cannot be read (it shows in /credits)."""
    return f"Done — {charged} credits charged."


JOB_UNKNOWN = "This edit is not known any more."
CANCEL_NOT_ALLOWED = (
    "Only the person who asked for this edit, or a member who can manage messages, can cancel it."
)
CANCELLED = "Cancelled — you were not charged."
# A template: `.format(charged=credits)`.
CANCELLED_AT_PROVIDER = (
    "Cancelled. The image service had already started this edit and charges for it, so "
    "{charged} credits were charged."
)
TOO_LATE_BEING_POSTED = "Too late to cancel: your edit is finished and being posted."
TOO_LATE_POSTED = "Too late to cancel: your edit was already posted."
ALREADY_ENDED = "This edit has already ended."


CANCELLING_SLOWLY = (
    "Cancelling — the image service is slow to let go of this edit. Its progress message will say how "
    "it ended."
)


def stopped_notice(requester_id: int, moderator_id: int | None, charged: int) -> str:
    """The public notice of a running edit once it was stopped (by a moderator, or the requester).
    What a requester's own stop cost stays out of the channel: their progress message says it."""
    who = f"a moderator (<@{moderator_id}>)" if moderator_id is not None else "the requester"
    cost = "" if charged else " Nothing was charged."
    return f"🛑 <@{requester_id}>'s edit was stopped by {who}.{cost}"


def cancelling_elsewhere(seconds: int) -> str:
    """A cancel recorded for the bot process that runs the edit (several share the database)."""
    return f"Cancelling — another Retouch process is running this edit; it stops within {seconds} seconds."


def timed_out(*, queued: bool) -> str:
    where = "waited too long in the queue" if queued else "took too long"
    return f"Your edit {where} and was cancelled. You were not charged; please try again later."


INTERRUPTED = "Retouch had to restart before your edit finished. You were not charged; please run it again."
# The process holding this member's progress message lost the job to another process (it could not
# renew its lease for a while); only this process can edit that message, so it says so as it lets go.
# What the other process does with the job (posts it, releases it, cancels it) is not known here.
TAKEN_OVER_ELSEWHERE = (
    "Another Retouch process has taken this edit over. It will post the result, or tell you what "
    "happened, in this channel."
)
SUSPENDED_AT_PROVIDER = (
    "Retouch is restarting. Your edit is still being made and will be posted in this channel when "
    "it is ready."
)
RESTARTED_BEFORE_START = (
    "Retouch restarted before your edit could start. You were not charged; please run it again."
)
SUSPENDED_IN_QUEUE = (
    "Retouch is restarting. Your edit keeps its place in the queue and starts when Retouch is back."
)
RESTARTED_MID_SUBMIT = (
    "Retouch restarted while your edit was being made, so the result was lost. "
    "You were not charged; please run it again."
)
EDIT_WENT_WRONG = "Something went wrong with this edit. You were not charged."


def about_your_edit(where: str | None, text: str) -> str:
    """How an edit ended, told by DM (its command's private message could not say it any more);
    `where`: a link to the channel it was asked in."""
    return f"About your edit in {where}: {text}" if where else f"About your edit: {text}"


def edit_not_finished(user_id: int, charged: int) -> str:
    """The channel's line for a member whose DMs are closed: that their edit ended, what it cost and
    where to look; never why (a refusal of their prompt, say, is nobody else's business)."""
    cost = f"{charged} credits were charged" if charged else "you were not charged"
    return (
        f"<@{user_id}> your edit could not be finished, and {cost}. Retouch could not send you the "
        "details by DM; /credits shows your balance and its history."
    )


def charged_then_failed(charged: int) -> str:
    return f"Your edit was posted and charged ({charged} credits), but something went wrong afterwards."


UNDELIVERABLE = "Your edit was made but could not be posted here or sent to you by DM. You were not charged"
DELIVERY_DELAYED = (
    "Your edit is ready, but Discord is not taking it right now. It will be posted as soon as Discord "
    "answers again; nothing is charged until it is."
)


def with_reference(text: str, ref: str) -> str:
    """A failure's text with the reference that ties it to the log."""
    return f"{text} (ref `{ref}`)"


# -- /mask previews, the Edit image menu and cheaper-run offers (cogs) ----------------------------

NO_IMAGE_ATTACHED = (
    "That message has no image attached. Use **Edit image** on a message with a PNG, JPEG or WebP file."
)
NOT_YOUR_PREVIEW = "This preview belongs to someone else."
OFFER_GONE = "This offer was already used or has expired. Run the command again."


def preview_expired(lasts: str) -> str:
    """`lasts`: how long a preview waits for a click, in words ("5 minutes")."""
    return (
        f"This preview has expired (previews last {lasts} without a click, and do not "
        "survive a restart). Nothing was charged — run `/mask` again."
    )


def too_many_previews(limit: int) -> str:
    return (
        f"You already have {limit} /mask preview(s) open. Run or cancel one of them first "
        "(they also expire after a few minutes). Nothing was charged."
    )


def preview_unaffordable(cost: int, balance: int) -> str:
    return (
        f"This edit can cost up to {cost} credits and you have {balance}. "
        "Try a lower quality, or ask an admin for credits."
    )


# -- which servers are served, the operator, rate limits (bot.services.access) --------------------

NOT_APPROVED = (
    "Retouch is not enabled on this server. The bot's operator has to approve it first; "
    "nothing was done or charged."
)
NOT_APPROVED_OPERATOR = (
    "Retouch is not enabled on this server yet, so nothing was done. You run this bot: approve the "
    "server with the button below (or add its id to ALLOWED_GUILD_IDS)."
)
# A server unapproved between the command and its hold.
NOT_APPROVED_ANY_MORE = "Retouch is not enabled on this server. Nothing was charged."
DMS_OFF = "Retouch does not work in direct messages here. Use it in a server where it is enabled."
DMS_OFF_OPERATOR = "Direct messages are off for Retouch. Set ALLOW_DMS=on to use it here."
NOT_OPERATOR = "Only the operator of this bot (its owner) can do that."
ALREADY_STARTED = "That edit is already being started from your first click; this one was ignored."
UNDO_ALREADY_STARTED = (
    "That version is already being posted again from the first click; this one was ignored."
)


def rate_limited(per_minute: int, retry_after: float) -> str:
    return (
        f"Slow down: Retouch takes {per_minute} commands a minute from one member. "
        f"Try again in {max(1, round(retry_after))} s. Nothing was charged."
    )


# -- credits, budgets and the server's rules (bot.errors, bot.services.policy) ---------------------


def insufficient_credits(needed: int, available: int) -> str:
    return (
        f"This edit needs up to **{needed}** credits but you have **{available}** available. "
        "Try a lower quality, fewer images, or ask an admin for credits."
    )


NO_CREDITS_LEFT = (
    "You have no credits left on this server, so nothing was done. Ask a server admin "
    "for credits, or wait for your allowance to refill (see /credits)."
)
NO_ALLOWED_MODEL = "None of the image models is enabled for your roles on this server. Ask a server admin."


def cooldown(seconds: int, next_at: str) -> str:
    """`next_at`: Discord's timestamp markup, so every reader sees it in their own time zone."""
    return f"This server allows one edit every {seconds} s. You can start the next one {next_at}."


def too_many_running(running: int) -> str:
    return (
        f"You already have {running} edit(s) running, the most this server allows at once. "
        "Start this one when one of them has finished."
    )


def _operator_budget(share: bool) -> str:
    return "this server's share of" if share else "all of"


def operator_budget_spent(*, share: bool, resume: str) -> str:
    """The operator's budget is used up: this server's allotment (`share`) or the whole bot's."""
    return (
        f"Retouch has used {_operator_budget(share)} the image budget its operator set for this month. "
        f"Edits resume {resume}, or the bot's operator can raise it. Nothing was charged."
    )


def operator_budget_short(*, share: bool, credits: int, left: int) -> str:
    return (
        f"This edit can cost up to {credits} credits, but only {left} are left in {_operator_budget(share)} "
        "the image budget the bot's operator set for this month. Try a lower quality or fewer "
        "images. Nothing was charged."
    )


def server_budget_spent(resume: str) -> str:
    return (
        f"This server has used its image budget for this month. Edits resume {resume}, "
        "or a server admin can raise the budget."
    )


def server_budget_short(credits: int, left: int) -> str:
    return (
        f"This edit can cost up to {credits} credits, but only {left} are left in this server's "
        "budget for this month. Try a lower quality or fewer images, or ask a server admin."
    )


def role_model(asked: str, used: str) -> str:
    return f"Your roles on this server can't use {asked}, so Retouch uses {used}."


def default_quality_not_offered(model: str, asked: str, used: str) -> str:
    """A default quality (not typed on the command) the model in use lacks."""
    return f"{model} does not offer {asked} quality, so Retouch uses {used} (change it with /quality)."


def kept_as_png(asked: str) -> str:
    """A masked result too long on one side for the format asked for (WebP 16,383 px, JPEG 65,500)."""
    name = {"webp": "WebP", "jpeg": "JPEG"}.get(asked, asked.upper())
    return f"Saved as PNG: {name} cannot hold an image this long on one side."


def fitted_to_upload_limit(formats: Iterable[str]) -> str:
    """An unmasked result too large for the upload limit: re-encoded (and made smaller when that was
    not enough) rather than lost. Said, since the file is not the format or size the member asked."""
    names = " and ".join(sorted({{"webp": "WebP", "jpeg": "JPEG"}.get(f, f.upper()) for f in formats}))
    return (
        f"{_FITTED_LEAD} {names} at a lower quality (and made smaller where that was not enough). "
        "A smaller size or fewer images keeps it as asked."
    )


_FITTED_LEAD = "Too large for Discord's upload limit, so it was saved as"


def is_fitted_notice(notice: str) -> bool:
    """Whether `notice` is a `fitted_to_upload_limit` line (a DM's fit replaces the server's)."""
    return notice.startswith(_FITTED_LEAD)


KEPT_AS_LOSSLESS_WEBP = (
    "Saved as lossless WebP to fit Discord's upload limit: the same pixels as the PNG, in fewer bytes."
)
RESTORED_NOT_EXACT = (
    "Too large for Discord's upload limit, so it was made smaller: outside the area you marked it is "
    "close to your original, not identical. A smaller size or fewer images keeps it exact."
)


def default_not_offered(
    model: str, option: str, asked: str, *, uses: str = "auto", masked: bool = False
) -> str:
    """A default size, background or format (not typed on the command) the model in use cannot make
    (`masked`: with a mask, which is what it could not make it with)."""
    with_mask = " with a mask" if masked else ""
    return (
        f"{model} cannot make {option} `{echo(asked)}`{with_mask}, so Retouch uses {uses} "
        "(change it with /settings)."
    )


def option_not_offered(model: str, option: str, asked: str, offered: Iterable[str]) -> str:
    """A background or format set with /settings that the member's model cannot make here."""
    return f"{model} cannot make {option} `{echo(asked)}` here. Pick one of: {', '.join(offered)}."


def role_quality(cap: str, asked: str) -> str:
    return (
        f"Your roles on this server allow at most **{cap}** quality, so Retouch uses {cap} "
        f"instead of {asked}."
    )


def role_images(max_images: int) -> str:
    return (
        f"Your roles on this server allow at most {max_images} image(s) per edit, "
        f"so Retouch makes {max_images}."
    )


# -- a cheaper run when the asked quality does not fit (bot.services.affordable) -------------------


def auto_quality_used(asked_credits: int, available: int, quality: str, credits: int) -> str:
    return (
        f"`auto` quality could cost up to {asked_credits} credits, more than the {available} "
        f"available, so Retouch used **{quality}** (at most {credits} credits)."
    )


def cheaper_offer(
    asked_quality: str, asked_credits: int, available: int, quality: str, credits: int, *, budget: bool
) -> str:
    """The offer of a cheaper run (`budget`: the server's monthly budget is short, not the balance)."""
    short = (
        f"only **{available}** are left in this server's budget for this month"
        if budget
        else f"you have **{available}** available"
    )
    return (
        f"At **{asked_quality}** quality this edit can cost up to **{asked_credits}** credits, but "
        f"{short}. At **{quality}** it costs at most **{credits}** credits."
    )


def cheaper_button(quality: str, credits: int) -> str:
    return f"Run at {quality} for at most {credits} credits"


# -- settings and admin commands (bot.services.policy, bot.services.admin) -------------------------

TRANSPARENT_NEEDS_FORMAT = "A transparent background needs PNG or WebP output. Set the format to png or webp."
QUALITY_CAP = "The quality cap must be low, medium, high, xhigh or max."
ALLOWANCE_PERIOD = "The period must be daily, weekly or monthly."
CREDIT_ACTION = "Use grant, take or set with a positive amount."
NO_REASON = "Give a reason; it is kept in the ledger."
ALLOTMENT = "The allotment must be 0 or more US dollars."
NEEDS_MANAGE_SERVER = "You need the Manage Server permission to do that."
NOT_ON_ADMIN_LIST = (
    "Only the admins listed in this bot's ADMIN_USER_IDS setting can change credits and policy."
)


NO_SERVER_GIVEN = "Give the server's id (right-click the server → Copy Server ID)."
SERVER_ID_NOT_A_NUMBER = "A server id is a number (right-click the server → Copy Server ID)."


def no_such_route(model_id: str, provider: str) -> str:
    """/owner revive for a model no configured service `provider` sells."""
    return f"`{echo(model_id)}` has no route on `{echo(provider)}` here. `/owner routes` lists them."


def route_dead_otherwise(model_id: str, provider: str, why: str) -> str:
    """/owner revive for a route a "model gone" answer retired that is also dead for another reason."""
    return (
        f"`{echo(model_id)}` on `{echo(provider)}` is also {why}, so bringing it back would not make it "
        "live. `/owner routes` says why a route is not live."
    )


def route_not_retired(model_id: str, provider: str) -> str:
    """/owner revive for a route no "model gone" answer retired (a date or a model list may have)."""
    return (
        f'`{echo(model_id)}` on `{echo(provider)}` was not retired by a "model gone" answer, so there is '
        "nothing to bring back. `/owner routes` says why a route is not live."
    )


def route_revived(provider: str, model_id: str, routes: int) -> str:
    """/owner revive done: the route(s) take edits again, and the audit channel was told."""
    which = "Its route is" if routes == 1 else f"Its {routes} routes there are"
    return f"`{echo(model_id)}` on `{provider}` is back. {which} live again for the next edit."


def listed_in_settings(guild_id: int) -> str:
    """/owner remove for a server ALLOWED_GUILD_IDS lists: the setting wins."""
    return f"Server `{guild_id}` is listed in ALLOWED_GUILD_IDS; remove it there and restart."


def not_one_of(option: str, allowed: Iterable[str]) -> str:
    return f"`{option}` must be one of {', '.join(allowed)}."


def quality_one_of(qualities: Iterable[str]) -> str:
    return f"Quality must be one of {', '.join(qualities)}."


def size_help(sizes: Iterable[str], free_sizes: str) -> str:
    """`free_sizes`: the rules for WIDTHxHEIGHT (`SizeRules.describe`)."""
    return (
        f"Size must be one of {', '.join(sizes)}, or WIDTHxHEIGHT for models that take free sizes "
        f"({free_sizes})."
    )


def report_period(periods: Iterable[str]) -> str:
    return f"Pick a report period: {', '.join(periods)}."


REPORT_TOO_LARGE = (
    "This period holds too many ledger rows for one file Discord takes, even compressed, so no CSV is "
    "attached. Pick a shorter period for the rows; the totals below cover the whole period."
)


def unknown_models(unknown: Iterable[str], known: Iterable[str]) -> str:
    return f"Unknown model(s): {echo_list(unknown)}. Known: {', '.join(known)}."


def unknown_providers(unknown: Iterable[str], known: Iterable[str]) -> str:
    return f"Unknown provider(s): {echo_list(unknown)}. Known: {', '.join(known)}."


# -- the safety check (bot.services.moderation) ---------------------------------------------------


def safety_cannot_read(which: str) -> str:
    return (
        f"The safety check could not read {which}, so it was not sent. Save it again as a plain PNG or "
        "JPEG and try once more. You were not charged."
    )


# What members read for each category the moderation API returns.
CATEGORY_NAMES = {
    "harassment": "harassment",
    "harassment/threatening": "threats",
    "hate": "hate",
    "hate/threatening": "hateful threats",
    "illicit": "illegal activity",
    "illicit/violent": "violent illegal activity",
    "self-harm": "self-harm",
    "self-harm/intent": "self-harm",
    "self-harm/instructions": "self-harm instructions",
    "sexual": "sexual content",
    "sexual/minors": "sexual content involving minors",
    "violence": "violence",
    "violence/graphic": "graphic violence",
}


_CATEGORY_SHAPE = re.compile(r"[a-z][a-z/-]{0,39}")


def flagged(category: str, where: str) -> str:
    """`where`: what was flagged ("your prompt", "image 2", …)."""
    name = CATEGORY_NAMES.get(category)
    if name is None:
        # A category this list lacks comes from the moderation service (or a gateway standing in for
        # it): shown only if it reads like one, never as free text.
        name = category.replace("/", " / ") if _CATEGORY_SHAPE.fullmatch(category) else "unsafe content"
    return (
        f"Retouch's safety check flagged {where} for **{name}**, so nothing was sent to the image "
        "service. Change it and try again. You were not charged."
    )


# -- provider failures (bot.errors.message_for_provider_error) and the bot itself ----------------

PROVIDER_REFUSED = (
    "The image service's safety system refused this request. Try rephrasing the prompt "
    "or using a different image. You were not charged."
)
PROVIDER_INVALID_INPUT = (
    "The image service could not use this image or option. Try a different image (PNG or JPEG) "
    "or other options. You were not charged."
)
PROVIDER_MODEL_UNAVAILABLE = (
    "That model is not available from the image service right now. Pick another model. You were not charged."
)
PROVIDER_BUSY = "The image service is busy right now. Please try again in a minute. You were not charged."
PROVIDER_UNAVAILABLE = (
    "The image service is not available for this bot right now (the admin has been told). "
    "Please try again later. You were not charged."
)
PROVIDER_TIMEOUT = "The image service took too long to answer. Please try again later. You were not charged."
PROVIDER_JOB_FAILED = "The image service could not finish this edit. Please try again. You were not charged."
PROVIDER_FAILED = (
    "The image service failed to answer. Please try again in a few minutes. You were not charged."
)
SHUTTING_DOWN = "Retouch is restarting and not taking new edits right now. Please try again in a minute."


def unexpected(reference: str) -> str:
    """Anything unexpected in a command or the gate before it: the reference ties it to the logged
    traceback. Nothing is charged before a command's edit is queued, and the engine answers for it."""
    return f"Something went wrong (ref `{reference}`). You were not charged; please try again."


def unexpected_in_control(reference: str) -> str:
    """Anything unexpected in a button, menu or form: no claim about money, since the click may come
    after an edit was queued or posted (a Stop as the edit ends, a Retry whose edit runs on)."""
    return f"Something went wrong (ref `{reference}`). Please try again."
