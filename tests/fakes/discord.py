"""A local fake Discord that the real, unmodified discord.py client connects to.

It serves, on 127.0.0.1 and one random port:

* the REST API under ``/api/v10`` (bot-token routes, interaction callbacks, interaction webhooks),
* a gateway websocket at ``/gateway`` (HELLO, heartbeat ACK, IDENTIFY -> READY + GUILD_CREATE,
  RESUME -> op 9),
* an attachment CDN under ``/cdn`` (signed, expiring URLs, like Discord's).

It validates what the bot sends the way Discord does and fails the way Discord fails: the same HTTP
statuses, JSON error codes and bodies (3-second ack window -> 10062, double ack -> 40060, expired
interaction token -> 50027, > 10 attachments -> 30015, files over the size limit together -> 413/40005,
content and embed limits -> 50035, unknown channel/message -> 10003/10008, missing permissions ->
50013, ...). Routes it does not implement answer 404 and are recorded in :attr:`FakeDiscord.unknown`.
A repeated ``nonce`` with ``enforce_nonce`` returns the first message, and :meth:`FakeDiscord.hold`
keeps chosen requests waiting until the test releases or drops them (to stop a bot in the middle of a
delivery).

Pointing discord.py at it (an ``AutoShardedBot`` asks ``GET /gateway/bot`` for the websocket URL, so only
``Route.BASE`` has to change)::

    fake = FakeDiscord()
    await fake.start()
    discord.http.Route.BASE = fake.api_base
    guild = await fake.create_guild(name="Art")
    channel = await guild.create_text_channel("art")
    alice = fake.create_user("alice")
    await guild.add_member(alice)
    bot._connection.guild_ready_timeout = 0.05  # discord.py waits 2 s after the last GUILD_CREATE
    fake.attach_error_capture(bot)
    task = asyncio.create_task(bot.start(fake.token))
    await asyncio.sleep(0)  # let start() get going before anything waits on the bot
    fake.watch_task(task)
    await fake.wait_for(bot.wait_until_ready())
    it = await fake.slash(alice, "edit", channel=channel, attachments={"image": ("cat.png", png)})
    await fake.wait_until(lambda: it.followups)

Everything runs on the test's event loop. ``wait_until`` waits on a condition that every REST handler and
gateway event notifies (plus a 10 ms re-check for state only the bot changes), and fails at once when the
bot task dies or the bot reports an error, so tests never sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import enum
import hashlib
import hmac
import io
import json
import logging
import mimetypes
import re
import secrets
import socket
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

__all__ = [
    "ACK_DEADLINE_SECONDS",
    "DEFAULT_ATTACHMENT_SIZE_LIMIT",
    "DEFAULT_BOT_PERMISSIONS",
    "TOKEN_LIFETIME_SECONDS",
    "BotFailure",
    "FakeChannel",
    "FakeDiscord",
    "FakeDiscordUsageError",
    "FakeGuild",
    "FakeInteraction",
    "FakeMember",
    "FakeMessage",
    "FakeRole",
    "FakeUser",
    "HeldRequests",
    "Intent",
    "Permission",
    "RecordedRequest",
    "StoredAttachment",
]

log = logging.getLogger(__name__)

API_PREFIX = "/api/v10"
DISCORD_EPOCH_MS = 1_420_070_400_000
DEFAULT_ATTACHMENT_SIZE_LIMIT = 10 * 1024 * 1024  # bots, webhooks and interactions since 2025-01-16
ACK_DEADLINE_SECONDS = 3.0
TOKEN_LIFETIME_SECONDS = 15 * 60
HEARTBEAT_INTERVAL_MS = 41_250
CDN_URL_LIFETIME_SECONDS = 24 * 3600
WAIT_POLL_SECONDS = 0.01
MAX_REQUEST_BYTES = 256 * 1024 * 1024  # above the largest boosted upload limit (100 MiB) with headroom
MAX_CONTENT_LENGTH = 2000
MAX_EMBEDS = 10
MAX_EMBED_TOTAL_CHARS = 6000
MAX_ATTACHMENTS = 10
MAX_ATTACHMENT_DESCRIPTION = 1024
MAX_AUTOCOMPLETE_CHOICES = 25
MAX_GLOBAL_CHAT_COMMANDS = 100
MAX_COMMAND_TOTAL_CHARS = 8000
THREAD_ARCHIVE_DURATIONS = (60, 1440, 4320, 10080)
NONCE_WINDOW_SECONDS = 300  # "the past few minutes" for enforce_nonce

FLAG_SUPPRESS_EMBEDS = 1 << 2
FLAG_HAS_THREAD = 1 << 5
FLAG_EPHEMERAL = 1 << 6
FLAG_LOADING = 1 << 7
FLAG_SUPPRESS_NOTIFICATIONS = 1 << 12
FLAG_IS_COMPONENTS_V2 = 1 << 15
_SETTABLE_MESSAGE_FLAGS = FLAG_SUPPRESS_EMBEDS | FLAG_SUPPRESS_NOTIFICATIONS | FLAG_IS_COMPONENTS_V2

CHANNEL_TEXT = 0
CHANNEL_DM = 1
CHANNEL_NEWS = 5
CHANNEL_PUBLIC_THREAD = 11
CHANNEL_PRIVATE_THREAD = 12
_THREAD_TYPES = (10, CHANNEL_PUBLIC_THREAD, CHANNEL_PRIVATE_THREAD)

INTERACTION_PING = 1
INTERACTION_COMMAND = 2
INTERACTION_COMPONENT = 3
INTERACTION_AUTOCOMPLETE = 4
INTERACTION_MODAL_SUBMIT = 5

CALLBACK_MESSAGE = 4
CALLBACK_DEFERRED_MESSAGE = 5
CALLBACK_DEFERRED_UPDATE = 6
CALLBACK_UPDATE_MESSAGE = 7
CALLBACK_AUTOCOMPLETE = 8
CALLBACK_MODAL = 9
_ALLOWED_CALLBACKS: dict[int, frozenset[int]] = {
    INTERACTION_COMMAND: frozenset({CALLBACK_MESSAGE, CALLBACK_DEFERRED_MESSAGE, CALLBACK_MODAL}),
    INTERACTION_COMPONENT: frozenset(
        {
            CALLBACK_MESSAGE,
            CALLBACK_DEFERRED_MESSAGE,
            CALLBACK_DEFERRED_UPDATE,
            CALLBACK_UPDATE_MESSAGE,
            CALLBACK_MODAL,
        }
    ),
    INTERACTION_AUTOCOMPLETE: frozenset({CALLBACK_AUTOCOMPLETE}),
    INTERACTION_MODAL_SUBMIT: frozenset(
        {CALLBACK_MESSAGE, CALLBACK_DEFERRED_MESSAGE, CALLBACK_DEFERRED_UPDATE, CALLBACK_UPDATE_MESSAGE}
    ),
}

OPT_SUB_COMMAND = 1
OPT_SUB_COMMAND_GROUP = 2
OPT_STRING = 3
OPT_INTEGER = 4
OPT_BOOLEAN = 5
OPT_USER = 6
OPT_CHANNEL = 7
OPT_ROLE = 8
OPT_MENTIONABLE = 9
OPT_NUMBER = 10
OPT_ATTACHMENT = 11

COMMAND_CHAT_INPUT = 1
COMMAND_USER = 2
COMMAND_MESSAGE = 3

COMPONENT_ACTION_ROW = 1
COMPONENT_BUTTON = 2
COMPONENT_STRING_SELECT = 3
COMPONENT_TEXT_INPUT = 4
COMPONENT_USER_SELECT = 5
COMPONENT_ROLE_SELECT = 6
COMPONENT_MENTIONABLE_SELECT = 7
COMPONENT_CHANNEL_SELECT = 8
COMPONENT_SECTION = 9
COMPONENT_TEXT_DISPLAY = 10
COMPONENT_CONTAINER = 17
COMPONENT_LABEL = 18
COMPONENT_FILE_UPLOAD = 19
COMPONENT_RADIO_GROUP = 21
COMPONENT_CHECKBOX_GROUP = 22
COMPONENT_CHECKBOX = 23
_SELECT_TYPES = frozenset(
    {
        COMPONENT_STRING_SELECT,
        COMPONENT_USER_SELECT,
        COMPONENT_ROLE_SELECT,
        COMPONENT_MENTIONABLE_SELECT,
        COMPONENT_CHANNEL_SELECT,
    }
)
_MODAL_LABEL_CHILDREN = _SELECT_TYPES | {
    COMPONENT_TEXT_INPUT,
    COMPONENT_FILE_UPLOAD,
    COMPONENT_RADIO_GROUP,
    COMPONENT_CHECKBOX_GROUP,
    COMPONENT_CHECKBOX,
}

_COMMAND_NAME_RE = re.compile(r"^[-_'\w]{1,32}$")
_USER_MENTION_RE = re.compile(r"<@!?(\d+)>")
_ROLE_MENTION_RE = re.compile(r"<@&(\d+)>")
_FILE_FIELD_RE = re.compile(r"^files\[(\d+)\]$|^file(\d*)$")


class Permission(enum.IntEnum):
    """Discord permission bits the fake checks or that tests commonly grant.

    An ``IntEnum`` rather than an ``IntFlag`` so ``perms & ~Permission.X`` keeps every other bit.
    """

    CREATE_INSTANT_INVITE = 1 << 0
    KICK_MEMBERS = 1 << 1
    BAN_MEMBERS = 1 << 2
    ADMINISTRATOR = 1 << 3
    MANAGE_CHANNELS = 1 << 4
    MANAGE_GUILD = 1 << 5
    ADD_REACTIONS = 1 << 6
    VIEW_CHANNEL = 1 << 10
    SEND_MESSAGES = 1 << 11
    MANAGE_MESSAGES = 1 << 13
    EMBED_LINKS = 1 << 14
    ATTACH_FILES = 1 << 15
    READ_MESSAGE_HISTORY = 1 << 16
    MENTION_EVERYONE = 1 << 17
    USE_EXTERNAL_EMOJIS = 1 << 18
    CHANGE_NICKNAME = 1 << 26
    MANAGE_ROLES = 1 << 28
    USE_APPLICATION_COMMANDS = 1 << 31
    MANAGE_THREADS = 1 << 34
    CREATE_PUBLIC_THREADS = 1 << 35
    CREATE_PRIVATE_THREADS = 1 << 36
    SEND_MESSAGES_IN_THREADS = 1 << 38


# The value Discord puts in interaction payloads for a member with every permission (admin or owner).
ALL_PERMISSIONS = 2_199_023_255_551
DEFAULT_EVERYONE_PERMISSIONS = int(
    Permission.CREATE_INSTANT_INVITE
    | Permission.ADD_REACTIONS
    | Permission.VIEW_CHANNEL
    | Permission.SEND_MESSAGES
    | Permission.EMBED_LINKS
    | Permission.ATTACH_FILES
    | Permission.READ_MESSAGE_HISTORY
    | Permission.USE_EXTERNAL_EMOJIS
    | Permission.CHANGE_NICKNAME
    | Permission.USE_APPLICATION_COMMANDS
    | Permission.CREATE_PUBLIC_THREADS
    | Permission.SEND_MESSAGES_IN_THREADS
)
# What an image bot's invite link asks for: no administrator, no message management.
DEFAULT_BOT_PERMISSIONS = int(
    Permission.VIEW_CHANNEL
    | Permission.SEND_MESSAGES
    | Permission.EMBED_LINKS
    | Permission.ATTACH_FILES
    | Permission.READ_MESSAGE_HISTORY
    | Permission.ADD_REACTIONS
    | Permission.USE_EXTERNAL_EMOJIS
    | Permission.USE_APPLICATION_COMMANDS
    | Permission.CREATE_PUBLIC_THREADS
    | Permission.SEND_MESSAGES_IN_THREADS
)
_DM_PERMISSIONS = int(
    Permission.VIEW_CHANNEL
    | Permission.SEND_MESSAGES
    | Permission.EMBED_LINKS
    | Permission.ATTACH_FILES
    | Permission.READ_MESSAGE_HISTORY
    | Permission.ADD_REACTIONS
    | Permission.USE_EXTERNAL_EMOJIS
)


class Intent(enum.IntEnum):
    """Gateway intent bits the fake looks at."""

    GUILDS = 1 << 0
    GUILD_MEMBERS = 1 << 1
    GUILD_PRESENCES = 1 << 8
    GUILD_MESSAGES = 1 << 9
    DIRECT_MESSAGES = 1 << 12
    MESSAGE_CONTENT = 1 << 15


PRIVILEGED_INTENTS = int(Intent.GUILD_MEMBERS | Intent.GUILD_PRESENCES | Intent.MESSAGE_CONTENT)


class FakeDiscordUsageError(AssertionError):
    """The test asked for something a Discord user could not do (unsynced command, missing option, ...)."""


class BotFailure(AssertionError):
    """The bot died, reported an error, or the fake itself hit a bug while a test was waiting."""


class DiscordAPIError(Exception):
    """Raised inside a route handler; turned into Discord's JSON error reply."""

    def __init__(self, status: int, code: int, message: str, errors: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors

    def body(self) -> dict[str, Any]:
        """The JSON body Discord sends for this error."""
        body: dict[str, Any] = {"message": self.message, "code": self.code}
        if self.errors is not None:
            body["errors"] = self.errors
        return body


def _error(status: int, code: int, message: str) -> DiscordAPIError:
    return DiscordAPIError(status, code, message)


def _unauthorized() -> DiscordAPIError:
    return _error(401, 0, "401: Unauthorized")


def _unknown_channel() -> DiscordAPIError:
    return _error(404, 10003, "Unknown Channel")


def _unknown_guild() -> DiscordAPIError:
    return _error(404, 10004, "Unknown Guild")


def _unknown_member() -> DiscordAPIError:
    return _error(404, 10007, "Unknown Member")


def _unknown_message() -> DiscordAPIError:
    return _error(404, 10008, "Unknown Message")


def _unknown_user() -> DiscordAPIError:
    return _error(404, 10013, "Unknown User")


def _unknown_webhook() -> DiscordAPIError:
    return _error(404, 10015, "Unknown Webhook")


def _unknown_interaction() -> DiscordAPIError:
    return _error(404, 10062, "Unknown interaction")


def _invalid_webhook_token() -> DiscordAPIError:
    return _error(401, 50027, "Invalid Webhook Token")


def _already_acknowledged() -> DiscordAPIError:
    return _error(400, 40060, "Interaction has already been acknowledged.")


def _missing_permissions() -> DiscordAPIError:
    return _error(403, 50013, "Missing Permissions")


def _missing_access() -> DiscordAPIError:
    return _error(403, 50001, "Missing Access")


def _empty_message() -> DiscordAPIError:
    return _error(400, 50006, "Cannot send an empty message")


def _entity_too_large() -> DiscordAPIError:
    return _error(413, 40005, "Request entity too large")


def _form_error(path: Sequence[str | int], code: str, message: str) -> DiscordAPIError:
    """A 50035 Invalid Form Body error with Discord's nested ``errors`` object for one field."""
    errors: dict[str, Any] = {"_errors": [{"code": code, "message": message}]}
    for key in reversed(path):
        errors = {str(key): errors}
    return DiscordAPIError(400, 50035, "Invalid Form Body", errors=errors)


def _too_long(path: Sequence[str | int], limit: int) -> DiscordAPIError:
    return _form_error(path, "BASE_TYPE_MAX_LENGTH", f"Must be {limit} or fewer in length.")


def _required(path: Sequence[str | int]) -> DiscordAPIError:
    return _form_error(path, "BASE_TYPE_REQUIRED", "This field is required")


# --------------------------------------------------------------------------------------------------
# Records the tests inspect
# --------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class RecordedRequest:
    """One HTTP request the fake received. ``headers`` are stored unredacted; ``repr`` hides the token."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    time: float
    json: Any = None
    parts: list[tuple[str, str | None, int]] = field(default_factory=list)
    status: int | None = None
    response: Any = None

    @property
    def part_names(self) -> list[str]:
        """Names of the multipart parts (``payload_json``, ``files[0]``, ...), empty for JSON bodies."""
        return [name for name, _, _ in self.parts]

    def __repr__(self) -> str:
        headers = {k: ("<redacted>" if k.lower() == "authorization" else v) for k, v in self.headers.items()}
        return (
            f"RecordedRequest({self.method} {self.path} query={self.query} status={self.status} "
            f"json={self.json!r} parts={self.parts} headers={headers})"
        )


@dataclass(eq=False)
class FakeUser:
    """A Discord user (a human test actor, the app owner or the bot itself)."""

    id: int
    name: str
    bot: bool = False
    global_name: str | None = None
    dms_open: bool = True

    @property
    def mention(self) -> str:
        """The ``<@id>`` mention string."""
        return f"<@{self.id}>"

    def payload(self) -> dict[str, Any]:
        """The Discord user object."""
        return {
            "id": str(self.id),
            "username": self.name,
            "discriminator": "0",
            "global_name": self.global_name
            if self.global_name is not None
            else (None if self.bot else self.name),
            "avatar": None,
            "bot": self.bot,
            "system": False,
            "public_flags": 0,
            "flags": 0,
            "banner": None,
            "accent_color": None,
            "avatar_decoration_data": None,
            "primary_guild": None,
            "collectibles": None,
        }


@dataclass(eq=False)
class FakeRole:
    """A guild role."""

    id: int
    guild_id: int
    name: str
    permissions: int
    position: int
    managed: bool = False
    mentionable: bool = False
    color: int = 0
    hoist: bool = False
    bot_id: int | None = None

    @property
    def mention(self) -> str:
        """The ``<@&id>`` mention string."""
        return f"<@&{self.id}>"

    def payload(self) -> dict[str, Any]:
        """The Discord role object."""
        payload: dict[str, Any] = {
            "id": str(self.id),
            "name": self.name,
            "permissions": str(self.permissions),
            "position": self.position,
            "color": self.color,
            "colors": {"primary_color": self.color, "secondary_color": None, "tertiary_color": None},
            "hoist": self.hoist,
            "managed": self.managed,
            "mentionable": self.mentionable,
            "icon": None,
            "unicode_emoji": None,
            "flags": 0,
        }
        if self.bot_id is not None:
            payload["tags"] = {"bot_id": str(self.bot_id)}
        return payload


@dataclass(eq=False)
class FakeMember:
    """A user's membership in a guild."""

    user: FakeUser
    guild: FakeGuild
    role_ids: list[int]
    joined_at: str
    nick: str | None = None
    flags: int = 0

    @property
    def id(self) -> int:
        """The member's user id."""
        return self.user.id

    @property
    def permissions(self) -> int:
        """Guild-level permissions from @everyone and the member's roles (ignores channel overwrites)."""
        return self.guild.base_permissions(self.user.id)


@dataclass(eq=False)
class FakeChannel:
    """A text channel, thread or DM channel."""

    id: int
    type: int
    name: str | None
    guild: FakeGuild | None
    position: int = 0
    parent_id: int | None = None
    topic: str | None = None
    recipients: list[FakeUser] = field(default_factory=list)
    overwrites: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    owner_id: int | None = None
    rate_limit_per_user: int = 0
    auto_archive_duration: int = 1440
    archived: bool = False
    locked: bool = False
    created_at: str = ""
    message_count: int = 0
    last_message_id: int | None = None
    deleted: bool = False
    _fake: FakeDiscord | None = field(default=None, repr=False)

    @property
    def is_thread(self) -> bool:
        """Whether this channel is a thread."""
        return self.type in _THREAD_TYPES

    @property
    def mention(self) -> str:
        """The ``<#id>`` mention string."""
        return f"<#{self.id}>"

    @property
    def parent(self) -> FakeChannel | None:
        """The parent channel of a thread."""
        if self.parent_id is None or self._fake is None:
            return None
        return self._fake.channels.get(self.parent_id)

    async def set_permissions(
        self, target: FakeUser | FakeRole | FakeMember, *, allow: int = 0, deny: int = 0
    ) -> None:
        """Set a permission overwrite for a role or member (dispatches CHANNEL_UPDATE)."""
        assert self._fake is not None
        if isinstance(target, FakeRole):
            self.overwrites[target.id] = (0, int(allow), int(deny))
        else:
            user = target.user if isinstance(target, FakeMember) else target
            self.overwrites[user.id] = (1, int(allow), int(deny))
        await self._fake._emit_guild_event(
            self.guild, "CHANNEL_UPDATE", self._fake._channel_payload(self), Intent.GUILDS
        )


@dataclass(eq=False)
class FakeGuild:
    """A guild the bot is a member of."""

    id: int
    name: str
    owner_id: int
    attachment_size_limit: int
    joined_at: str
    roles: dict[int, FakeRole] = field(default_factory=dict)
    members: dict[int, FakeMember] = field(default_factory=dict)
    channels: dict[int, FakeChannel] = field(default_factory=dict)
    locale: str = "en-US"
    _fake: FakeDiscord | None = field(default=None, repr=False)

    @property
    def everyone(self) -> FakeRole:
        """The @everyone role (its id is the guild id)."""
        return self.roles[self.id]

    @property
    def premium_tier(self) -> int:
        """The boost tier matching the upload limit, so ``discord.Guild.filesize_limit`` agrees with it."""
        if self.attachment_size_limit >= 100 * 1024 * 1024:
            return 3
        if self.attachment_size_limit >= 50 * 1024 * 1024:
            return 2
        return 0

    def member(self, user: FakeUser | int) -> FakeMember | None:
        """The membership of ``user`` in this guild, if any."""
        return self.members.get(user if isinstance(user, int) else user.id)

    def base_permissions(self, user_id: int) -> int:
        """Guild-level permissions of a member, computed like Discord does."""
        if user_id == self.owner_id:
            return ALL_PERMISSIONS
        member = self.members.get(user_id)
        if member is None:
            return 0
        perms = self.everyone.permissions
        for role_id in member.role_ids:
            perms |= self.roles[role_id].permissions
        if perms & Permission.ADMINISTRATOR:
            return ALL_PERMISSIONS
        return perms

    async def create_text_channel(
        self, name: str, *, topic: str | None = None, bot_permissions: int | None = None
    ) -> FakeChannel:
        """Create a text channel; ``bot_permissions`` adds an overwrite giving the bot exactly those."""
        assert self._fake is not None
        return await self._fake._create_text_channel(self, name, topic=topic, bot_permissions=bot_permissions)

    async def create_role(self, name: str, *, permissions: int = 0, mentionable: bool = False) -> FakeRole:
        """Create a role (dispatches GUILD_ROLE_CREATE)."""
        assert self._fake is not None
        return await self._fake._create_role(self, name, permissions=permissions, mentionable=mentionable)

    async def delete_role(self, role: FakeRole) -> None:
        """Delete a role, as a server admin does in Discord (dispatches GUILD_ROLE_DELETE); its members
        lose it."""
        assert self._fake is not None
        await self._fake._delete_role(self, role)

    async def add_member(
        self,
        user: FakeUser,
        *,
        roles: Iterable[FakeRole] = (),
        permissions: int | None = None,
        nick: str | None = None,
    ) -> FakeMember:
        """Add ``user`` to the guild. ``permissions`` gives them a personal role with exactly those bits."""
        assert self._fake is not None
        return await self._fake._add_member(self, user, roles=list(roles), permissions=permissions, nick=nick)


@dataclass(eq=False)
class StoredAttachment:
    """An uploaded file as stored by the fake CDN."""

    id: int
    filename: str
    data: bytes
    content_type: str | None
    url: str
    description: str | None = None
    width: int | None = None
    height: int | None = None
    ephemeral: bool = False

    def payload(self) -> dict[str, Any]:
        """The Discord attachment object."""
        payload: dict[str, Any] = {
            "id": str(self.id),
            "filename": self.filename,
            "size": len(self.data),
            "url": self.url,
            "proxy_url": self.url,
            "content_type": self.content_type,
            "flags": 0,
        }
        if self.width is not None:
            payload["width"] = self.width
            payload["height"] = self.height
        if self.description is not None:
            payload["description"] = self.description
        if self.ephemeral:
            payload["ephemeral"] = True
        return payload


@dataclass(eq=False)
class FakeMessage:
    """A message as the fake stores it. ``files`` are the bytes the bot uploaded, with their names."""

    id: int
    channel_id: int
    guild_id: int | None
    author: FakeUser
    timestamp: str
    content: str = ""
    embeds: list[dict[str, Any]] = field(default_factory=list)
    attachments: list[StoredAttachment] = field(default_factory=list)
    components: list[dict[str, Any]] = field(default_factory=list)
    flags: int = 0
    type: int = 0
    tts: bool = False
    allowed_mentions: dict[str, Any] | None = None
    mentions: list[int] = field(default_factory=list)
    mention_roles: list[int] = field(default_factory=list)
    mention_everyone: bool = False
    edited_timestamp: str | None = None
    deleted: bool = False
    thread: FakeChannel | None = None
    interaction: FakeInteraction | None = field(default=None, repr=False)
    webhook_id: int | None = None
    message_reference: dict[str, Any] | None = None
    edits: list[dict[str, Any]] = field(default_factory=list, repr=False)

    @property
    def files(self) -> list[tuple[str, bytes]]:
        """``(filename, bytes)`` of every current attachment."""
        return [(a.filename, a.data) for a in self.attachments]

    @property
    def ephemeral(self) -> bool:
        """Whether only the interaction user can see the message."""
        return bool(self.flags & FLAG_EPHEMERAL)

    @property
    def loading(self) -> bool:
        """Whether this is a deferred "is thinking..." message nobody has filled in yet."""
        return bool(self.flags & FLAG_LOADING)

    def find_component(self, custom_id: str) -> dict[str, Any] | None:
        """The component with ``custom_id`` anywhere in the message, or None."""
        for component in _walk_components(self.components):
            if component.get("custom_id") == custom_id:
                return component
        return None


@dataclass(eq=False)
class FakeInteraction:
    """One interaction the fake sent, and everything the bot did with it.

    * ``callbacks``: accepted initial-response bodies (rejected attempts are in ``FakeDiscord.requests``).
    * ``deferred``: the first response was a defer (type 5 or 6); it stays True after later edits.
    * ``ephemeral``: visibility of the original response, fixed when it was created.
    * ``original`` / ``original_message``: the current ``@original`` as Discord returns it / the record.
    * ``original_edits``: the content after each PATCH of ``@original``.
    * ``followups``: messages returned by followup POSTs. After a defer, the first one *is*
      ``original_message`` (it filled in the "thinking" message).
    * ``modal``: the modal a type-9 callback opened, until it is submitted; ``choices``: autocomplete.
    """

    id: int
    token: str
    type: int
    user: FakeUser
    channel: FakeChannel
    payload: dict[str, Any]
    created_at: float
    attachment_size_limit: int
    command_name: str | None = None
    source_message: FakeMessage | None = None
    parent: FakeInteraction | None = None
    response_type: int | None = None
    callbacks: list[dict[str, Any]] = field(default_factory=list)
    deferred: bool = False
    ephemeral: bool = False
    original_message: FakeMessage | None = None
    original_edits: list[str] = field(default_factory=list)
    followups: list[FakeMessage] = field(default_factory=list)
    modal: dict[str, Any] | None = None
    choices: list[dict[str, Any]] | None = None
    token_revoked: bool = False
    _fake: FakeDiscord | None = field(default=None, repr=False)

    @property
    def guild(self) -> FakeGuild | None:
        """The guild the interaction happened in (None in DMs)."""
        return self.channel.guild

    @property
    def acknowledged(self) -> bool:
        """Whether the bot sent an accepted initial response."""
        return self.response_type is not None

    @property
    def original(self) -> dict[str, Any] | None:
        """The current ``@original`` message as Discord would return it, or None."""
        if self.original_message is None or self.original_message.deleted or self._fake is None:
            return None
        return self._fake._message_payload(self.original_message)

    @property
    def messages(self) -> list[FakeMessage]:
        """Every message the interaction produced: the original response first, then followups."""
        seen: dict[int, FakeMessage] = {}
        if self.original_message is not None and self.response_type in (
            CALLBACK_MESSAGE,
            CALLBACK_DEFERRED_MESSAGE,
        ):
            seen[self.original_message.id] = self.original_message
        for message in self.followups:
            seen.setdefault(message.id, message)
        return list(seen.values())


@dataclass(eq=False)
class _Upload:
    index: int
    field_name: str
    filename: str
    data: bytes
    content_type: str | None


@dataclass(eq=False)
class _Call:
    request: web.Request
    params: dict[str, str]
    query: Mapping[str, str]
    body: Any
    uploads: list[_Upload]
    record: RecordedRequest

    def int_param(self, name: str) -> int:
        return int(self.params[name])

    def query_int(self, name: str, default: int) -> int:
        raw = self.query.get(name)
        if raw is None:
            return default
        try:
            return int(raw)
        except ValueError:
            raise _form_error([name], "NUMBER_TYPE_COERCE", f'Value "{raw}" is not int.') from None

    def body_dict(self, path: Sequence[str | int] = ()) -> dict[str, Any]:
        if self.body is None:
            return {}
        if not isinstance(self.body, dict):
            raise _form_error(path, "DICT_TYPE_CONVERT", "Only dictionaries may be used in a DictType")
        return self.body


@dataclass(frozen=True)
class _RouteSpec:
    method: str
    template: str
    pattern: re.Pattern[str]
    handler: str
    bot_auth: bool


_ROUTES: list[_RouteSpec] = []


def _compile_template(template: str) -> re.Pattern[str]:
    regex = ""
    for part in re.split(r"(\{\w+\})", template):
        if part.startswith("{"):
            name = part[1:-1]
            regex += rf"(?P<{name}>\d+)" if name.endswith("_id") else rf"(?P<{name}>[^/]+)"
        else:
            regex += re.escape(part)
    return re.compile(regex)


def _api(
    method: str, template: str, *, bot_auth: bool = True
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a handler for a Discord REST route (path relative to ``/api/v10``)."""

    def decorator(handler: Callable[..., Any]) -> Callable[..., Any]:
        _ROUTES.append(_RouteSpec(method, template, _compile_template(template), handler.__name__, bot_auth))
        return handler

    return decorator


@dataclass(eq=False)
class _GatewaySession:
    ws: web.WebSocketResponse
    session_id: str
    shard_id: int = 0
    shard_count: int = 1
    intents: int = 0
    identified: bool = False
    sequence: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def send(self, payload: dict[str, Any]) -> None:
        async with self.lock:
            await self.ws.send_str(json.dumps(payload))

    async def dispatch(self, event: str, data: Any) -> None:
        self.sequence += 1
        await self.send({"op": 0, "s": self.sequence, "t": event, "d": data})


@dataclass(eq=False)
class _RateLimitRule:
    match: str
    retry_after: float
    is_global: bool


@dataclass(eq=False)
class HeldRequests:
    """Requests the fake holds before handling them, until the test lets them go (:meth:`FakeDiscord.hold`).

    ``held`` lists the requests waiting (in arrival order). :meth:`release` lets them through as if
    Discord had been slow; :meth:`drop` fails them with a 503 and no effect, as if they never arrived;
    :meth:`cut` closes their connections without an answer (and without effect), as a network
    failure would. Either way the rule is spent: later matching requests are handled normally.
    :meth:`stop` spends it early (the network is back), before ``times`` requests came.
    """

    method: str
    pattern: re.Pattern[str]
    times: int
    held: list[RecordedRequest] = field(default_factory=list)
    dropped: bool = False
    cut_off: bool = False
    _gate: asyncio.Event = field(default_factory=asyncio.Event)

    def matches(self, method: str, path: str) -> bool:
        return len(self.held) < self.times and method == self.method and bool(self.pattern.fullmatch(path))

    def release(self) -> None:
        self._gate.set()

    def drop(self) -> None:
        self.dropped = True
        self._gate.set()

    def cut(self) -> None:
        self.cut_off = True
        self._gate.set()

    def stop(self) -> None:
        """Hold no more requests; those already held keep waiting for release, drop or cut."""
        self.times = len(self.held)


def _walk_components(components: Iterable[Any]) -> Iterable[dict[str, Any]]:
    """Every component in a (possibly nested, Components V2) component tree."""
    for component in components:
        if not isinstance(component, dict):
            continue
        yield component
        children = component.get("components")
        if isinstance(children, list):
            yield from _walk_components(children)
        for key in ("accessory", "component"):
            child = component.get(key)
            if isinstance(child, dict):
                yield from _walk_components([child])


def _image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height of an image, or None when the bytes are not an image Pillow can read."""
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception:
        return None


def _opt(payload: Mapping[str, Any], key: str, default: Any) -> Any:
    """``payload[key]``, treating an explicit null like a missing key (discord.py sends both)."""
    value = payload.get(key)
    return default if value is None else value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _str_len(value: Any) -> int:
    return len(value) if isinstance(value, str) else 0


# --------------------------------------------------------------------------------------------------
# The fake
# --------------------------------------------------------------------------------------------------


class FakeDiscord:
    """Fake Discord REST API, gateway and CDN on 127.0.0.1, plus a driver API for tests.

    Args:
        token: the bot token the bot must log in with.
        bot_name: username of the bot user (its id is also the application id, as for new apps).
        shard_count: what ``GET /gateway/bot`` recommends; guilds and interactions go to the shard
            ``(guild_id >> 22) % shard_count`` like on Discord.
        privileged_intents: privileged intents enabled for the app "in the developer portal"; asking for
            any other privileged intent closes the gateway with 4014 like Discord.
        ack_deadline: seconds the bot has to answer an interaction (Discord: 3).
    """

    def __init__(
        self,
        *,
        token: str = "fake-bot-token",
        bot_name: str = "Retouch",
        shard_count: int = 1,
        privileged_intents: int = 0,
        ack_deadline: float = ACK_DEADLINE_SECONDS,
        host: str = "127.0.0.1",
    ) -> None:
        self.token = token
        self.shard_count = shard_count
        self.privileged_intents = int(privileged_intents)
        self.ack_deadline = ack_deadline
        self.token_lifetime = float(TOKEN_LIFETIME_SECONDS)
        self.host = host
        self.port: int | None = None
        self.dispatch_message_events = True

        self.requests: list[RecordedRequest] = []
        self.unknown: list[RecordedRequest] = []
        self.server_errors: list[BaseException] = []
        self.errors: list[BaseException] = []
        self.gateway_log: list[dict[str, Any]] = []
        self.interactions: list[FakeInteraction] = []
        self.messages: list[FakeMessage] = []
        self.users: dict[int, FakeUser] = {}
        self.guilds: dict[int, FakeGuild] = {}
        self.channels: dict[int, FakeChannel] = {}

        self._clock_offset = 0.0
        self._last_id = 0
        self._cdn_secret = secrets.token_bytes(16)
        self._cond = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._sessions: list[_GatewaySession] = []
        self._message_index: dict[int, FakeMessage] = {}
        self._interactions_by_id: dict[int, FakeInteraction] = {}
        self._interactions_by_token: dict[str, FakeInteraction] = {}
        self._attachments: dict[int, StoredAttachment] = {}
        self._commands: dict[int | None, list[dict[str, Any]]] = {}
        self._command_ids: dict[tuple[int | None, int, str], int] = {}
        self._rate_limits: list[_RateLimitRule] = []
        self._holds: list[HeldRequests] = []
        self._nonces: dict[str, tuple[float, FakeMessage]] = {}
        self._watched: list[asyncio.Task[Any]] = []
        self._pending_notifies: set[asyncio.Task[None]] = set()
        self._fatal_errors: list[BaseException] = []
        self.expected_errors: tuple[type[BaseException], ...] = ()
        self._log_handler: logging.Handler | None = None
        self._dm_channels: dict[int, FakeChannel] = {}

        self.bot_user = FakeUser(id=self._snowflake(), name=bot_name, bot=True)
        self.users[self.bot_user.id] = self.bot_user
        self.application_id = self.bot_user.id
        self.owner = self.create_user("owner")

    # ---------------------------------------------------------------- lifecycle and addresses

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        if self.port is None:
            raise FakeDiscordUsageError("FakeDiscord.start() has not been awaited")
        return f"http://{self.host}:{self.port}"

    @property
    def api_base(self) -> str:
        """The value for ``discord.http.Route.BASE``."""
        return f"{self.base_url}{API_PREFIX}"

    @property
    def gateway_url(self) -> str:
        """The websocket URL (what ``GET /gateway/bot`` returns; also usable for ``DEFAULT_GATEWAY``)."""
        return f"ws://{self.host}:{self.port}/gateway"

    @property
    def connected(self) -> bool:
        """Whether shards ``0 .. shard_count-1`` all identified (READY sent; the bot may not be ready yet)."""
        shards = {s.shard_id for s in self._sessions if s.identified}
        counts = {s.shard_count for s in self._sessions if s.identified}
        return bool(shards) and len(counts) == 1 and shards == set(range(counts.pop()))

    @property
    def identified_shards(self) -> list[int]:
        """The shard id of every identified gateway connection, sorted (from any number of bots)."""
        return sorted(s.shard_id for s in self._sessions if s.identified)

    async def start(self) -> None:
        """Start the HTTP/websocket server on a free loopback port."""
        app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        app.router.add_route("*", API_PREFIX + "/{tail:.*}", self._handle_api)
        app.router.add_get("/gateway", self._handle_gateway)
        app.router.add_get("/cdn/{tail:.*}", self._handle_cdn)
        app.router.add_route("*", "/{tail:.*}", self._handle_not_api)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        """Close gateway connections and stop the server. Close the bot first."""
        for session in list(self._sessions):
            await session.ws.close(code=1001, message=b"Fake Discord shutting down")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._log_handler is not None:
            logging.getLogger("discord").removeHandler(self._log_handler)
            self._log_handler = None

    # ---------------------------------------------------------------- clock

    def now(self) -> float:
        """The fake's clock (wall time plus whatever :meth:`advance_time` added)."""
        return time.time() + self._clock_offset

    def advance_time(self, seconds: float) -> None:
        """Move the fake's clock forward: ack deadlines, token lifetimes and CDN URL expiry follow it."""
        self._clock_offset += seconds
        self._notify_soon()

    def expire_token(self, token_or_interaction: str | FakeInteraction) -> None:
        """Invalidate an interaction token now, as if its 15 minutes were over."""
        if isinstance(token_or_interaction, FakeInteraction):
            interaction = token_or_interaction
        else:
            found = self._interactions_by_token.get(token_or_interaction)
            if found is None:
                raise FakeDiscordUsageError("no interaction has that token")
            interaction = found
        interaction.token_revoked = True
        self._notify_soon()

    def forget_attachments(self) -> None:
        """The CDN stops serving every attachment uploaded so far (their messages were deleted)."""
        self._attachments.clear()

    def _iso(self, when: float | None = None) -> str:
        return datetime.datetime.fromtimestamp(self.now() if when is None else when, datetime.UTC).isoformat()

    def _snowflake(self) -> int:
        candidate = (int(self.now() * 1000) - DISCORD_EPOCH_MS) << 22
        self._last_id = max(self._last_id + 1, candidate)
        return self._last_id

    # ---------------------------------------------------------------- waiting and failure detection

    async def _notify(self) -> None:
        async with self._cond:
            self._cond.notify_all()

    def _notify_soon(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = loop.create_task(self._notify())
        self._pending_notifies.add(task)
        task.add_done_callback(self._pending_notifies.discard)

    def watch_task(self, task: asyncio.Task[Any]) -> None:
        """Make :meth:`wait_until` fail at once if ``task`` (usually ``bot.start()``) ends."""
        self._watched.append(task)
        task.add_done_callback(lambda _: self._notify_soon())

    def unwatch_task(self, task: asyncio.Task[Any]) -> None:
        """Stop watching ``task`` (call before closing the bot on purpose)."""
        if task in self._watched:
            self._watched.remove(task)

    def attach_error_capture(self, bot: Any, *, expected: tuple[type[BaseException], ...] = ()) -> None:
        """Record errors the bot reports, and make :meth:`wait_until` fail early on unexpected ones.

        Wraps ``bot.tree.on_error`` (the original handler still runs afterwards) and listens to the
        ``discord`` logger for the errors discord.py only logs (views, modals, event listeners).
        Errors of ``expected`` types (also when wrapped in ``CommandInvokeError``) are recorded in
        :attr:`errors` but do not fail waits. Call it after the bot set its own ``tree.error`` handler.
        """
        if expected:
            self.expected_errors = expected
        tree = bot.tree
        original = tree.on_error

        async def on_error(interaction: Any, error: BaseException) -> None:
            self._capture_error(error)
            await original(interaction, error)

        tree.on_error = on_error

        fake = self

        class _Capture(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if record.levelno >= logging.ERROR and record.exc_info and record.exc_info[1] is not None:
                    fake._capture_error(record.exc_info[1])

        if self._log_handler is None:
            self._log_handler = _Capture(level=logging.ERROR)
            logging.getLogger("discord").addHandler(self._log_handler)

    def _capture_error(self, error: BaseException) -> None:
        if any(error is seen for seen in self.errors):
            return
        self.errors.append(error)
        chain: list[BaseException] = [error]
        inner = getattr(error, "original", None) or error.__cause__
        if isinstance(inner, BaseException):
            chain.append(inner)
        if not (self.expected_errors and any(isinstance(e, self.expected_errors) for e in chain)):
            self._fatal_errors.append(error)
        self._notify_soon()

    def clear_errors(self) -> None:
        """Forget captured bot errors (after a test has checked them)."""
        self.errors.clear()
        self._fatal_errors.clear()

    def _raise_if_failed(self) -> None:
        if self.server_errors:
            raise BotFailure(
                f"the fake Discord itself failed: {self.server_errors[0]!r}"
            ) from self.server_errors[0]
        for task in self._watched:
            if task.done():
                exc = None if task.cancelled() else task.exception()
                raise BotFailure(f"a watched bot task ended: {exc!r}") from exc
        if self._fatal_errors:
            error = self._fatal_errors[0]
            raise BotFailure(f"the bot reported an error: {error!r}") from error

    async def wait_until(self, predicate: Callable[[], Any], timeout: float = 10.0) -> Any:  # noqa: ASYNC109
        """Wait until ``predicate()`` is truthy and return its value.

        Re-checked whenever the fake handles a request or gateway event, and every
        ``WAIT_POLL_SECONDS`` for state that only the bot changes. Raises :class:`BotFailure` as soon as
        a watched task ended or an unexpected bot error was captured, and ``TimeoutError`` (with the
        last requests) after ``timeout`` seconds.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with self._cond:
            while True:
                self._raise_if_failed()
                value = predicate()
                if value:
                    return value
                remaining = deadline - loop.time()
                if remaining <= 0:
                    recent = "\n  ".join(repr(r) for r in self.requests[-8:])
                    raise TimeoutError(f"condition not met within {timeout}s; last requests:\n  {recent}")
                # Woken by every request and gateway event; the short poll also catches state the bot
                # changes after reading a response (no fake event follows that).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._cond.wait(), min(remaining, WAIT_POLL_SECONDS))

    async def wait_for(self, awaitable: Awaitable[Any], timeout: float = 10.0) -> Any:  # noqa: ASYNC109
        """Await something on the bot's side (``bot.wait_until_ready()``, an ``asyncio.Event``...).

        Fails early exactly like :meth:`wait_until`, instead of hanging when the bot died.
        """
        owned = not isinstance(awaitable, asyncio.Future)
        target = asyncio.ensure_future(awaitable)
        target.add_done_callback(lambda _: self._notify_soon())
        try:
            await self.wait_until(target.done, timeout)
        except BaseException:
            if owned:
                target.cancel()
            raise
        return target.result()

    # ---------------------------------------------------------------- driver: world building

    def create_user(self, name: str, *, id: int | None = None, dms_open: bool = True) -> FakeUser:
        """Create a (human) user. ``dms_open=False`` makes DMs from the bot fail with 50007."""
        user = FakeUser(id=id or self._snowflake(), name=name, dms_open=dms_open)
        self.users[user.id] = user
        return user

    async def create_guild(
        self,
        name: str = "Test Guild",
        *,
        id: int | None = None,
        attachment_size_limit: int = DEFAULT_ATTACHMENT_SIZE_LIMIT,
        owner: FakeUser | None = None,
        bot_permissions: int = DEFAULT_BOT_PERMISSIONS,
        everyone_permissions: int = DEFAULT_EVERYONE_PERMISSIONS,
    ) -> FakeGuild:
        """Create a guild with the bot in it (GUILD_CREATE is sent if the bot is already connected)."""
        guild_id = id or self._snowflake()
        owner = owner or self.owner
        guild = FakeGuild(
            id=guild_id,
            name=name,
            owner_id=owner.id,
            attachment_size_limit=attachment_size_limit,
            joined_at=self._iso(),
            _fake=self,
        )
        guild.roles[guild_id] = FakeRole(
            id=guild_id, guild_id=guild_id, name="@everyone", permissions=everyone_permissions, position=0
        )
        bot_role = FakeRole(
            id=self._snowflake(),
            guild_id=guild_id,
            name=self.bot_user.name,
            permissions=bot_permissions,
            position=1,
            managed=True,
            bot_id=self.bot_user.id,
        )
        guild.roles[bot_role.id] = bot_role
        guild.members[owner.id] = FakeMember(user=owner, guild=guild, role_ids=[], joined_at=self._iso())
        guild.members[self.bot_user.id] = FakeMember(
            user=self.bot_user, guild=guild, role_ids=[bot_role.id], joined_at=self._iso()
        )
        self.guilds[guild_id] = guild
        await self._emit_guild_event(
            guild, "GUILD_CREATE", self._guild_payload(guild, gateway=True), Intent.GUILDS
        )
        return guild

    async def _create_text_channel(
        self, guild: FakeGuild, name: str, *, topic: str | None, bot_permissions: int | None
    ) -> FakeChannel:
        position = sum(1 for c in guild.channels.values() if not c.is_thread)
        channel = FakeChannel(
            id=self._snowflake(),
            type=CHANNEL_TEXT,
            name=name,
            guild=guild,
            position=position,
            topic=topic,
            created_at=self._iso(),
            _fake=self,
        )
        if bot_permissions is not None:
            bot_role = next(r for r in guild.roles.values() if r.bot_id == self.bot_user.id)
            channel.overwrites[bot_role.id] = (
                0,
                int(bot_permissions),
                ALL_PERMISSIONS & ~int(bot_permissions),
            )
        guild.channels[channel.id] = channel
        self.channels[channel.id] = channel
        await self._emit_guild_event(guild, "CHANNEL_CREATE", self._channel_payload(channel), Intent.GUILDS)
        return channel

    async def _create_role(
        self, guild: FakeGuild, name: str, *, permissions: int, mentionable: bool
    ) -> FakeRole:
        role = FakeRole(
            id=self._snowflake(),
            guild_id=guild.id,
            name=name,
            permissions=int(permissions),
            position=len(guild.roles),
            mentionable=mentionable,
        )
        guild.roles[role.id] = role
        await self._emit_guild_event(
            guild, "GUILD_ROLE_CREATE", {"guild_id": str(guild.id), "role": role.payload()}, Intent.GUILDS
        )
        return role

    async def _delete_role(self, guild: FakeGuild, role: FakeRole) -> None:
        if guild.roles.pop(role.id, None) is None:
            raise FakeDiscordUsageError(f"role {role.id} is not a role of guild {guild.id}")
        for member in guild.members.values():
            if role.id in member.role_ids:
                member.role_ids.remove(role.id)
        await self._emit_guild_event(
            guild, "GUILD_ROLE_DELETE", {"guild_id": str(guild.id), "role_id": str(role.id)}, Intent.GUILDS
        )

    async def _add_member(
        self,
        guild: FakeGuild,
        user: FakeUser,
        *,
        roles: list[FakeRole],
        permissions: int | None,
        nick: str | None,
    ) -> FakeMember:
        role_ids = [r.id for r in roles]
        for role in roles:
            if role.guild_id != guild.id:
                raise FakeDiscordUsageError(f"role {role.name!r} belongs to another guild")
        if permissions is not None:
            personal = await self._create_role(
                guild, f"{user.name}-permissions", permissions=permissions, mentionable=False
            )
            role_ids.append(personal.id)
        member = guild.members.get(user.id)
        if member is None:
            member = FakeMember(user=user, guild=guild, role_ids=role_ids, joined_at=self._iso(), nick=nick)
            guild.members[user.id] = member
            await self._emit_guild_event(
                guild,
                "GUILD_MEMBER_ADD",
                {**self._member_payload(member), "guild_id": str(guild.id)},
                Intent.GUILD_MEMBERS,
            )
        else:
            member.role_ids.extend(r for r in role_ids if r not in member.role_ids)
            if nick is not None:
                member.nick = nick
        return member

    def dm_channel(self, user: FakeUser) -> FakeChannel:
        """The DM channel between ``user`` and the bot (created on first use)."""
        channel = self._dm_channels.get(user.id)
        if channel is None:
            channel = FakeChannel(
                id=self._snowflake(),
                type=CHANNEL_DM,
                name=None,
                guild=None,
                recipients=[user],
                created_at=self._iso(),
                _fake=self,
            )
            self._dm_channels[user.id] = channel
            self.channels[channel.id] = channel
        return channel

    async def delete_channel(self, channel: FakeChannel | int) -> None:
        """Delete a channel (dispatches CHANNEL_DELETE); REST calls to it then fail with 10003."""
        target = self.channels.get(channel if isinstance(channel, int) else channel.id)
        if target is None:
            raise FakeDiscordUsageError("unknown channel")
        target.deleted = True
        if target.guild is not None:
            event = "THREAD_DELETE" if target.is_thread else "CHANNEL_DELETE"
            await self._emit_guild_event(target.guild, event, self._channel_payload(target), Intent.GUILDS)
        self._notify_soon()

    async def post_message(
        self,
        user: FakeUser,
        channel: FakeChannel,
        content: str = "",
        *,
        attachments: Sequence[tuple[str, bytes]] = (),
    ) -> FakeMessage:
        """A user posts a message (e.g. an image to use a message context-menu command on)."""
        if channel.deleted:
            raise FakeDiscordUsageError("channel was deleted")
        if (
            channel.guild is not None
            and not self._channel_permissions(channel, user.id) & Permission.SEND_MESSAGES
        ):
            raise FakeDiscordUsageError(f"{user.name} cannot send messages in #{channel.name}")
        message = FakeMessage(
            id=self._snowflake(),
            channel_id=channel.id,
            guild_id=channel.guild.id if channel.guild else None,
            author=user,
            timestamp=self._iso(),
            content=content,
        )
        for filename, data in attachments:
            message.attachments.append(self._store_attachment(channel.id, filename, data))
        message.mentions, message.mention_roles, message.mention_everyone = self._resolve_mentions(
            content, None, channel
        )
        self._add_message(message, channel)
        await self._emit_message("MESSAGE_CREATE", message)
        return message

    async def dispatch(self, event: str, data: Any, *, shard_id: int | None = None) -> None:
        """Send a dispatch event (op 0) to the shard owning ``data['guild_id']``, or to ``shard_id``."""
        if shard_id is None:
            guild_id = data.get("guild_id") if isinstance(data, dict) else None
            session = self._session_for_guild(int(guild_id) if guild_id else None)
        else:
            session = next((s for s in self._sessions if s.identified and s.shard_id == shard_id), None)
        if session is None:
            raise FakeDiscordUsageError("the bot has no identified gateway connection for that shard")
        await self._gateway_dispatch(session, event, data)

    async def send_reconnect(self) -> None:
        """Send op 7 RECONNECT on every connection; discord.py then tries to RESUME (and gets op 9)."""
        for session in list(self._sessions):
            if session.identified:
                await session.send({"op": 7, "d": None, "s": None, "t": None})

    def hold(self, method: str, path_regex: str, *, times: int = 1) -> HeldRequests:
        """Hold the next ``times`` requests ``METHOD /path`` (path under ``/api/v10``, matched as a whole
        by ``path_regex``) before they take effect, e.g. to stop the bot in the middle of a delivery."""
        rule = HeldRequests(method.upper(), re.compile(path_regex), times)
        self._holds.append(rule)
        return rule

    def rate_limit_next(
        self, route_substring: str, *, retry_after: float = 0.05, is_global: bool = False
    ) -> None:
        """Answer the next request whose ``"METHOD /path"`` contains ``route_substring`` with a 429."""
        self._rate_limits.append(_RateLimitRule(route_substring, retry_after, is_global))

    def synced_commands(self, guild_id: int | FakeGuild | None = None) -> list[dict[str, Any]]:
        """The commands the bot last synced, globally (None) or for a guild, as Discord echoed them."""
        key = guild_id.id if isinstance(guild_id, FakeGuild) else guild_id
        return copy.deepcopy(self._commands.get(key, []))

    def channel_messages(
        self, channel: FakeChannel | int, *, include_deleted: bool = False
    ) -> list[FakeMessage]:
        """Messages in a channel, oldest first (ephemeral ones included, they are stored too)."""
        channel_id = channel if isinstance(channel, int) else channel.id
        return [m for m in self.messages if m.channel_id == channel_id and (include_deleted or not m.deleted)]

    def message(self, message_id: int) -> FakeMessage | None:
        """The stored message with that id."""
        return self._message_index.get(int(message_id))

    # ---------------------------------------------------------------- driver: interactions

    async def slash(
        self,
        user: FakeUser,
        command: str,
        *,
        channel: FakeChannel,
        options: Mapping[str, Any] | None = None,
        attachments: Mapping[str, tuple[str, bytes]] | None = None,
        locale: str = "en-US",
    ) -> FakeInteraction:
        """``user`` runs ``/command`` (``"credits grant"`` for subcommands) in ``channel``.

        Options are typed from the synced schema: pass str/int/float/bool, :class:`FakeUser`/
        :class:`FakeMember`/:class:`FakeRole`/:class:`FakeChannel` objects, and files as
        ``(filename, bytes)`` either in ``options`` or ``attachments``. Raises
        :class:`FakeDiscordUsageError` where the Discord client would not let the user send it.
        """
        names = command.split()
        schema = self._find_command(names[0], COMMAND_CHAT_INPUT, user, channel)
        given = dict(options or {})
        for name, upload in (attachments or {}).items():
            if name in given:
                raise FakeDiscordUsageError(f"option {name!r} given twice")
            given[name] = upload
        limit = self._size_limit(channel)
        resolved: dict[str, dict[str, Any]] = {}
        built = self._build_subcommand_path(schema, names[1:], given, resolved, channel, limit, focused=None)
        data: dict[str, Any] = {"id": schema["id"], "name": schema["name"], "type": COMMAND_CHAT_INPUT}
        if built:
            data["options"] = built
        if resolved:
            data["resolved"] = resolved
        if schema.get("guild_id"):
            data["guild_id"] = schema["guild_id"]
        return await self._send_interaction(
            INTERACTION_COMMAND, user, channel, data, command_name=command, locale=locale
        )

    async def autocomplete(
        self,
        user: FakeUser,
        command: str,
        *,
        channel: FakeChannel,
        focused: str,
        value: str = "",
        options: Mapping[str, Any] | None = None,
        timeout: float = 5.0,  # noqa: ASYNC109 - bounds the wait for the bot's answer, not a network call
    ) -> list[dict[str, Any]]:
        """``user`` types ``value`` into option ``focused``; returns the choices the bot answered with."""
        names = command.split()
        schema = self._find_command(names[0], COMMAND_CHAT_INPUT, user, channel)
        given = dict(options or {})
        given[focused] = value
        resolved: dict[str, dict[str, Any]] = {}
        built = self._build_subcommand_path(
            schema, names[1:], given, resolved, channel, self._size_limit(channel), focused=focused
        )
        data: dict[str, Any] = {
            "id": schema["id"],
            "name": schema["name"],
            "type": COMMAND_CHAT_INPUT,
            "options": built,
        }
        if resolved:
            data["resolved"] = resolved
        if schema.get("guild_id"):
            data["guild_id"] = schema["guild_id"]
        interaction = await self._send_interaction(
            INTERACTION_AUTOCOMPLETE, user, channel, data, command_name=command
        )
        await self.wait_until(lambda: interaction.choices is not None, timeout=timeout)
        return list(interaction.choices or [])

    async def message_command(
        self, user: FakeUser, name: str, target: FakeMessage, *, channel: FakeChannel | None = None
    ) -> FakeInteraction:
        """``user`` runs the message context-menu command ``name`` on ``target``."""
        channel = channel or self.channels[target.channel_id]
        if target.deleted or target.channel_id != channel.id:
            raise FakeDiscordUsageError("the target message is not visible in that channel")
        if target.ephemeral:
            raise FakeDiscordUsageError("context-menu commands cannot target ephemeral messages")
        schema = self._find_command(name, COMMAND_MESSAGE, user, channel)
        data: dict[str, Any] = {
            "id": schema["id"],
            "name": schema["name"],
            "type": COMMAND_MESSAGE,
            "target_id": str(target.id),
            "resolved": {"messages": {str(target.id): self._message_payload(target)}},
        }
        if schema.get("guild_id"):
            data["guild_id"] = schema["guild_id"]
        return await self._send_interaction(INTERACTION_COMMAND, user, channel, data, command_name=name)

    async def user_command(
        self, user: FakeUser, name: str, target: FakeUser, *, channel: FakeChannel
    ) -> FakeInteraction:
        """``user`` runs the user context-menu command ``name`` on ``target``."""
        schema = self._find_command(name, COMMAND_USER, user, channel)
        resolved: dict[str, dict[str, Any]] = {}
        self._resolve_user(target, channel, resolved)
        data: dict[str, Any] = {
            "id": schema["id"],
            "name": schema["name"],
            "type": COMMAND_USER,
            "target_id": str(target.id),
            "resolved": resolved,
        }
        if schema.get("guild_id"):
            data["guild_id"] = schema["guild_id"]
        return await self._send_interaction(INTERACTION_COMMAND, user, channel, data, command_name=name)

    async def click(self, user: FakeUser, message: FakeMessage, custom_id: str) -> FakeInteraction:
        """``user`` clicks the button ``custom_id`` on ``message``."""
        component = self._clickable(user, message, custom_id)
        if component.get("type") != COMPONENT_BUTTON:
            raise FakeDiscordUsageError(f"{custom_id!r} is not a button")
        data = {"custom_id": custom_id, "component_type": COMPONENT_BUTTON, "id": component.get("id")}
        return await self._send_interaction(
            INTERACTION_COMPONENT, user, self.channels[message.channel_id], data, source=message
        )

    async def select(
        self, user: FakeUser, message: FakeMessage, custom_id: str, values: Sequence[Any]
    ) -> FakeInteraction:
        """``user`` picks ``values`` in the select menu ``custom_id`` on ``message``.

        String selects take option values; user/role/mentionable/channel selects take the fake objects.
        """
        component = self._clickable(user, message, custom_id)
        channel = self.channels[message.channel_id]
        ctype = component.get("type")
        if ctype not in _SELECT_TYPES:
            raise FakeDiscordUsageError(f"{custom_id!r} is not a select menu")
        resolved: dict[str, dict[str, Any]] = {}
        raw_values = self._select_values(component, list(values), channel, resolved)
        data: dict[str, Any] = {
            "custom_id": custom_id,
            "component_type": ctype,
            "values": raw_values,
            "id": component.get("id"),
        }
        if resolved:
            data["resolved"] = resolved
        return await self._send_interaction(INTERACTION_COMPONENT, user, channel, data, source=message)

    async def submit_modal(
        self,
        user: FakeUser,
        source: FakeInteraction | FakeMessage,
        custom_id: str | None = None,
        *,
        fields: Mapping[str, Any] | None = None,
        attachments: Mapping[str, Sequence[tuple[str, bytes]]] | None = None,
    ) -> FakeInteraction:
        """``user`` fills in and submits the modal the bot opened (a type-9 callback).

        ``source`` is the interaction that got the modal, or the message whose component opened it.
        ``fields`` maps text-input custom ids to strings (select/checkbox groups: lists, checkbox: bool);
        ``attachments`` maps file-upload custom ids to ``[(filename, bytes), ...]``.
        """
        parent = self._modal_parent(user, source)
        modal = parent.modal
        assert modal is not None
        if custom_id is not None and custom_id != modal["custom_id"]:
            raise FakeDiscordUsageError(f"the open modal is {modal['custom_id']!r}, not {custom_id!r}")
        given = dict(fields or {})
        uploads = {k: list(v) for k, v in (attachments or {}).items()}
        resolved: dict[str, dict[str, Any]] = {}
        components = [
            self._modal_submit_component(c, given, uploads, parent.channel, resolved)
            for c in modal["components"]
        ]
        leftover = set(given) | set(uploads)
        if leftover:
            raise FakeDiscordUsageError(f"the modal has no fields {sorted(leftover)}")
        data: dict[str, Any] = {"custom_id": modal["custom_id"], "components": components}
        if resolved:
            data["resolved"] = resolved
        parent.modal = None  # the modal closes on submit
        return await self._send_interaction(
            INTERACTION_MODAL_SUBMIT,
            user,
            parent.channel,
            data,
            source=parent.source_message,
            parent=parent,
        )

    # ---------------------------------------------------------------- interaction building

    def _find_command(
        self, name: str, command_type: int, user: FakeUser, channel: FakeChannel
    ) -> dict[str, Any]:
        if not any(s.identified for s in self._sessions):
            raise FakeDiscordUsageError("the bot is not connected to the gateway")
        guild = channel.guild
        if channel.deleted:
            raise FakeDiscordUsageError("the channel was deleted")
        candidates: list[dict[str, Any]] = []
        if guild is not None:
            if guild.member(user) is None:
                raise FakeDiscordUsageError(
                    f"{user.name} is not a member of {guild.name}; call guild.add_member"
                )
            candidates += self._commands.get(guild.id, [])
        candidates += self._commands.get(None, [])
        schema = next((c for c in candidates if c["name"] == name and c.get("type", 1) == command_type), None)
        if schema is None:
            kind = {COMMAND_CHAT_INPUT: "slash", COMMAND_USER: "user", COMMAND_MESSAGE: "message"}[
                command_type
            ]
            raise FakeDiscordUsageError(f"the bot never synced a {kind} command named {name!r} usable here")
        contexts = schema.get("contexts")
        if guild is None:
            allowed = (1 in contexts) if contexts is not None else schema.get("dm_permission") is not False
            if not allowed or schema.get("guild_id"):
                raise FakeDiscordUsageError(f"{name!r} cannot be used in DMs")
        else:
            if contexts is not None and 0 not in contexts:
                raise FakeDiscordUsageError(f"{name!r} cannot be used in guilds")
            required = schema.get("default_member_permissions")
            if required is not None:
                perms = self._channel_permissions(channel, user.id)
                need = int(required)
                if not (perms & Permission.ADMINISTRATOR) and (need == 0 or perms & need != need):
                    raise FakeDiscordUsageError(
                        f"Discord hides {name!r} from {user.name} (default_member_permissions)"
                    )
        return schema

    def _build_subcommand_path(
        self,
        schema: dict[str, Any],
        path: list[str],
        given: dict[str, Any],
        resolved: dict[str, dict[str, Any]],
        channel: FakeChannel,
        limit: int,
        *,
        focused: str | None,
    ) -> list[dict[str, Any]]:
        options = schema.get("options") or []
        has_subs = any(o["type"] in (OPT_SUB_COMMAND, OPT_SUB_COMMAND_GROUP) for o in options)
        if has_subs:
            if not path:
                subs = [o["name"] for o in options]
                raise FakeDiscordUsageError(f"/{schema['name']} needs a subcommand: one of {subs}")
            sub = next((o for o in options if o["name"] == path[0]), None)
            if sub is None:
                raise FakeDiscordUsageError(f"/{schema['name']} has no subcommand {path[0]!r}")
            inner = self._build_subcommand_path(
                sub, path[1:], given, resolved, channel, limit, focused=focused
            )
            entry: dict[str, Any] = {"name": sub["name"], "type": sub["type"]}
            if inner or sub["type"] == OPT_SUB_COMMAND:
                entry["options"] = inner
            return [entry]
        if path:
            raise FakeDiscordUsageError(f"{schema['name']!r} has no subcommand {path[0]!r}")
        built: list[dict[str, Any]] = []
        known = {o["name"] for o in options}
        unknown = set(given) - known
        if unknown:
            raise FakeDiscordUsageError(
                f"{schema['name']!r} has no options {sorted(unknown)}; it has {sorted(known)}"
            )
        for option in options:
            name = option["name"]
            if name not in given:
                if option.get("required") and focused is None:
                    raise FakeDiscordUsageError(f"required option {name!r} is missing")
                continue
            if name == focused:
                if not option.get("autocomplete"):
                    raise FakeDiscordUsageError(f"option {name!r} has no autocomplete")
                built.append(
                    {"name": name, "type": option["type"], "value": str(given[name]), "focused": True}
                )
                continue
            value = self._option_value(option, given[name], resolved, channel, limit)
            built.append({"name": name, "type": option["type"], "value": value})
        return built

    def _option_value(
        self,
        option: dict[str, Any],
        value: Any,
        resolved: dict[str, dict[str, Any]],
        channel: FakeChannel,
        limit: int,
    ) -> Any:
        name, otype = option["name"], option["type"]

        def bad(expected: str) -> FakeDiscordUsageError:
            return FakeDiscordUsageError(f"option {name!r} expects {expected}, got {value!r}")

        if otype == OPT_STRING:
            if not isinstance(value, str):
                raise bad("a string")
            if len(value) < _opt(option, "min_length", 0) or len(value) > _opt(option, "max_length", 6000):
                raise FakeDiscordUsageError(
                    f"option {name!r}: length {len(value)} is outside the allowed range"
                )
        elif otype in (OPT_INTEGER, OPT_NUMBER):
            if not (_is_int(value) or (otype == OPT_NUMBER and isinstance(value, float))):
                raise bad("an integer" if otype == OPT_INTEGER else "a number")
            if ("min_value" in option and value < option["min_value"]) or (
                "max_value" in option and value > option["max_value"]
            ):
                raise FakeDiscordUsageError(f"option {name!r}: {value} is outside the allowed range")
        elif otype == OPT_BOOLEAN:
            if not isinstance(value, bool):
                raise bad("a bool")
        elif otype == OPT_USER:
            user = value.user if isinstance(value, FakeMember) else value
            if not isinstance(user, FakeUser):
                raise bad("a FakeUser")
            self._resolve_user(user, channel, resolved)
            return str(user.id)
        elif otype == OPT_ROLE:
            if not isinstance(value, FakeRole) or channel.guild is None or value.guild_id != channel.guild.id:
                raise bad("a FakeRole of this guild")
            resolved.setdefault("roles", {})[str(value.id)] = value.payload()
            return str(value.id)
        elif otype == OPT_MENTIONABLE:
            if isinstance(value, FakeRole):
                resolved.setdefault("roles", {})[str(value.id)] = value.payload()
                return str(value.id)
            user = value.user if isinstance(value, FakeMember) else value
            if not isinstance(user, FakeUser):
                raise bad("a FakeUser or FakeRole")
            self._resolve_user(user, channel, resolved)
            return str(user.id)
        elif otype == OPT_CHANNEL:
            if not isinstance(value, FakeChannel) or value.guild is not channel.guild or value.deleted:
                raise bad("a live FakeChannel of this guild")
            types = option.get("channel_types")
            if types and value.type not in types:
                raise FakeDiscordUsageError(f"option {name!r} only accepts channel types {types}")
            payload = self._channel_payload(value)
            payload["permissions"] = str(self._channel_permissions(value, self.bot_user.id))
            resolved.setdefault("channels", {})[str(value.id)] = payload
            return str(value.id)
        elif otype == OPT_ATTACHMENT:
            if not (
                isinstance(value, tuple) and len(value) in (2, 3) and isinstance(value[1], bytes | bytearray)
            ):
                raise bad("a (filename, bytes) tuple")
            filename, data = value[0], bytes(value[1])
            if len(data) > limit:
                raise FakeDiscordUsageError(f"{filename} is larger than the upload limit ({limit} bytes)")
            attachment = self._store_attachment(channel.id, filename, data, ephemeral=True)
            if len(value) == 3:
                attachment.content_type = value[2]
            resolved.setdefault("attachments", {})[str(attachment.id)] = attachment.payload()
            return str(attachment.id)
        else:
            raise FakeDiscordUsageError(f"option type {otype} is not supported by the fake")
        choices = option.get("choices")
        if choices and value not in [c["value"] for c in choices]:
            raise FakeDiscordUsageError(f"option {name!r} must be one of {[c['value'] for c in choices]}")
        return value

    def _resolve_user(
        self, user: FakeUser, channel: FakeChannel, resolved: dict[str, dict[str, Any]]
    ) -> None:
        resolved.setdefault("users", {})[str(user.id)] = user.payload()
        guild = channel.guild
        member = guild.member(user) if guild is not None else None
        if member is not None:
            payload = self._member_payload(member, with_user=False)
            payload["permissions"] = str(self._channel_permissions(channel, user.id))
            resolved.setdefault("members", {})[str(user.id)] = payload

    def _clickable(self, user: FakeUser, message: FakeMessage, custom_id: str) -> dict[str, Any]:
        if message.deleted:
            raise FakeDiscordUsageError("the message was deleted")
        if message.ephemeral and (message.interaction is None or message.interaction.user is not user):
            raise FakeDiscordUsageError("only the interaction user can see (and click) an ephemeral message")
        channel = self.channels[message.channel_id]
        if channel.guild is not None and channel.guild.member(user) is None:
            raise FakeDiscordUsageError(f"{user.name} is not a member of {channel.guild.name}")
        component = message.find_component(custom_id)
        if component is None:
            raise FakeDiscordUsageError(f"message {message.id} has no component {custom_id!r}")
        if component.get("disabled"):
            raise FakeDiscordUsageError(f"component {custom_id!r} is disabled")
        return component

    def _select_values(
        self,
        component: dict[str, Any],
        values: list[Any],
        channel: FakeChannel,
        resolved: dict[str, dict[str, Any]],
    ) -> list[str]:
        low, high = _opt(component, "min_values", 1), _opt(component, "max_values", 1)
        if not low <= len(values) <= high:
            raise FakeDiscordUsageError(f"select {component.get('custom_id')!r} takes {low}..{high} values")
        ctype = component["type"]
        if ctype == COMPONENT_STRING_SELECT:
            allowed = [o["value"] for o in component.get("options", [])]
            for value in values:
                if value not in allowed:
                    raise FakeDiscordUsageError(
                        f"{value!r} is not an option of {component.get('custom_id')!r}"
                    )
            return [str(v) for v in values]
        raw: list[str] = []
        for value in values:
            if isinstance(value, FakeRole) and ctype in (COMPONENT_ROLE_SELECT, COMPONENT_MENTIONABLE_SELECT):
                resolved.setdefault("roles", {})[str(value.id)] = value.payload()
                raw.append(str(value.id))
            elif isinstance(value, FakeUser | FakeMember) and ctype in (
                COMPONENT_USER_SELECT,
                COMPONENT_MENTIONABLE_SELECT,
            ):
                user = value.user if isinstance(value, FakeMember) else value
                self._resolve_user(user, channel, resolved)
                raw.append(str(user.id))
            elif isinstance(value, FakeChannel) and ctype == COMPONENT_CHANNEL_SELECT:
                payload = self._channel_payload(value)
                payload["permissions"] = str(self._channel_permissions(value, self.bot_user.id))
                resolved.setdefault("channels", {})[str(value.id)] = payload
                raw.append(str(value.id))
            else:
                raise FakeDiscordUsageError(f"{value!r} cannot be picked in a select of type {ctype}")
        return raw

    def _modal_parent(self, user: FakeUser, source: FakeInteraction | FakeMessage) -> FakeInteraction:
        if isinstance(source, FakeInteraction):
            parent: FakeInteraction | None = source
        else:
            parent = next(
                (
                    i
                    for i in reversed(self.interactions)
                    if i.source_message is source and i.modal is not None
                ),
                None,
            )
        if parent is None or parent.modal is None:
            raise FakeDiscordUsageError("the bot did not open a modal there (no type-9 callback)")
        if parent.user is not user:
            raise FakeDiscordUsageError("only the user the modal was shown to can submit it")
        return parent

    def _modal_submit_component(
        self,
        component: dict[str, Any],
        given: dict[str, Any],
        uploads: dict[str, list[tuple[str, bytes]]],
        channel: FakeChannel,
        resolved: dict[str, dict[str, Any]],
    ) -> dict[str, Any]:
        ctype = component["type"]
        if ctype == COMPONENT_ACTION_ROW:
            return {
                "type": ctype,
                "id": component["id"],
                "components": [
                    self._modal_submit_component(c, given, uploads, channel, resolved)
                    for c in component["components"]
                ],
            }
        if ctype == COMPONENT_LABEL:
            child = self._modal_submit_component(component["component"], given, uploads, channel, resolved)
            return {"type": ctype, "id": component["id"], "component": child}
        if ctype == COMPONENT_TEXT_DISPLAY:
            return {"type": ctype, "id": component["id"]}
        custom_id = component["custom_id"]
        required = _opt(component, "required", True)
        if ctype == COMPONENT_TEXT_INPUT:
            value = given.pop(custom_id, component.get("value") or "")
            if not isinstance(value, str):
                raise FakeDiscordUsageError(f"text input {custom_id!r} takes a string")
            if required and not value:
                raise FakeDiscordUsageError(f"text input {custom_id!r} is required")
            low, high = _opt(component, "min_length", 0), _opt(component, "max_length", 4000)
            if value and not low <= len(value) <= high:
                raise FakeDiscordUsageError(
                    f"text input {custom_id!r}: length {len(value)} is outside the allowed range"
                )
            return {"type": ctype, "id": component["id"], "custom_id": custom_id, "value": value}
        if ctype == COMPONENT_FILE_UPLOAD:
            files = uploads.pop(custom_id, [])
            low = _opt(component, "min_values", 1 if required else 0)
            high = _opt(component, "max_values", 1)
            if (required and not files) or not low <= len(files) <= high:
                raise FakeDiscordUsageError(f"file upload {custom_id!r} takes {low}..{high} files")
            ids: list[str] = []
            limit = self._size_limit(channel)
            for filename, data in files:
                if len(data) > limit:
                    raise FakeDiscordUsageError(f"{filename} is larger than the upload limit ({limit} bytes)")
                attachment = self._store_attachment(channel.id, filename, bytes(data), ephemeral=True)
                resolved.setdefault("attachments", {})[str(attachment.id)] = attachment.payload()
                ids.append(str(attachment.id))
            return {"type": ctype, "id": component["id"], "custom_id": custom_id, "values": ids}
        if ctype in _SELECT_TYPES:
            values = given.pop(custom_id, [])
            if required and not values:
                raise FakeDiscordUsageError(f"select {custom_id!r} is required")
            if not values:
                return {"type": ctype, "id": component["id"], "custom_id": custom_id, "values": []}
            raw = self._select_values(component, list(values), channel, resolved)
            return {"type": ctype, "id": component["id"], "custom_id": custom_id, "values": raw}
        if ctype == COMPONENT_RADIO_GROUP:
            value = given.pop(custom_id, None)
            if required and value is None:
                raise FakeDiscordUsageError(f"radio group {custom_id!r} is required")
            return {"type": ctype, "id": component["id"], "custom_id": custom_id, "value": value}
        if ctype == COMPONENT_CHECKBOX_GROUP:
            values = list(given.pop(custom_id, []))
            return {"type": ctype, "id": component["id"], "custom_id": custom_id, "values": values}
        if ctype == COMPONENT_CHECKBOX:
            return {
                "type": ctype,
                "id": component["id"],
                "custom_id": custom_id,
                "value": bool(given.pop(custom_id, False)),
            }
        raise FakeDiscordUsageError(f"component type {ctype} in a modal is not supported by the fake")

    async def _send_interaction(
        self,
        itype: int,
        user: FakeUser,
        channel: FakeChannel,
        data: dict[str, Any],
        *,
        command_name: str | None = None,
        source: FakeMessage | None = None,
        parent: FakeInteraction | None = None,
        locale: str = "en-US",
    ) -> FakeInteraction:
        guild = channel.guild
        session = self._session_for_guild(guild.id if guild else None)
        if session is None:
            raise FakeDiscordUsageError("the bot has no identified gateway connection for that guild")
        interaction_id = self._snowflake()
        token = "aW50ZXJhY3Rpb246" + secrets.token_urlsafe(48)
        limit = self._size_limit(channel)
        channel_payload = self._channel_payload(channel)
        channel_payload["permissions"] = str(self._channel_permissions(channel, user.id))
        payload: dict[str, Any] = {
            "id": str(interaction_id),
            "application_id": str(self.application_id),
            "type": itype,
            "data": data,
            "token": token,
            "version": 1,
            "channel_id": str(channel.id),
            "channel": channel_payload,
            "locale": locale,
            "app_permissions": str(self._channel_permissions(channel, self.bot_user.id)),
            "entitlements": [],
            "entitlement_sku_ids": [],
            "authorizing_integration_owners": {"0": str(guild.id) if guild else "0"},
            "context": 0 if guild else 1,
            "attachment_size_limit": limit,
        }
        if guild is not None:
            member = guild.member(user)
            if member is None:
                raise FakeDiscordUsageError(f"{user.name} is not a member of {guild.name}")
            member_payload = self._member_payload(member)
            member_payload["permissions"] = channel_payload["permissions"]
            payload.update(
                guild_id=str(guild.id),
                guild={"id": str(guild.id), "locale": guild.locale, "features": []},
                guild_locale=guild.locale,
                member=member_payload,
            )
        else:
            payload["user"] = user.payload()
        if source is not None:
            payload["message"] = self._message_payload(source)
        interaction = FakeInteraction(
            id=interaction_id,
            token=token,
            type=itype,
            user=user,
            channel=channel,
            payload=payload,
            created_at=self.now(),
            attachment_size_limit=limit,
            command_name=command_name,
            source_message=source,
            parent=parent,
            _fake=self,
        )
        self.interactions.append(interaction)
        self._interactions_by_id[interaction_id] = interaction
        self._interactions_by_token[token] = interaction
        await self._gateway_dispatch(session, "INTERACTION_CREATE", payload)
        return interaction

    # ---------------------------------------------------------------- permissions and limits

    def _size_limit(self, channel: FakeChannel) -> int:
        return (
            channel.guild.attachment_size_limit
            if channel.guild is not None
            else DEFAULT_ATTACHMENT_SIZE_LIMIT
        )

    def _channel_permissions(self, channel: FakeChannel, user_id: int) -> int:
        """A member's permissions in a channel: base, then @everyone, role and member overwrites."""
        guild = channel.guild
        if guild is None:
            return _DM_PERMISSIONS
        perms = guild.base_permissions(user_id)
        if perms & Permission.ADMINISTRATOR:
            return ALL_PERMISSIONS
        target = channel.parent if channel.is_thread and channel.parent is not None else channel
        overwrites = target.overwrites
        member = guild.member(user_id)
        if guild.id in overwrites:
            _, allow, deny = overwrites[guild.id]
            perms = (perms & ~deny) | allow
        role_allow = role_deny = 0
        for role_id in member.role_ids if member else []:
            if role_id in overwrites and overwrites[role_id][0] == 0:
                role_allow |= overwrites[role_id][1]
                role_deny |= overwrites[role_id][2]
        perms = (perms & ~role_deny) | role_allow
        if user_id in overwrites and overwrites[user_id][0] == 1:
            perms = (perms & ~overwrites[user_id][2]) | overwrites[user_id][1]
        if not perms & Permission.VIEW_CHANNEL:
            return 0
        return perms

    def _require_bot_permissions(self, channel: FakeChannel, needed: int) -> None:
        if channel.guild is None:
            return
        perms = self._channel_permissions(channel, self.bot_user.id)
        if not perms & Permission.VIEW_CHANNEL:
            raise _missing_access()
        if perms & needed != needed:
            raise _missing_permissions()

    # ---------------------------------------------------------------- payloads

    def _member_payload(self, member: FakeMember, *, with_user: bool = True) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "roles": [str(r) for r in member.role_ids],
            "nick": member.nick,
            "avatar": None,
            "banner": None,
            "joined_at": member.joined_at,
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "pending": False,
            "flags": member.flags,
            "communication_disabled_until": None,
            "avatar_decoration_data": None,
        }
        if with_user:
            payload["user"] = member.user.payload()
        return payload

    def _channel_payload(self, channel: FakeChannel) -> dict[str, Any]:
        if channel.type == CHANNEL_DM:
            return {
                "id": str(channel.id),
                "type": CHANNEL_DM,
                "last_message_id": str(channel.last_message_id) if channel.last_message_id else None,
                "flags": 0,
                "recipients": [u.payload() for u in channel.recipients],
            }
        assert channel.guild is not None
        if channel.is_thread:
            assert channel.parent_id is not None and channel.owner_id is not None
            return {
                "id": str(channel.id),
                "type": channel.type,
                "guild_id": str(channel.guild.id),
                "parent_id": str(channel.parent_id),
                "owner_id": str(channel.owner_id),
                "name": channel.name,
                "last_message_id": str(channel.last_message_id) if channel.last_message_id else None,
                "rate_limit_per_user": channel.rate_limit_per_user,
                "message_count": channel.message_count,
                "member_count": 1,
                "total_message_sent": channel.message_count,
                "flags": 0,
                "applied_tags": [],
                "thread_metadata": {
                    "archived": channel.archived,
                    "auto_archive_duration": channel.auto_archive_duration,
                    "archive_timestamp": channel.created_at,
                    "locked": channel.locked,
                    "create_timestamp": channel.created_at,
                    "invitable": channel.type == CHANNEL_PRIVATE_THREAD,
                },
            }
        return {
            "id": str(channel.id),
            "type": channel.type,
            "guild_id": str(channel.guild.id),
            "name": channel.name,
            "position": channel.position,
            "permission_overwrites": [
                {"id": str(target), "type": kind, "allow": str(allow), "deny": str(deny)}
                for target, (kind, allow, deny) in channel.overwrites.items()
            ],
            "parent_id": None,
            "topic": channel.topic,
            "nsfw": False,
            "rate_limit_per_user": channel.rate_limit_per_user,
            "last_message_id": str(channel.last_message_id) if channel.last_message_id else None,
            "default_auto_archive_duration": 1440,
            "default_thread_rate_limit_per_user": 0,
            "flags": 0,
        }

    def _guild_payload(self, guild: FakeGuild, *, gateway: bool = False) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": str(guild.id),
            "name": guild.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "owner_id": str(guild.owner_id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "roles": [r.payload() for r in sorted(guild.roles.values(), key=lambda r: r.id)],
            "emojis": [],
            "stickers": [],
            "features": [],
            "mfa_level": 0,
            "application_id": None,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "safety_alerts_channel_id": None,
            "max_members": 500000,
            "max_presences": None,
            "vanity_url_code": None,
            "premium_tier": guild.premium_tier,
            "premium_subscription_count": 0,
            "preferred_locale": guild.locale,
            "nsfw_level": 0,
            "premium_progress_bar_enabled": False,
        }
        if gateway:
            bot_member = guild.members[self.bot_user.id]
            payload.update(
                joined_at=guild.joined_at,
                large=False,
                unavailable=False,
                member_count=len(guild.members),
                voice_states=[],
                members=[self._member_payload(bot_member)],
                channels=[
                    self._channel_payload(c)
                    for c in guild.channels.values()
                    if not c.is_thread and not c.deleted
                ],
                threads=[
                    self._channel_payload(c) for c in guild.channels.values() if c.is_thread and not c.deleted
                ],
                presences=[],
                stage_instances=[],
                guild_scheduled_events=[],
                soundboard_sounds=[],
            )
        return payload

    def _message_payload(self, message: FakeMessage) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": str(message.id),
            "channel_id": str(message.channel_id),
            "author": message.author.payload(),
            "content": message.content,
            "timestamp": message.timestamp,
            "edited_timestamp": message.edited_timestamp,
            "tts": message.tts,
            "mention_everyone": message.mention_everyone,
            "mentions": [self.users[u].payload() for u in message.mentions if u in self.users],
            "mention_roles": [str(r) for r in message.mention_roles],
            "attachments": [a.payload() for a in message.attachments],
            "embeds": copy.deepcopy(message.embeds),
            "components": copy.deepcopy(message.components),
            "pinned": False,
            "type": message.type,
            "flags": message.flags,
            "sticker_items": [],
        }
        if message.guild_id is not None:
            payload["guild_id"] = str(message.guild_id)
        if message.webhook_id is not None:
            payload["webhook_id"] = str(message.webhook_id)
            payload["application_id"] = str(self.application_id)
        interaction = message.interaction
        if interaction is not None:
            metadata: dict[str, Any] = {
                "id": str(interaction.id),
                "type": interaction.type,
                "user": interaction.user.payload(),
                "authorizing_integration_owners": interaction.payload["authorizing_integration_owners"],
            }
            if interaction.type == INTERACTION_COMMAND:
                metadata["name"] = interaction.command_name
                metadata["command_type"] = interaction.payload["data"].get("type", 1)
            if interaction.source_message is not None:
                metadata["interacted_message_id"] = str(interaction.source_message.id)
            payload["interaction_metadata"] = metadata
        if message.thread is not None and not message.thread.deleted:
            payload["thread"] = self._channel_payload(message.thread)
        if message.message_reference is not None:
            payload["message_reference"] = dict(message.message_reference)
        return payload

    # ---------------------------------------------------------------- storage

    def _cdn_url(self, scope: int, attachment_id: int, filename: str) -> str:
        issued = int(self.now())
        expires = issued + CDN_URL_LIFETIME_SECONDS
        signature = hmac.new(
            self._cdn_secret, f"{attachment_id}:{expires:x}".encode(), hashlib.sha256
        ).hexdigest()
        query = f"ex={expires:x}&is={issued:x}&hm={signature}"
        return (
            f"{self.base_url}/cdn/attachments/{scope}/{attachment_id}/{urllib.parse.quote(filename)}?{query}"
        )

    def _store_attachment(
        self,
        scope: int,
        filename: str,
        data: bytes,
        *,
        description: str | None = None,
        ephemeral: bool = False,
    ) -> StoredAttachment:
        attachment_id = self._snowflake()
        content_type = mimetypes.guess_type(filename)[0]
        size = _image_size(data) if content_type and content_type.startswith("image/") else None
        attachment = StoredAttachment(
            id=attachment_id,
            filename=filename,
            data=data,
            content_type=content_type,
            url=self._cdn_url(scope, attachment_id, filename),
            description=description,
            width=size[0] if size else None,
            height=size[1] if size else None,
            ephemeral=ephemeral,
        )
        self._attachments[attachment_id] = attachment
        return attachment

    def _add_message(self, message: FakeMessage, channel: FakeChannel) -> None:
        self.messages.append(message)
        self._message_index[message.id] = message
        channel.last_message_id = message.id
        if channel.is_thread:
            channel.message_count += 1

    def _resolve_mentions(
        self, content: str, allowed: dict[str, Any] | None, channel: FakeChannel
    ) -> tuple[list[int], list[int], bool]:
        """Who the message pings, after ``allowed_mentions`` (Discord's default: everything in the text)."""
        users = [int(u) for u in _USER_MENTION_RE.findall(content)]
        roles = [int(r) for r in _ROLE_MENTION_RE.findall(content)]
        everyone = "@everyone" in content or "@here" in content
        if allowed is not None:
            parse = allowed.get("parse") or []
            allowed_users = {int(u) for u in allowed.get("users") or []}
            allowed_roles = {int(r) for r in allowed.get("roles") or []}
            users = [u for u in users if "users" in parse or u in allowed_users]
            roles = [r for r in roles if "roles" in parse or r in allowed_roles]
            everyone = everyone and "everyone" in parse
        if channel.guild is not None:
            roles = [r for r in roles if r in channel.guild.roles]
        return list(dict.fromkeys(users)), list(dict.fromkeys(roles)), everyone

    # ---------------------------------------------------------------- message validation

    def _validate_embeds(self, embeds: Any, path: list[str | int]) -> list[dict[str, Any]]:
        if not isinstance(embeds, list):
            raise _form_error(path, "LIST_TYPE_CONVERT", "Only iterables may be used in a ListType")
        if len(embeds) > MAX_EMBEDS:
            raise _too_long(path, MAX_EMBEDS)
        total = 0
        result = []
        for i, embed in enumerate(embeds):
            here = [*path, i]
            if not isinstance(embed, dict):
                raise _form_error(here, "DICT_TYPE_CONVERT", "Only dictionaries may be used in a DictType")
            for key, limit in (("title", 256), ("description", 4096)):
                if _str_len(embed.get(key)) > limit:
                    raise _too_long([*here, key], limit)
            footer_text = (embed.get("footer") or {}).get("text")
            author_name = (embed.get("author") or {}).get("name")
            if _str_len(footer_text) > 2048:
                raise _too_long([*here, "footer", "text"], 2048)
            if _str_len(author_name) > 256:
                raise _too_long([*here, "author", "name"], 256)
            fields = embed.get("fields") or []
            if len(fields) > 25:
                raise _too_long([*here, "fields"], 25)
            for j, fld in enumerate(fields):
                for key, limit in (("name", 256), ("value", 1024)):
                    value = fld.get(key)
                    if not isinstance(value, str) or not value:
                        raise _required([*here, "fields", j, key])
                    if len(value) > limit:
                        raise _too_long([*here, "fields", j, key], limit)
                total += len(fld["name"]) + len(fld["value"])
            color = embed.get("color")
            if color is not None and not (_is_int(color) and 0 <= color <= 0xFFFFFF):
                raise _form_error([*here, "color"], "NUMBER_TYPE_MAX", "int value should be <= 16777215.")
            total += _str_len(embed.get("title")) + _str_len(embed.get("description"))
            total += _str_len(footer_text) + _str_len(author_name)
            result.append({"type": "rich", **copy.deepcopy(embed)})
        if total > MAX_EMBED_TOTAL_CHARS:
            raise _form_error(
                path, "MAX_EMBED_SIZE_EXCEEDED", f"Embed size exceeds maximum size of {MAX_EMBED_TOTAL_CHARS}"
            )
        return result

    def _validate_components(
        self, components: Any, flags: int, path: list[str | int]
    ) -> list[dict[str, Any]]:
        if not isinstance(components, list):
            raise _form_error(path, "LIST_TYPE_CONVERT", "Only iterables may be used in a ListType")
        v2 = bool(flags & FLAG_IS_COMPONENTS_V2)
        if not v2 and len(components) > 5:
            raise _too_long(path, 5)
        components = copy.deepcopy(components)
        seen: set[str] = set()
        for i, top in enumerate(components):
            if not isinstance(top, dict):
                raise _form_error(
                    [*path, i], "DICT_TYPE_CONVERT", "Only dictionaries may be used in a DictType"
                )
            if not v2 and top.get("type") != COMPONENT_ACTION_ROW:
                raise _form_error(
                    [*path, i, "type"], "UNION_TYPE_CHOICES", 'Value of field "type" must be one of (1,).'
                )
        all_components = list(_walk_components(components))
        if v2 and len(all_components) > 40:
            raise _too_long(path, 40)
        next_id = max([c["id"] for c in all_components if _is_int(c.get("id"))], default=0) + 1
        for component in all_components:
            ctype = component.get("type")
            if ctype == COMPONENT_ACTION_ROW:
                children = component.get("components") or []
                if not 1 <= len(children) <= 5:
                    raise _form_error(path, "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 5 in length.")
                if any(c.get("type") in _SELECT_TYPES for c in children) and len(children) > 1:
                    raise _form_error(
                        path,
                        "COMPONENT_LAYOUT_WIDTH_EXCEEDED",
                        "The specified component exceeds the maximum width",
                    )
            elif ctype == COMPONENT_BUTTON:
                if component.get("style") == 5:
                    if not component.get("url") or "custom_id" in component:
                        raise _form_error(
                            path, "BUTTON_COMPONENT_INVALID_URL", "A link button needs a url and no custom_id"
                        )
                elif not component.get("custom_id") and component.get("style") != 6:
                    raise _form_error(path, "BUTTON_COMPONENT_CUSTOM_ID_REQUIRED", "A custom id is required")
                if _str_len(component.get("label")) > 80:
                    raise _too_long([*path, "label"], 80)
            elif ctype == COMPONENT_STRING_SELECT:
                options = component.get("options") or []
                if not 1 <= len(options) <= 25:
                    raise _form_error(path, "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 25 in length.")
            elif ctype == COMPONENT_TEXT_INPUT:
                raise _form_error(path, "COMPONENT_TYPE_INVALID", "Text inputs are only allowed in modals")
            custom_id = component.get("custom_id")
            if custom_id is not None:
                if not isinstance(custom_id, str) or not 1 <= len(custom_id) <= 100:
                    raise _form_error(
                        [*path, "custom_id"], "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length."
                    )
                if custom_id in seen:
                    raise _form_error(
                        path, "COMPONENT_CUSTOM_ID_DUPLICATED", "Component custom id cannot be duplicated"
                    )
                seen.add(custom_id)
            if not _is_int(component.get("id")):
                component["id"] = next_id
                next_id += 1
        return components

    def _validate_modal(self, data: dict[str, Any]) -> dict[str, Any]:
        path: list[str | int] = ["data"]
        custom_id, title = data.get("custom_id"), data.get("title")
        if not isinstance(custom_id, str) or not 1 <= len(custom_id) <= 100:
            raise _form_error(
                [*path, "custom_id"], "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length."
            )
        if not isinstance(title, str) or not 1 <= len(title) <= 45:
            raise _form_error([*path, "title"], "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 45 in length.")
        components = copy.deepcopy(data.get("components") or [])
        if not 1 <= len(components) <= 5:
            raise _form_error(
                [*path, "components"], "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 5 in length."
            )
        seen: set[str] = set()
        for i, top in enumerate(components):
            here = [*path, "components", i]
            ctype = top.get("type")
            if ctype == COMPONENT_ACTION_ROW:
                children = top.get("components") or []
                if len(children) != 1 or children[0].get("type") != COMPONENT_TEXT_INPUT:
                    raise _form_error(
                        here,
                        "COMPONENT_LAYOUT_WIDTH_EXCEEDED",
                        "An action row in a modal holds one text input",
                    )
                if not 1 <= _str_len(children[0].get("label")) <= 45:
                    raise _form_error(
                        [*here, "components", 0, "label"],
                        "BASE_TYPE_BAD_LENGTH",
                        "Must be between 1 and 45 in length.",
                    )
            elif ctype == COMPONENT_LABEL:
                child = top.get("component")
                if not isinstance(child, dict) or child.get("type") not in _MODAL_LABEL_CHILDREN:
                    raise _form_error(
                        [*here, "component"], "COMPONENT_TYPE_INVALID", "Invalid component type for a label"
                    )
                if not 1 <= _str_len(top.get("label")) <= 45:
                    raise _form_error(
                        [*here, "label"], "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 45 in length."
                    )
                if child.get("type") == COMPONENT_FILE_UPLOAD:
                    low, high = _opt(child, "min_values", 1), _opt(child, "max_values", 1)
                    if not (0 <= low <= 10 and 1 <= high <= 10 and low <= high):
                        raise _form_error(
                            [*here, "component"],
                            "BASE_TYPE_BAD_LENGTH",
                            "min_values/max_values must be within 0..10",
                        )
            elif ctype != COMPONENT_TEXT_DISPLAY:
                raise _form_error(
                    [*here, "type"], "COMPONENT_TYPE_INVALID", "Invalid component type for a modal"
                )
        next_id = 1
        for component in _walk_components(components):
            custom_id = component.get("custom_id")
            if component.get("type") in _MODAL_LABEL_CHILDREN:
                if not isinstance(custom_id, str) or not 1 <= len(custom_id) <= 100 or custom_id in seen:
                    raise _form_error(
                        [*path, "components"],
                        "COMPONENT_CUSTOM_ID_DUPLICATED",
                        "Component custom ids must be unique and 1-100 long",
                    )
                seen.add(custom_id)
            if component.get("type") == COMPONENT_TEXT_INPUT:
                if component.get("style") not in (1, 2):
                    raise _form_error(
                        [*path, "components"], "BASE_TYPE_CHOICES", "Value must be one of (1, 2)."
                    )
                if _str_len(component.get("value")) > 4000 or _opt(component, "max_length", 4000) > 4000:
                    raise _too_long([*path, "components"], 4000)
            if not _is_int(component.get("id")):
                component["id"] = next_id
            next_id = max(next_id, component["id"]) + 1
        return {"custom_id": data["custom_id"], "title": title, "components": components}

    def _compose(
        self,
        body: dict[str, Any],
        uploads: list[_Upload],
        *,
        channel: FakeChannel,
        path: list[str | int],
        size_limit: int,
        existing: FakeMessage | None,
        allow_ephemeral: bool,
    ) -> dict[str, Any]:
        """Validate a message create/edit body like Discord; return the fields to store on the message."""
        changes: dict[str, Any] = {}
        flags = body.get("flags")
        if flags is not None:
            if not _is_int(flags):
                raise _form_error([*path, "flags"], "NUMBER_TYPE_COERCE", f'Value "{flags}" is not int.')
            settable = _SETTABLE_MESSAGE_FLAGS | (FLAG_EPHEMERAL if allow_ephemeral else 0)
            new_flags = flags & settable
            if existing is not None:
                # Visibility is fixed when a message is created, and Components V2 cannot be turned off.
                keep = existing.flags & (FLAG_EPHEMERAL | FLAG_HAS_THREAD | FLAG_IS_COMPONENTS_V2)
                new_flags = (new_flags & ~FLAG_EPHEMERAL) | keep
            changes["flags"] = new_flags
        effective_flags = changes.get("flags", existing.flags if existing else 0)
        if "content" in body:
            content = body["content"]
            if content is None:
                content = ""
            if not isinstance(content, str):
                raise _form_error(
                    [*path, "content"], "STRING_TYPE_CONVERT", "Could not interpret value as string."
                )
            if len(content) > MAX_CONTENT_LENGTH:
                raise _too_long([*path, "content"], MAX_CONTENT_LENGTH)
            changes["content"] = content
        if body.get("embeds") is not None:
            changes["embeds"] = self._validate_embeds(body["embeds"], [*path, "embeds"])
        elif "embeds" in body:
            changes["embeds"] = []
        if effective_flags & FLAG_IS_COMPONENTS_V2 and (changes.get("content") or changes.get("embeds")):
            raise _form_error(
                path,
                "MESSAGE_CANNOT_USE_LEGACY_FIELDS_WITH_COMPONENTS_V2",
                "The 'content' and 'embeds' fields cannot be used when using the IS_COMPONENTS_V2 flag",
            )
        if body.get("components") is not None:
            changes["components"] = self._validate_components(
                body["components"], effective_flags, [*path, "components"]
            )
        elif "components" in body:
            changes["components"] = []
        if "allowed_mentions" in body:
            changes["allowed_mentions"] = self._validate_allowed_mentions(
                body["allowed_mentions"], [*path, "allowed_mentions"]
            )
        if "tts" in body:
            changes["tts"] = bool(body["tts"])
        # The limit bounds the whole upload, not each file: several files that each fit can still be
        # refused together (Discord answers the request as too large).
        if sum(len(upload.data) for upload in uploads) > size_limit:
            raise _entity_too_large()
        attachments = self._resolve_attachments(body, uploads, channel, path, existing)
        if attachments is not None:
            changes["attachments"] = attachments
        return changes

    def _validate_allowed_mentions(self, allowed: Any, path: list[str | int]) -> dict[str, Any] | None:
        if allowed is None:
            return None
        if not isinstance(allowed, dict):
            raise _form_error(path, "DICT_TYPE_CONVERT", "Only dictionaries may be used in a DictType")
        parse = allowed.get("parse") or []
        for i, value in enumerate(parse):
            if value not in ("users", "roles", "everyone"):
                raise _form_error(
                    [*path, "parse", i],
                    "BASE_TYPE_CHOICES",
                    "Value must be one of ('roles', 'users', 'everyone').",
                )
        for kind in ("users", "roles"):
            listed = allowed.get(kind) or []
            if kind in parse and listed:
                raise _form_error(
                    path,
                    "MESSAGE_ALLOWED_MENTIONS_PARSE_EXCLUSIVE",
                    f'parse:["{kind}"] and {kind}: [ids] are mutually exclusive.',
                )
            if len(listed) > 100:
                raise _too_long([*path, kind], 100)
        return copy.deepcopy(allowed)

    def _resolve_attachments(
        self,
        body: dict[str, Any],
        uploads: list[_Upload],
        channel: FakeChannel,
        path: list[str | int],
        existing: FakeMessage | None,
    ) -> list[StoredAttachment] | None:
        spec = body.get("attachments")
        if spec is None and not uploads:
            return None if existing is not None or "attachments" not in body else []
        by_index = {u.index: u for u in uploads}
        current = {a.id: a for a in existing.attachments} if existing else {}
        result: list[StoredAttachment] = []
        used: set[int] = set()
        if spec is None:
            result.extend(existing.attachments if existing else [])
        else:
            if not isinstance(spec, list):
                raise _form_error(
                    [*path, "attachments"], "LIST_TYPE_CONVERT", "Only iterables may be used in a ListType"
                )
            for i, entry in enumerate(spec):
                here = [*path, "attachments", i]
                if not isinstance(entry, dict) or "id" not in entry:
                    raise _required([*here, "id"])
                try:
                    ref = int(entry["id"])
                except (TypeError, ValueError):
                    raise _form_error(
                        [*here, "id"], "NUMBER_TYPE_COERCE", f'Value "{entry["id"]}" is not snowflake.'
                    ) from None
                description = entry.get("description")
                if _str_len(description) > MAX_ATTACHMENT_DESCRIPTION:
                    raise _too_long([*here, "description"], MAX_ATTACHMENT_DESCRIPTION)
                if ref in current:
                    kept = current[ref]
                    if description is not None:
                        kept.description = description
                    result.append(kept)
                elif ref in by_index and ref not in used:
                    upload = by_index[ref]
                    used.add(ref)
                    result.append(
                        self._store_attachment(
                            channel.id,
                            entry.get("filename") or upload.filename,
                            upload.data,
                            description=description,
                        )
                    )
                else:
                    raise _form_error([*here, "id"], "ATTACHMENT_NOT_FOUND", f"Unknown attachment {ref}")
        for upload in uploads:
            if upload.index not in used:
                result.append(self._store_attachment(channel.id, upload.filename, upload.data))
        if len(result) > MAX_ATTACHMENTS:
            raise _error(
                400, 30015, f"Maximum number of attachments in a message reached ({MAX_ATTACHMENTS})"
            )
        return result

    @staticmethod
    def _is_empty(content: str, embeds: list[Any], attachments: list[Any], components: list[Any]) -> bool:
        return not content.strip() and not embeds and not attachments and not components

    def _apply(self, message: FakeMessage, changes: dict[str, Any]) -> None:
        for key in ("content", "embeds", "components", "flags", "tts"):
            if key in changes:
                setattr(message, key, changes[key])
        if "attachments" in changes:
            message.attachments = changes["attachments"]
        if "allowed_mentions" in changes:
            message.allowed_mentions = changes["allowed_mentions"]
        by_name = {a.filename: a for a in message.attachments}
        for embed in message.embeds:
            for key in ("image", "thumbnail"):
                media = embed.get(key)
                url = media.get("url") if isinstance(media, dict) else None
                if isinstance(url, str) and url.startswith("attachment://") and url[13:] in by_name:
                    stored = by_name[url[13:]]
                    media.update(url=stored.url, proxy_url=stored.url)
                    if stored.width is not None:
                        media.update(width=stored.width, height=stored.height)

    def _create_message(
        self,
        channel: FakeChannel,
        body: dict[str, Any],
        uploads: list[_Upload],
        *,
        path: list[str | int],
        size_limit: int,
        interaction: FakeInteraction | None = None,
        message_type: int = 0,
    ) -> FakeMessage:
        changes = self._compose(
            body,
            uploads,
            channel=channel,
            path=path,
            size_limit=size_limit,
            existing=None,
            allow_ephemeral=interaction is not None,
        )
        message = FakeMessage(
            id=self._snowflake(),
            channel_id=channel.id,
            guild_id=channel.guild.id if channel.guild else None,
            author=self.bot_user,
            timestamp=self._iso(),
            interaction=interaction,
            webhook_id=self.application_id if interaction is not None else None,
            type=message_type,
        )
        self._apply(message, changes)
        has_other = bool(body.get("poll") or body.get("sticker_ids"))
        if not has_other and self._is_empty(
            message.content, message.embeds, message.attachments, message.components
        ):
            raise _empty_message()
        message.mentions, message.mention_roles, message.mention_everyone = self._resolve_mentions(
            message.content, message.allowed_mentions, channel
        )
        self._add_message(message, channel)
        return message

    def _edit_message(
        self,
        message: FakeMessage,
        body: dict[str, Any],
        uploads: list[_Upload],
        *,
        path: list[str | int],
        size_limit: int,
    ) -> FakeMessage:
        channel = self.channels[message.channel_id]
        changes = self._compose(
            body,
            uploads,
            channel=channel,
            path=path,
            size_limit=size_limit,
            existing=message,
            allow_ephemeral=True,
        )
        after = {
            "content": changes.get("content", message.content),
            "embeds": changes.get("embeds", message.embeds),
            "attachments": changes.get("attachments", message.attachments),
            "components": changes.get("components", message.components),
        }
        if self._is_empty(**after):
            raise _empty_message()
        message.edits.append({"content": message.content, "embeds": message.embeds, "files": message.files})
        self._apply(message, changes)
        message.flags &= ~FLAG_LOADING
        message.edited_timestamp = self._iso()
        message.mentions, message.mention_roles, message.mention_everyone = self._resolve_mentions(
            message.content, message.allowed_mentions, channel
        )
        return message

    # ---------------------------------------------------------------- gateway

    def _session_for_guild(self, guild_id: int | None) -> _GatewaySession | None:
        for session in self._sessions:
            if not session.identified:
                continue
            shard = (guild_id >> 22) % session.shard_count if guild_id is not None else 0
            if shard == session.shard_id:
                return session
        return None

    async def _gateway_dispatch(self, session: _GatewaySession, event: str, data: Any) -> None:
        self.gateway_log.append({"direction": "sent", "shard": session.shard_id, "t": event, "d": data})
        await session.dispatch(event, data)

    async def _emit_guild_event(self, guild: FakeGuild | None, event: str, data: Any, intent: int) -> None:
        session = self._session_for_guild(guild.id if guild is not None else None)
        if session is None or not session.intents & intent:
            return
        try:
            await self._gateway_dispatch(session, event, data)
        except ConnectionError:
            log.debug("gateway closed while sending %s", event)

    async def _emit_message(self, event: str, message: FakeMessage) -> None:
        if not self.dispatch_message_events or message.ephemeral:
            return
        channel = self.channels[message.channel_id]
        intent = Intent.GUILD_MESSAGES if channel.guild is not None else Intent.DIRECT_MESSAGES
        session = self._session_for_guild(channel.guild.id if channel.guild else None)
        if session is None or not session.intents & intent:
            return
        if event == "MESSAGE_DELETE":
            data: dict[str, Any] = {"id": str(message.id), "channel_id": str(message.channel_id)}
        else:
            data = self._message_payload(message)
            sees_content = (
                session.intents & Intent.MESSAGE_CONTENT
                or message.author is self.bot_user
                or self.bot_user.id in message.mentions
                or channel.guild is None
            )
            if not sees_content:
                data.update(content="", embeds=[], attachments=[], components=[])
            if channel.guild is not None and (member := channel.guild.member(message.author)) is not None:
                data["member"] = self._member_payload(member, with_user=False)
        if channel.guild is not None:
            data["guild_id"] = str(channel.guild.id)
        try:
            await self._gateway_dispatch(session, event, data)
        except ConnectionError:
            log.debug("gateway closed while sending %s", event)

    async def _handle_gateway(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=True, max_msg_size=4 * 1024 * 1024)
        await ws.prepare(request)
        self.requests.append(
            RecordedRequest(
                "GET", request.path, dict(request.query), dict(request.headers), self.now(), status=101
            )
        )
        session = _GatewaySession(ws=ws, session_id=secrets.token_hex(16))
        self._sessions.append(session)
        try:
            if request.query.get("v") != "10":
                await ws.close(code=4012, message=b"Invalid API version")
                return ws
            if request.query.get("encoding", "json") != "json":
                await ws.close(code=4002, message=b"Error while decoding payload.")
                return ws
            await session.send(
                {
                    "op": 10,
                    "d": {"heartbeat_interval": HEARTBEAT_INTERVAL_MS, "_trace": ["fake-gateway"]},
                    "s": None,
                    "t": None,
                }
            )
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    await ws.close(code=4002, message=b"Error while decoding payload.")
                    break
                try:
                    payload = json.loads(msg.data)
                    op = payload["op"]
                except (ValueError, KeyError, TypeError):
                    await ws.close(code=4002, message=b"Error while decoding payload.")
                    break
                logged = payload.get("d")
                if isinstance(logged, dict) and "token" in logged:
                    logged = {**logged, "token": "<redacted>"}  # IDENTIFY/RESUME carry the bot token
                self.gateway_log.append(
                    {"direction": "received", "shard": session.shard_id, "op": op, "d": logged}
                )
                await self._gateway_op(session, op, payload.get("d"))
                await self._notify()
        except Exception as exc:
            self.server_errors.append(exc)
            log.exception("fake gateway failed")
        finally:
            self._sessions.remove(session)
            await self._notify()
        return ws

    async def _gateway_op(self, session: _GatewaySession, op: Any, data: Any) -> None:
        ws = session.ws
        if op == 1:
            await session.send({"op": 11, "d": None, "s": None, "t": None})
        elif op == 2:
            await self._identify(session, data)
        elif op == 6:
            # Sessions are not kept: every RESUME is refused, the client has to IDENTIFY again.
            await session.send({"op": 9, "d": False, "s": None, "t": None})
        elif not session.identified:
            await ws.close(code=4003, message=b"Not authenticated.")
        elif op in (3, 4, 31):
            pass  # presence, voice state, soundboard requests: accepted, nothing to answer
        elif op == 8:
            await self._request_guild_members(session, data)
        else:
            await ws.close(code=4001, message=b"Unknown opcode.")

    async def _identify(self, session: _GatewaySession, data: Any) -> None:
        ws = session.ws
        if session.identified:
            await ws.close(code=4005, message=b"Already authenticated.")
            return
        if not isinstance(data, dict) or data.get("token") != self.token:
            await ws.close(code=4004, message=b"Authentication failed.")
            return
        intents = data.get("intents")
        if not _is_int(intents) or intents < 0:
            await ws.close(code=4013, message=b"Invalid intent(s).")
            return
        if intents & PRIVILEGED_INTENTS & ~self.privileged_intents:
            await ws.close(code=4014, message=b"Disallowed intent(s).")
            return
        shard = data.get("shard", [0, 1])
        if not (isinstance(shard, list) and len(shard) == 2 and all(_is_int(x) for x in shard)):
            await ws.close(code=4010, message=b"Invalid shard.")
            return
        shard_id, shard_count = shard
        if shard_count < 1 or not 0 <= shard_id < shard_count:
            await ws.close(code=4010, message=b"Invalid shard.")
            return
        if any(s.identified and s.shard_id == shard_id for s in self._sessions):
            await ws.close(code=4005, message=b"Already authenticated.")
            return
        session.shard_id, session.shard_count, session.intents = shard_id, shard_count, intents
        session.identified = True
        guilds = [g for g in self.guilds.values() if (g.id >> 22) % shard_count == shard_id]
        ready = {
            "v": 10,
            "user": {**self.bot_user.payload(), "verified": True, "mfa_enabled": False, "email": None},
            "user_settings": {},
            "guilds": [{"id": str(g.id), "unavailable": True} for g in guilds],
            "relationships": [],
            "private_channels": [],
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": [],
            "session_id": session.session_id,
            "session_type": "normal",
            "resume_gateway_url": self.gateway_url,
            "shard": [shard_id, shard_count],
            "application": {"id": str(self.application_id), "flags": 0},
            "_trace": ["fake-gateway"],
        }
        await self._gateway_dispatch(session, "READY", ready)
        for guild in guilds:
            await self._gateway_dispatch(session, "GUILD_CREATE", self._guild_payload(guild, gateway=True))

    async def _request_guild_members(self, session: _GatewaySession, data: Any) -> None:
        raw_id = str(data.get("guild_id", "")) if isinstance(data, dict) else ""
        guild = self.guilds.get(int(raw_id)) if raw_id.isdigit() else None
        if guild is None:
            return
        query = (data.get("query") or "").lower()
        user_ids = {int(u) for u in data.get("user_ids") or []}
        members = [
            m
            for m in guild.members.values()
            if (not user_ids or m.user.id in user_ids) and m.user.name.lower().startswith(query)
        ]
        limit = data.get("limit") or 0
        if limit:
            members = members[:limit]
        chunk: dict[str, Any] = {
            "guild_id": str(guild.id),
            "members": [self._member_payload(m) for m in members],
            "chunk_index": 0,
            "chunk_count": 1,
        }
        if data.get("nonce") is not None:
            chunk["nonce"] = data["nonce"]
        await self._gateway_dispatch(session, "GUILD_MEMBERS_CHUNK", chunk)

    # ---------------------------------------------------------------- HTTP plumbing

    def _json(
        self, data: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
    ) -> web.Response:
        # Exactly "application/json": discord.py only parses bodies whose content type equals that string.
        return web.Response(
            body=json.dumps(data).encode(),
            status=status,
            headers={"Content-Type": "application/json", "Via": "1.1 google", **(headers or {})},
        )

    def _no_content(self) -> web.Response:
        return web.Response(status=204, headers={"Via": "1.1 google"})

    @staticmethod
    def _ratelimit_headers(spec: _RouteSpec) -> dict[str, str]:
        bucket = hashlib.sha1(f"{spec.method} {spec.template}".encode()).hexdigest()[:32]
        return {
            "X-RateLimit-Limit": "50",
            "X-RateLimit-Remaining": "49",
            "X-RateLimit-Reset": f"{time.time() + 1:.3f}",
            "X-RateLimit-Reset-After": "1.000",
            "X-RateLimit-Bucket": bucket,
        }

    async def _handle_not_api(self, request: web.Request) -> web.StreamResponse:
        record = RecordedRequest(
            request.method, request.path, dict(request.query), dict(request.headers), self.now()
        )
        record.status = 404
        self.requests.append(record)
        self.unknown.append(record)
        await self._notify()
        return self._json({"message": "404: Not Found", "code": 0}, status=404)

    async def _handle_cdn(self, request: web.Request) -> web.StreamResponse:
        record = RecordedRequest("GET", request.path, dict(request.query), dict(request.headers), self.now())
        self.requests.append(record)
        parts = request.match_info["tail"].split("/")
        attachment = None
        if len(parts) == 4 and parts[0] == "attachments" and parts[2].isdigit():
            attachment = self._attachments.get(int(parts[2]))
        expires = request.query.get("ex", "")
        signature = hmac.new(
            self._cdn_secret, f"{parts[2] if len(parts) > 2 else ''}:{expires}".encode(), hashlib.sha256
        ).hexdigest()
        valid = (
            attachment is not None
            and attachment.filename == parts[3]
            and hmac.compare_digest(signature, request.query.get("hm", ""))
            and int(expires or "0", 16) > self.now()
        )
        if not valid:
            record.status = 404
            await self._notify()
            return web.Response(
                status=404, text="This content is no longer available.", content_type="text/plain"
            )
        assert attachment is not None
        record.status = 200
        await self._notify()
        return web.Response(
            body=attachment.data,
            headers={"Content-Type": attachment.content_type or "application/octet-stream"},
        )

    async def _read_body(self, request: web.Request, record: RecordedRequest) -> tuple[Any, list[_Upload]]:
        if not request.body_exists:
            return None, []
        ctype = request.content_type
        if ctype == "multipart/form-data":
            body: dict[str, Any] = {}
            uploads: list[_Upload] = []
            reader = await request.multipart()
            legacy_index = 0
            async for part in reader:
                if part is None or not hasattr(part, "read"):
                    continue
                name = part.name or ""
                data = bytes(await part.read(decode=False))
                record.parts.append((name, part.filename, len(data)))
                if name == "payload_json":
                    try:
                        parsed = json.loads(data)
                    except ValueError:
                        raise _error(400, 50109, "The request body contains invalid JSON.") from None
                    if not isinstance(parsed, dict):
                        raise _form_error(
                            [], "DICT_TYPE_CONVERT", "Only dictionaries may be used in a DictType"
                        )
                    body.update(parsed)
                elif part.filename is not None:
                    match = _FILE_FIELD_RE.match(name)
                    index = int(match.group(1)) if match and match.group(1) is not None else legacy_index
                    legacy_index = max(legacy_index, index) + 1
                    uploads.append(
                        _Upload(index, name, part.filename, data, part.headers.get("Content-Type"))
                    )
                else:
                    body[name] = data.decode(errors="replace")
            record.json = body
            return body, uploads
        raw = await request.read()
        if not raw:
            return None, []
        try:
            parsed_body = json.loads(raw)
        except ValueError:
            raise _error(400, 50109, "The request body contains invalid JSON.") from None
        record.json = parsed_body
        return parsed_body, []

    async def _handle_api(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"]
        record = RecordedRequest(request.method, path, dict(request.query), dict(request.headers), self.now())
        self.requests.append(record)
        try:
            response = await self._route(request, path, record)
        except DiscordAPIError as exc:
            record.response = exc.body()
            response = self._json(exc.body(), status=exc.status)
        except web.HTTPRequestEntityTooLarge:
            record.response = _entity_too_large().body()
            response = self._json(record.response, status=413)
        except Exception as exc:
            # A bug in the fake: fail the test loudly (wait_until raises) instead of letting discord.py
            # retry a 500 for seconds.
            self.server_errors.append(exc)
            log.exception("fake Discord handler failed for %s %s", request.method, path)
            response = self._json({"message": "500: Internal Server Error", "code": 0}, status=500)
        record.status = response.status
        await self._notify()
        return response

    async def _route(self, request: web.Request, path: str, record: RecordedRequest) -> web.StreamResponse:
        spec, params = None, {}
        for candidate in _ROUTES:
            if candidate.method != request.method:
                continue
            match = candidate.pattern.fullmatch(path)
            if match:
                spec, params = candidate, match.groupdict()
                break
        if spec is None:
            self.unknown.append(record)
            record.response = {"message": "404: Not Found", "code": 0}
            return self._json(record.response, status=404)
        if spec.bot_auth and request.headers.get("Authorization") != f"Bot {self.token}":
            raise _unauthorized()
        line = f"{request.method} {path}"
        rule = next((r for r in self._rate_limits if r.match in line), None)
        if rule is not None:
            self._rate_limits.remove(rule)
            record.response = {
                "message": "You are being rate limited.",
                "retry_after": rule.retry_after,
                "global": rule.is_global,
            }
            headers = {
                **self._ratelimit_headers(spec),
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset-After": f"{rule.retry_after:.3f}",
                "X-RateLimit-Scope": "global" if rule.is_global else "user",
                "Retry-After": str(max(1, int(rule.retry_after + 0.999))),
            }
            if rule.is_global:
                headers["X-RateLimit-Global"] = "true"
            return self._json(record.response, status=429, headers=headers)
        body, uploads = await self._read_body(request, record)
        hold = next((h for h in self._holds if h.matches(request.method, path)), None)
        if hold is not None:
            hold.held.append(record)
            await self._notify()
            await hold._gate.wait()
            if hold.dropped:
                raise _error(503, 0, "The fake Discord dropped this held request.")
            if hold.cut_off and request.transport is not None:
                request.transport.abort()  # the client sees the connection close with no answer
                return web.Response(status=503)
        call = _Call(
            request=request, params=params, query=request.query, body=body, uploads=uploads, record=record
        )
        handler: Callable[[_Call], Awaitable[web.Response]] = getattr(self, spec.handler)
        response = await handler(call)
        if response.status < 300 and response.body is not None and isinstance(response.body, bytes):
            record.response = json.loads(response.body) if response.body else None
        response.headers.update(self._ratelimit_headers(spec))
        return response

    # ---------------------------------------------------------------- REST: login

    @_api("GET", "/users/@me")
    async def _get_me(self, call: _Call) -> web.Response:
        return self._json(
            {
                **self.bot_user.payload(),
                "verified": True,
                "mfa_enabled": False,
                "email": None,
                "locale": "en-US",
            }
        )

    @_api("GET", "/oauth2/applications/@me")
    async def _get_application(self, call: _Call) -> web.Response:
        return self._json(
            {
                "id": str(self.application_id),
                "name": self.bot_user.name,
                "description": "",
                "icon": None,
                "bot_public": True,
                "bot_require_code_grant": False,
                "owner": self.owner.payload(),
                "team": None,
                "verify_key": hashlib.sha256(str(self.application_id).encode()).hexdigest(),
                "flags": 0,
                "summary": "",
                "bot": self.bot_user.payload(),
                "interactions_endpoint_url": None,
                "redirect_uris": [],
                "tags": [],
            }
        )

    @_api("GET", "/gateway/bot")
    async def _get_gateway_bot(self, call: _Call) -> web.Response:
        return self._json(
            {
                "url": self.gateway_url,
                "shards": self.shard_count,
                "session_start_limit": {
                    "total": 1000,
                    "remaining": 999,
                    "reset_after": 14_400_000,
                    "max_concurrency": 1,
                },
            }
        )

    @_api("GET", "/gateway", bot_auth=False)
    async def _get_gateway(self, call: _Call) -> web.Response:
        return self._json({"url": self.gateway_url})

    # ---------------------------------------------------------------- REST: application commands

    def _check_app(self, call: _Call) -> None:
        if call.int_param("app_id") != self.application_id:
            raise _missing_access()

    @_api("PUT", "/applications/{app_id}/commands")
    async def _put_global_commands(self, call: _Call) -> web.Response:
        self._check_app(call)
        return self._json(self._store_commands(None, call.body))

    @_api("PUT", "/applications/{app_id}/guilds/{guild_id}/commands")
    async def _put_guild_commands(self, call: _Call) -> web.Response:
        self._check_app(call)
        guild_id = call.int_param("guild_id")
        if guild_id not in self.guilds:
            raise _missing_access()
        return self._json(self._store_commands(guild_id, call.body))

    @_api("GET", "/applications/{app_id}/commands")
    async def _get_global_commands(self, call: _Call) -> web.Response:
        self._check_app(call)
        return self._json(self._commands.get(None, []))

    @_api("GET", "/applications/{app_id}/guilds/{guild_id}/commands")
    async def _get_guild_commands(self, call: _Call) -> web.Response:
        self._check_app(call)
        if call.int_param("guild_id") not in self.guilds:
            raise _missing_access()
        return self._json(self._commands.get(call.int_param("guild_id"), []))

    def _store_commands(self, guild_id: int | None, body: Any) -> list[dict[str, Any]]:
        if not isinstance(body, list):
            raise _form_error([], "LIST_TYPE_CONVERT", "Only iterables may be used in a ListType")
        seen: set[tuple[int, str]] = set()
        stored = []
        chat_inputs = 0
        for i, command in enumerate(body):
            if not isinstance(command, dict):
                raise _form_error([i], "DICT_TYPE_CONVERT", "Only dictionaries may be used in a DictType")
            ctype = command.get("type", COMMAND_CHAT_INPUT)
            name = command.get("name")
            if ctype not in (COMMAND_CHAT_INPUT, COMMAND_USER, COMMAND_MESSAGE):
                raise _form_error([i, "type"], "BASE_TYPE_CHOICES", "Value must be one of {1, 2, 3}.")
            if not isinstance(name, str) or not 1 <= len(name) <= 32:
                raise _form_error([i, "name"], "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 32 in length.")
            if ctype == COMMAND_CHAT_INPUT:
                chat_inputs += 1
                if not _COMMAND_NAME_RE.match(name) or name != name.lower():
                    raise _form_error(
                        [i, "name"], "APPLICATION_COMMAND_INVALID_NAME", "Command name is invalid"
                    )
                description = command.get("description")
                if not isinstance(description, str) or not 1 <= len(description) <= 100:
                    raise _form_error(
                        [i, "description"], "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length."
                    )
                self._validate_options(command.get("options") or [], [i, "options"], depth=0)
            elif command.get("description") or command.get("options"):
                raise _form_error(
                    [i, "description"],
                    "APPLICATION_COMMAND_CONTEXT_MENU_DESCRIPTION",
                    "Context menu commands cannot have a description or options",
                )
            if (ctype, name) in seen:
                raise _form_error(
                    [i, "name"],
                    "APPLICATION_COMMANDS_DUPLICATE_NAME",
                    f"Application command names must be unique ({name})",
                )
            seen.add((ctype, name))
            if self._command_size(command) > MAX_COMMAND_TOTAL_CHARS:
                raise _form_error(
                    [i],
                    "APPLICATION_COMMAND_TOO_LARGE",
                    f"Command exceeds maximum size ({MAX_COMMAND_TOTAL_CHARS})",
                )
            permissions = command.get("default_member_permissions")
            if permissions is not None and not str(permissions).isdigit():
                raise _form_error(
                    [i, "default_member_permissions"], "NUMBER_TYPE_COERCE", "Value is not int."
                )
            contexts = command.get("contexts")
            if contexts is not None and (
                not isinstance(contexts, list) or any(c not in (0, 1, 2) for c in contexts)
            ):
                raise _form_error([i, "contexts"], "BASE_TYPE_CHOICES", "Value must be one of {0, 1, 2}.")
            key = (guild_id, ctype, name)
            command_id = self._command_ids.setdefault(key, self._snowflake())
            echoed = {
                "name_localizations": None,
                "description_localizations": None,
                "default_member_permissions": None,
                "nsfw": False,
                "integration_types": [0],
                "contexts": None,
                **copy.deepcopy(command),
                "id": str(command_id),
                "application_id": str(self.application_id),
                "type": ctype,
                "version": str(self._snowflake()),
                "description": command.get("description") or "",
            }
            if guild_id is not None:
                echoed["guild_id"] = str(guild_id)
            else:
                echoed.setdefault("dm_permission", True)
            stored.append(echoed)
        if guild_id is None and chat_inputs > MAX_GLOBAL_CHAT_COMMANDS:
            raise _error(400, 30032, "Maximum number of application commands reached (100)")
        self._commands[guild_id] = stored
        return stored

    @staticmethod
    def _command_size(command: dict[str, Any]) -> int:
        total = _str_len(command.get("name")) + _str_len(command.get("description"))
        stack = list(command.get("options") or [])
        while stack:
            option = stack.pop()
            total += _str_len(option.get("name")) + _str_len(option.get("description"))
            for choice in option.get("choices") or []:
                total += _str_len(choice.get("name")) + len(str(choice.get("value")))
            stack.extend(option.get("options") or [])
        return total

    def _validate_options(self, options: Any, path: list[str | int], *, depth: int) -> None:
        if not isinstance(options, list):
            raise _form_error(path, "LIST_TYPE_CONVERT", "Only iterables may be used in a ListType")
        if len(options) > 25:
            raise _too_long(path, 25)
        names: set[str] = set()
        seen_optional = False
        kinds = {
            o.get("type") in (OPT_SUB_COMMAND, OPT_SUB_COMMAND_GROUP) for o in options if isinstance(o, dict)
        }
        if len(kinds) > 1:
            raise _form_error(
                path,
                "APPLICATION_COMMAND_OPTIONS_TYPE_INVALID",
                "Sub-commands and groups cannot be mixed with other options",
            )
        for i, option in enumerate(options):
            here = [*path, i]
            otype = option.get("type")
            name = option.get("name")
            if otype not in range(1, 12):
                raise _form_error([*here, "type"], "BASE_TYPE_CHOICES", "Value must be one of {1..11}.")
            if not isinstance(name, str) or not _COMMAND_NAME_RE.match(name) or name != name.lower():
                raise _form_error(
                    [*here, "name"], "APPLICATION_COMMAND_INVALID_NAME", "Command name is invalid"
                )
            if name in names:
                raise _form_error(
                    [*here, "name"],
                    "APPLICATION_COMMAND_OPTION_NAME_NOT_UNIQUE",
                    "Option names must be unique",
                )
            names.add(name)
            description = option.get("description")
            if not isinstance(description, str) or not 1 <= len(description) <= 100:
                raise _form_error(
                    [*here, "description"], "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length."
                )
            if otype == OPT_SUB_COMMAND_GROUP:
                if depth > 0:
                    raise _form_error(
                        [*here, "type"], "APPLICATION_COMMAND_OPTION_TYPE_INVALID", "Groups cannot be nested"
                    )
                children = option.get("options") or []
                if not children or any(c.get("type") != OPT_SUB_COMMAND for c in children):
                    raise _form_error(
                        [*here, "options"],
                        "APPLICATION_COMMAND_OPTION_TYPE_INVALID",
                        "A group holds sub-commands only",
                    )
                self._validate_options(children, [*here, "options"], depth=depth + 1)
                continue
            if otype == OPT_SUB_COMMAND:
                if depth > 1:
                    raise _form_error(
                        [*here, "type"],
                        "APPLICATION_COMMAND_OPTION_TYPE_INVALID",
                        "Sub-commands nest at most twice",
                    )
                children = option.get("options") or []
                if any(c.get("type") in (OPT_SUB_COMMAND, OPT_SUB_COMMAND_GROUP) for c in children):
                    raise _form_error(
                        [*here, "options"],
                        "APPLICATION_COMMAND_OPTION_TYPE_INVALID",
                        "Sub-commands cannot nest here",
                    )
                self._validate_options(children, [*here, "options"], depth=depth + 1)
                continue
            if option.get("required"):
                if seen_optional:
                    raise _form_error(
                        here,
                        "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID",
                        "Required options must be placed before non-required options",
                    )
            else:
                seen_optional = True
            choices = option.get("choices")
            if choices:
                if otype not in (OPT_STRING, OPT_INTEGER, OPT_NUMBER):
                    raise _form_error(
                        [*here, "choices"],
                        "APPLICATION_COMMAND_OPTION_CHOICES_INVALID",
                        "Choices are only for string, integer and number options",
                    )
                if len(choices) > 25:
                    raise _too_long([*here, "choices"], 25)
                if option.get("autocomplete"):
                    raise _form_error(
                        [*here, "autocomplete"],
                        "APPLICATION_COMMAND_AUTOCOMPLETE_CHOICES",
                        "Autocomplete and choices are mutually exclusive",
                    )
                for j, choice in enumerate(choices):
                    if not 1 <= _str_len(choice.get("name")) <= 100:
                        raise _form_error(
                            [*here, "choices", j, "name"],
                            "BASE_TYPE_BAD_LENGTH",
                            "Must be between 1 and 100 in length.",
                        )
            for key in ("min_length", "max_length"):
                if key in option and (otype != OPT_STRING or not 0 <= option[key] <= 6000):
                    raise _form_error([*here, key], "NUMBER_TYPE_MAX", "int value should be <= 6000.")
            if "channel_types" in option and otype != OPT_CHANNEL:
                raise _form_error(
                    [*here, "channel_types"],
                    "APPLICATION_COMMAND_OPTION_TYPE_INVALID",
                    "channel_types is for channel options",
                )

    # ---------------------------------------------------------------- REST: interactions

    def _interaction_for_webhook(self, call: _Call) -> FakeInteraction:
        if call.int_param("app_id") != self.application_id:
            raise _unknown_webhook()
        interaction = self._interactions_by_token.get(call.params["token"])
        if interaction is None or interaction.token_revoked:
            raise _invalid_webhook_token()
        if self.now() - interaction.created_at >= self.token_lifetime:
            raise _invalid_webhook_token()
        if not interaction.acknowledged:
            if self.now() - interaction.created_at > self.ack_deadline:
                raise _invalid_webhook_token()
            raise _unknown_webhook()
        return interaction

    @_api("POST", "/interactions/{interaction_id}/{token}/callback", bot_auth=False)
    async def _interaction_callback(self, call: _Call) -> web.Response:
        interaction = self._interactions_by_id.get(call.int_param("interaction_id"))
        if interaction is None or interaction.token != call.params["token"]:
            raise _unknown_interaction()
        if interaction.acknowledged:
            raise _already_acknowledged()
        if interaction.token_revoked or self.now() - interaction.created_at > self.ack_deadline:
            raise _unknown_interaction()
        body = call.body_dict()
        ctype = body.get("type")
        if ctype not in _ALLOWED_CALLBACKS.get(interaction.type, frozenset()):
            raise _form_error(
                ["type"],
                "INTERACTION_RESPONSE_TYPE_INVALID",
                f"Interaction response type {ctype} is invalid here",
            )
        data = body.get("data") or {}
        if not isinstance(data, dict):
            raise _form_error(["data"], "DICT_TYPE_CONVERT", "Only dictionaries may be used in a DictType")
        channel = self.channels[interaction.channel.id]
        message: FakeMessage | None = None
        emit: str | None = None
        if ctype in (CALLBACK_MESSAGE, CALLBACK_DEFERRED_MESSAGE) and channel.deleted:
            raise _unknown_channel()
        if ctype == CALLBACK_MESSAGE:
            message_type = 20 if interaction.type == INTERACTION_COMMAND else 0
            message = self._create_message(
                channel,
                data,
                call.uploads,
                path=["data"],
                size_limit=interaction.attachment_size_limit,
                interaction=interaction,
                message_type=message_type,
            )
            interaction.original_message = message
            interaction.ephemeral = message.ephemeral
            emit = "MESSAGE_CREATE"
        elif ctype == CALLBACK_DEFERRED_MESSAGE:
            flags = data.get("flags") or 0
            if not _is_int(flags) or flags & ~FLAG_EPHEMERAL:
                raise _form_error(
                    ["data", "flags"],
                    "INTERACTION_RESPONSE_FLAGS_INVALID",
                    "A deferred response may only set EPHEMERAL",
                )
            message = FakeMessage(
                id=self._snowflake(),
                channel_id=channel.id,
                guild_id=channel.guild.id if channel.guild else None,
                author=self.bot_user,
                timestamp=self._iso(),
                flags=FLAG_LOADING | flags,
                interaction=interaction,
                webhook_id=self.application_id,
                type=20 if interaction.type == INTERACTION_COMMAND else 0,
            )
            self._add_message(message, channel)
            interaction.original_message = message
            interaction.ephemeral = message.ephemeral
            interaction.deferred = True
            emit = "MESSAGE_CREATE"
        elif ctype in (CALLBACK_DEFERRED_UPDATE, CALLBACK_UPDATE_MESSAGE):
            source = interaction.source_message
            if source is None or source.deleted:
                raise _form_error(
                    ["type"], "INTERACTION_RESPONSE_TYPE_INVALID", "This interaction has no message to update"
                )
            if ctype == CALLBACK_UPDATE_MESSAGE:
                self._edit_message(
                    source, data, call.uploads, path=["data"], size_limit=interaction.attachment_size_limit
                )
                emit = "MESSAGE_UPDATE"
            else:
                interaction.deferred = True
            message = source
            interaction.original_message = source
            interaction.ephemeral = source.ephemeral
        elif ctype == CALLBACK_AUTOCOMPLETE:
            choices = data.get("choices")
            if not isinstance(choices, list):
                raise _required(["data", "choices"])
            if len(choices) > MAX_AUTOCOMPLETE_CHOICES:
                raise _too_long(["data", "choices"], MAX_AUTOCOMPLETE_CHOICES)
            for j, choice in enumerate(choices):
                if not isinstance(choice, dict) or not 1 <= _str_len(choice.get("name")) <= 100:
                    raise _form_error(
                        ["data", "choices", j, "name"],
                        "BASE_TYPE_BAD_LENGTH",
                        "Must be between 1 and 100 in length.",
                    )
                if isinstance(choice.get("value"), str) and len(choice["value"]) > 100:
                    raise _too_long(["data", "choices", j, "value"], 100)
            interaction.choices = copy.deepcopy(choices)
        elif ctype == CALLBACK_MODAL:
            interaction.modal = self._validate_modal(data)
        interaction.response_type = ctype
        interaction.callbacks.append(copy.deepcopy(body))
        if emit is not None and message is not None:
            await self._emit_message(emit, message)
        if call.query.get("with_response", "").lower() not in ("1", "true"):
            return self._no_content()
        info: dict[str, Any] = {"id": str(interaction.id), "type": interaction.type}
        if message is not None:
            info.update(
                response_message_id=str(message.id),
                response_message_loading=message.loading,
                response_message_ephemeral=message.ephemeral,
            )
        reply: dict[str, Any] = {"interaction": info}
        if message is not None and ctype in (
            CALLBACK_MESSAGE,
            CALLBACK_DEFERRED_MESSAGE,
            CALLBACK_UPDATE_MESSAGE,
        ):
            reply["resource"] = {"type": ctype, "message": self._message_payload(message)}
        return self._json(reply)

    def _interaction_message(self, interaction: FakeInteraction, message_id: str) -> FakeMessage:
        if message_id == "@original":
            message = interaction.original_message
        else:
            message = self._message_index.get(int(message_id))
            allowed = {m.id for m in interaction.followups}
            if interaction.original_message is not None:
                allowed.add(interaction.original_message.id)
            if message is not None and message.id not in allowed:
                message = None
        if message is None or message.deleted:
            raise _unknown_message()
        if self.channels[message.channel_id].deleted:
            raise _unknown_channel()
        return message

    @_api("POST", "/webhooks/{app_id}/{token}", bot_auth=False)
    async def _execute_webhook(self, call: _Call) -> web.Response:
        interaction = self._interaction_for_webhook(call)
        channel = self.channels[interaction.channel.id]
        if channel.deleted:
            raise _unknown_channel()
        body = call.body_dict()
        original = interaction.original_message
        if (
            original is not None
            and interaction.response_type == CALLBACK_DEFERRED_MESSAGE
            and original.loading
            and not original.deleted
        ):
            # Discord: the first followup after a defer fills in the "thinking" message and keeps its
            # visibility; an ephemeral flag on this followup is ignored.
            message = self._edit_message(
                original, body, call.uploads, path=[], size_limit=interaction.attachment_size_limit
            )
            event = "MESSAGE_UPDATE"
        else:
            message = self._create_message(
                channel,
                body,
                call.uploads,
                path=[],
                size_limit=interaction.attachment_size_limit,
                interaction=interaction,
            )
            event = "MESSAGE_CREATE"
        interaction.followups.append(message)
        await self._emit_message(event, message)
        if call.query.get("wait", "").lower() not in ("1", "true"):
            return self._no_content()
        return self._json(self._message_payload(message))

    @_api("GET", "/webhooks/{app_id}/{token}/messages/{message_ref}", bot_auth=False)
    async def _get_webhook_message(self, call: _Call) -> web.Response:
        interaction = self._interaction_for_webhook(call)
        return self._json(
            self._message_payload(self._interaction_message(interaction, call.params["message_ref"]))
        )

    @_api("PATCH", "/webhooks/{app_id}/{token}/messages/{message_ref}", bot_auth=False)
    async def _edit_webhook_message(self, call: _Call) -> web.Response:
        interaction = self._interaction_for_webhook(call)
        message = self._interaction_message(interaction, call.params["message_ref"])
        self._edit_message(
            message, call.body_dict(), call.uploads, path=[], size_limit=interaction.attachment_size_limit
        )
        if message is interaction.original_message:
            interaction.original_edits.append(message.content)
        await self._emit_message("MESSAGE_UPDATE", message)
        return self._json(self._message_payload(message))

    @_api("DELETE", "/webhooks/{app_id}/{token}/messages/{message_ref}", bot_auth=False)
    async def _delete_webhook_message(self, call: _Call) -> web.Response:
        interaction = self._interaction_for_webhook(call)
        message = self._interaction_message(interaction, call.params["message_ref"])
        message.deleted = True
        await self._emit_message("MESSAGE_DELETE", message)
        return self._no_content()

    # ---------------------------------------------------------------- REST: channels and messages

    def _live_channel(self, call: _Call) -> FakeChannel:
        channel = self.channels.get(call.int_param("channel_id"))
        if channel is None or channel.deleted:
            raise _unknown_channel()
        if (
            channel.guild is not None
            and not self._channel_permissions(channel, self.bot_user.id) & Permission.VIEW_CHANNEL
        ):
            raise _missing_access()
        return channel

    def _channel_message(self, channel: FakeChannel, call: _Call) -> FakeMessage:
        message = self._message_index.get(call.int_param("message_id"))
        # Ephemeral messages exist only for their interaction token, never through channel routes.
        if message is None or message.deleted or message.channel_id != channel.id or message.ephemeral:
            raise _unknown_message()
        return message

    @_api("GET", "/channels/{channel_id}")
    async def _get_channel(self, call: _Call) -> web.Response:
        return self._json(self._channel_payload(self._live_channel(call)))

    @_api("POST", "/channels/{channel_id}/typing")
    async def _typing(self, call: _Call) -> web.Response:
        self._require_bot_permissions(self._live_channel(call), Permission.SEND_MESSAGES)
        return self._no_content()

    @_api("POST", "/channels/{channel_id}/messages")
    async def _post_channel_message(self, call: _Call) -> web.Response:
        channel = self._live_channel(call)
        body = call.body_dict()
        if channel.type == CHANNEL_DM:
            if not channel.recipients[0].dms_open:
                raise _error(403, 50007, "Cannot send messages to this user")
        else:
            needed = Permission.SEND_MESSAGES_IN_THREADS if channel.is_thread else Permission.SEND_MESSAGES
            if call.uploads:
                needed |= Permission.ATTACH_FILES
            self._require_bot_permissions(channel, needed)
            if channel.is_thread and channel.locked:
                raise _error(400, 50083, "Thread is archived")
        reference = body.get("message_reference")
        if reference is not None:
            if not isinstance(reference, dict) or not str(reference.get("message_id", "")).isdigit():
                raise _required(["message_reference", "message_id"])
            target = self._message_index.get(int(reference["message_id"]))
            if (target is None or target.deleted or target.ephemeral) and reference.get(
                "fail_if_not_exists", True
            ):
                raise _form_error(
                    ["message_reference"], "MESSAGE_REFERENCE_UNKNOWN_MESSAGE", "Unknown message"
                )
        nonce = body.get("nonce")
        if isinstance(nonce, str) and len(nonce) > 25:  # Discord: a nonce is at most 25 characters
            raise _form_error(["nonce"], "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
        if body.get("enforce_nonce") and nonce is not None:
            # Discord: the same author sending the same nonce within a few minutes gets the first
            # message back, and no second one is created.
            seen = self._nonces.get(str(nonce))
            if seen is not None and self.now() - seen[0] < NONCE_WINDOW_SECONDS and not seen[1].deleted:
                return self._json(self._message_payload(seen[1]))
        body = self._without_embeds_unless_allowed(channel, body, call.uploads)
        message = self._create_message(
            channel, body, call.uploads, path=[], size_limit=self._size_limit(channel)
        )
        if nonce is not None:
            self._nonces[str(nonce)] = (self.now(), message)
        if reference is not None:
            message.message_reference = {
                "type": 0,
                "message_id": str(reference.get("message_id")),
                "channel_id": str(channel.id),
                **({"guild_id": str(channel.guild.id)} if channel.guild else {}),
            }
            message.type = 19
        if channel.is_thread and channel.archived:
            channel.archived = False
        await self._emit_message("MESSAGE_CREATE", message)
        return self._json(self._message_payload(message))

    @_api("GET", "/channels/{channel_id}/messages")
    async def _get_channel_messages(self, call: _Call) -> web.Response:
        channel = self._live_channel(call)
        self._require_bot_permissions(channel, Permission.READ_MESSAGE_HISTORY)
        limit = call.query_int("limit", 50)
        if not 1 <= limit <= 100:
            raise _form_error(["limit"], "NUMBER_TYPE_MAX", "int value should be <= 100.")
        visible = [m for m in self.channel_messages(channel) if not m.ephemeral]
        if "before" in call.query:
            visible = [m for m in visible if m.id < call.query_int("before", 0)]
        if "after" in call.query:
            visible = [m for m in visible if m.id > call.query_int("after", 0)][:limit]
        newest_first = sorted(visible, key=lambda m: m.id, reverse=True)[:limit]
        return self._json([self._message_payload(m) for m in newest_first])

    @_api("GET", "/channels/{channel_id}/messages/{message_id}")
    async def _get_channel_message(self, call: _Call) -> web.Response:
        channel = self._live_channel(call)
        self._require_bot_permissions(channel, Permission.READ_MESSAGE_HISTORY)
        return self._json(self._message_payload(self._channel_message(channel, call)))

    @_api("PATCH", "/channels/{channel_id}/messages/{message_id}")
    async def _edit_channel_message(self, call: _Call) -> web.Response:
        channel = self._live_channel(call)
        message = self._channel_message(channel, call)
        if message.author is not self.bot_user:
            raise _error(403, 50005, "Cannot edit a message authored by another user")
        body = self._without_embeds_unless_allowed(channel, call.body_dict(), call.uploads, editing=True)
        message = self._edit_message(
            message, body, call.uploads, path=[], size_limit=self._size_limit(channel)
        )
        await self._emit_message("MESSAGE_UPDATE", message)
        return self._json(self._message_payload(message))

    def _without_embeds_unless_allowed(
        self, channel: FakeChannel, body: dict[str, Any], uploads: list[_Upload], *, editing: bool = False
    ) -> dict[str, Any]:
        """Discord's rule for a bot without Embed Links in a server channel: a message with anything
        else to show is kept with its embeds dropped, silently; one that is embeds alone is refused
        (403, 50013; an edit gets 50006, the empty message it would become). Interaction responses
        and webhooks are not affected."""
        if channel.guild is None or not body.get("embeds"):
            return body
        if self._channel_permissions(channel, self.bot_user.id) & Permission.EMBED_LINKS:
            return body
        if not (body.get("content") or uploads or body.get("attachments")):
            raise _empty_message() if editing else _missing_permissions()
        return {**body, "embeds": []}

    @_api("DELETE", "/channels/{channel_id}/messages/{message_id}")
    async def _delete_channel_message(self, call: _Call) -> web.Response:
        channel = self._live_channel(call)
        message = self._channel_message(channel, call)
        if message.author is not self.bot_user:
            if channel.guild is None:
                raise _error(403, 50003, "Cannot execute action on a DM channel")
            self._require_bot_permissions(channel, Permission.MANAGE_MESSAGES)
        message.deleted = True
        await self._emit_message("MESSAGE_DELETE", message)
        return self._no_content()

    def _validate_thread_body(self, body: dict[str, Any]) -> tuple[str, int, int]:
        name = body.get("name")
        if not isinstance(name, str) or not 1 <= len(name) <= 100:
            raise _form_error(["name"], "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
        duration = body.get("auto_archive_duration") or 1440
        if duration not in THREAD_ARCHIVE_DURATIONS:
            raise _form_error(
                ["auto_archive_duration"],
                "BASE_TYPE_CHOICES",
                "Value must be one of (60, 1440, 4320, 10080).",
            )
        slowmode = body.get("rate_limit_per_user") or 0
        if not _is_int(slowmode) or not 0 <= slowmode <= 21600:
            raise _form_error(["rate_limit_per_user"], "NUMBER_TYPE_MAX", "int value should be <= 21600.")
        return name, duration, slowmode

    async def _open_thread(
        self, parent: FakeChannel, thread_id: int, ttype: int, name: str, duration: int, slowmode: int
    ) -> FakeChannel:
        assert parent.guild is not None
        thread = FakeChannel(
            id=thread_id,
            type=ttype,
            name=name,
            guild=parent.guild,
            parent_id=parent.id,
            owner_id=self.bot_user.id,
            rate_limit_per_user=slowmode,
            auto_archive_duration=duration,
            created_at=self._iso(),
            _fake=self,
        )
        parent.guild.channels[thread.id] = thread
        self.channels[thread.id] = thread
        await self._emit_guild_event(
            parent.guild,
            "THREAD_CREATE",
            {**self._channel_payload(thread), "newly_created": True},
            Intent.GUILDS,
        )
        return thread

    @_api("POST", "/channels/{channel_id}/messages/{message_id}/threads")
    async def _start_thread_from_message(self, call: _Call) -> web.Response:
        channel = self._live_channel(call)
        message = self._channel_message(channel, call)
        if channel.type not in (CHANNEL_TEXT, CHANNEL_NEWS):
            raise _error(400, 50024, "Cannot execute action on this channel type")
        self._require_bot_permissions(
            channel, Permission.CREATE_PUBLIC_THREADS | Permission.READ_MESSAGE_HISTORY
        )
        if message.thread is not None:
            raise _error(400, 160004, "A thread has already been created for this message")
        name, duration, slowmode = self._validate_thread_body(call.body_dict())
        # Discord gives a thread started from a message the message's own id.
        thread = await self._open_thread(channel, message.id, CHANNEL_PUBLIC_THREAD, name, duration, slowmode)
        message.thread = thread
        message.flags |= FLAG_HAS_THREAD
        return self._json(self._channel_payload(thread), status=201)

    @_api("POST", "/channels/{channel_id}/threads")
    async def _start_thread(self, call: _Call) -> web.Response:
        channel = self._live_channel(call)
        if channel.type not in (CHANNEL_TEXT, CHANNEL_NEWS):
            raise _error(400, 50024, "Cannot execute action on this channel type")
        body = call.body_dict()
        ttype = body.get("type", CHANNEL_PRIVATE_THREAD)
        if ttype not in (CHANNEL_PUBLIC_THREAD, CHANNEL_PRIVATE_THREAD):
            raise _form_error(["type"], "BASE_TYPE_CHOICES", "Value must be one of (11, 12).")
        needed = (
            Permission.CREATE_PUBLIC_THREADS
            if ttype == CHANNEL_PUBLIC_THREAD
            else Permission.CREATE_PRIVATE_THREADS
        )
        self._require_bot_permissions(channel, needed)
        name, duration, slowmode = self._validate_thread_body(body)
        thread = await self._open_thread(channel, self._snowflake(), ttype, name, duration, slowmode)
        return self._json(self._channel_payload(thread), status=201)

    @_api("POST", "/users/@me/channels")
    async def _create_dm(self, call: _Call) -> web.Response:
        body = call.body_dict()
        try:
            user = self.users.get(int(body.get("recipient_id", 0)))
        except (TypeError, ValueError):
            user = None
        if user is None or user.bot:
            raise _unknown_user()
        return self._json(self._channel_payload(self.dm_channel(user)))

    # ---------------------------------------------------------------- REST: guilds and users

    def _guild(self, call: _Call) -> FakeGuild:
        guild = self.guilds.get(call.int_param("guild_id"))
        if guild is None:
            raise _unknown_guild()
        return guild

    @_api("GET", "/guilds/{guild_id}")
    async def _get_guild(self, call: _Call) -> web.Response:
        guild = self._guild(call)
        payload = self._guild_payload(guild)
        if call.query.get("with_counts", "").lower() in ("1", "true"):
            payload.update(approximate_member_count=len(guild.members), approximate_presence_count=0)
        return self._json(payload)

    @_api("GET", "/guilds/{guild_id}/channels")
    async def _get_guild_channels(self, call: _Call) -> web.Response:
        guild = self._guild(call)
        return self._json(
            [self._channel_payload(c) for c in guild.channels.values() if not c.is_thread and not c.deleted]
        )

    @_api("GET", "/guilds/{guild_id}/roles")
    async def _get_guild_roles(self, call: _Call) -> web.Response:
        return self._json([r.payload() for r in self._guild(call).roles.values()])

    @_api("GET", "/guilds/{guild_id}/members/{user_id}")
    async def _get_member(self, call: _Call) -> web.Response:
        member = self._guild(call).members.get(call.int_param("user_id"))
        if member is None:
            raise _unknown_member()
        return self._json(self._member_payload(member))

    @_api("GET", "/users/{user_id}")
    async def _get_user(self, call: _Call) -> web.Response:
        user = self.users.get(call.int_param("user_id"))
        if user is None:
            raise _unknown_user()
        return self._json(user.payload())
